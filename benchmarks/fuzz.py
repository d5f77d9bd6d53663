"""Bad input and faults, as a new user meets them: every case's outcome, and the counts that must be zero.

Each case runs ``diffrep ARGS`` in this process (``diffrep.cli.main``) on a workspace of a small trained
run, a sample file and the files a user has lying around, and is judged:

- ``traceback``: an exception escaped (or the output shows one);
- ``data lost``: a file that existed before (a result, a checkpoint, the user's own file) changed or vanished;
- ``silent``: the case should have been refused (or warned about) and was not;
- ``unclear``: refused, but not in one line naming the problem (argparse's usage line is allowed);
- ``ok``: as expected; the message is quoted.

    python benchmarks/fuzz.py                 # → results/fuzz.json and a table of outcomes
    python benchmarks/fuzz.py --only yaml     # the cases of one group
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_result  # noqa: E402
from fuzz_cases import CASES, LOCKS, Workspace  # noqa: E402

from diffrep.cli import main  # noqa: E402


@dataclass
class Outcome:
    case: str
    group: str
    expect: str
    verdict: str
    code: int | None
    message: str
    seconds: float
    changed: list[str] = field(default_factory=list)


def _digest(paths: list[Path]) -> dict[str, str | None]:
    """sha256 of each file under ``paths`` (``None`` for a missing path)."""
    out: dict[str, str | None] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        if not files:
            out[str(root)] = None
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_case(name: str, case, ws: Workspace) -> Outcome:
    """Set the case up, run it, and judge it."""
    argv = case.setup(ws) if case.setup else case.argv(ws)
    before = _digest(case.guard(ws))
    out, err = io.StringIO(), io.StringIO()
    code, crashed = None, None
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(), case.around():
        warnings.simplefilter("always")
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:          # argparse: exit 2 with a usage line, or 0 for --help
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:        # noqa: BLE001 - exactly what this benchmark counts
            crashed = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    stderr = err.getvalue()
    after = _digest(case.guard(ws))
    changed = [p for p in before if before[p] is not None and after.get(p) != before[p]]
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("usage:", " ", "precision "))]
    errors = [ln for ln in lines if "error:" in ln]
    warned = [ln for ln in lines if ln.startswith("warning:")]
    message = crashed or (errors[-1] if errors else warned[0] if warned else out.getvalue().strip().splitlines()[-1:])
    message = message if isinstance(message, str) else " ".join(message)
    if crashed or "Traceback" in stderr:
        verdict = "traceback"
    elif changed:
        verdict = "data lost"
    elif case.expect == "error" and code == 0:
        verdict = "silent"
    elif case.expect == "warn" and (code != 0 or not any(case.says in w for w in warned)):
        verdict = "silent" if code == 0 else "unclear"
    elif case.expect == "ok" and code != 0:
        verdict = "unclear"
    elif case.expect == "error" and (len(errors) != 1 or (case.says and case.says not in errors[0])):
        verdict = "unclear"
    elif case.check and not case.check(ws):
        verdict = "silent"
    else:
        verdict = "ok"
    return Outcome(name, case.group, case.expect, verdict, code, message[:300], round(seconds, 2), changed)


def main_benchmark() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="run only the cases of this group")
    p.add_argument("--workspace", type=Path, help="keep the workspace here (default: a temporary folder)")
    p.add_argument("--name", default="fuzz")
    a = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(a.workspace or Path(tmp))
        ws.build()
        outcomes = []
        for name, case in CASES.items():
            if a.only and case.group != a.only:
                continue
            o = run_case(name, case, ws)
            outcomes.append(o)
            print(f"{o.verdict:10s} {o.group:11s} {name:52s} {o.message[:110]}", flush=True)
        for lock in LOCKS:
            lock.close()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    print("\n" + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) + f" (of {len(outcomes)} cases)")
    write_result(a.name, {"command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]), "counts": counts,
                          "cases": [o.__dict__ for o in outcomes]})


if __name__ == "__main__":
    os.environ.setdefault("DIFFREP_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "diffrep-fuzz-cache"))
    main_benchmark()
