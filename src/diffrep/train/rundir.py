"""A run folder on disk: what it holds, its lock, and its metrics log.

A folder is *new* (missing or empty), a *run* (``config.yaml``, checkpoints), a run that *died before its
first checkpoint* (``config.yaml``, no checkpoint: it starts over) or *foreign* (anything else: never written
into).  The lock makes a second training into the same folder an error instead of a mix of two runs.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import IO

from diffrep.checkpoint import Checkpoint, list_checkpoints
from diffrep.config import RESUMABLE_FIELDS, TrainConfig, config_diff, load_run_config
from diffrep.errors import DiffrepError
from diffrep.io import atomic_write
from diffrep.precision import Precision, resolve_precision

LOCK = ".lock"
"""The run folder's lock file (empty; the lock is the open file's ``flock``)."""
RUN_ENTRIES = ("config.yaml", "model.json", "checkpoints", "metrics.jsonl", "eval.jsonl", "eval.png", "tb", "grids")
"""What a run writes into its folder: what ``--overwrite`` deletes (nothing else)."""


def folder_state(out: Path) -> str:
    """``"new"``, ``"run"``, ``"unstarted"`` (a config but no checkpoint yet) or ``"foreign"``; a one-line error when
    ``out`` is a file."""
    if out.exists() and not out.is_dir():
        raise DiffrepError(f"--out {out} is a file: give the path of a folder for the run")
    if not out.is_dir() or all(p.name == LOCK for p in out.iterdir()):
        return "new"
    if list_checkpoints(out):
        return "run"
    return "unstarted" if (out / "config.yaml").exists() else "foreign"


def check_resumable(out: Path, ckpt: Checkpoint | None, cfg: TrainConfig) -> None:
    """The checkpoint to continue from exists, is not past ``--steps`` and was trained with ``cfg``'s identity."""
    if ckpt is None:
        raise DiffrepError(f"--resume: no usable checkpoint in {out / 'checkpoints'} (every one is damaged); "
                           "start a new run with another --out")
    if ckpt.step > cfg.steps:
        raise DiffrepError(f"--resume --steps {cfg.steps}: the run is already at step {ckpt.step}; "
                           f"give --steps above {ckpt.step} to extend it (a run never trains backwards)")
    old = load_run_config(out).identity()
    stored = {k: v for k, v in ckpt.manifest["identity"].items() if k not in RESUMABLE_FIELDS}  # made resumable since
    stored = {**TrainConfig().identity(), **stored}     # options added since: the default, which older runs used
    diff = config_diff(stored, cfg.identity()) or config_diff(old, cfg.identity())
    if diff:
        raise DiffrepError(f"--resume: the checkpoint in {out} was trained with a different config "
                           f"({'; '.join(diff)}); use the same options or a new --out")


def choose_precision(cfg: TrainConfig, out: Path, device, resume: bool | str) -> Precision:
    """``cfg.precision`` resolved on ``device``; ``auto`` on a resume keeps the precision the run recorded."""
    config = out / "config.yaml"
    recorded = load_run_config(out).precision if resume and config.is_file() else None
    chosen = resolve_precision(cfg.precision, device, recorded=recorded)
    if recorded is not None and chosen.name != recorded:
        warnings.warn(f"{out} was trained in {recorded}; continuing in {chosen.name}, as asked (the "
                      "continuation is not bit-identical to an uninterrupted run)", stacklevel=4)
    return chosen


def clear_run(out: Path) -> list[str]:
    """Delete what a run wrote into ``out`` (:data:`RUN_ENTRIES`), for ``train --overwrite``; other files stay."""
    import shutil

    removed = []
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def lock_run_dir(out: Path) -> IO:
    """An exclusive lock on a run folder for as long as the returned file stays open.  The OS drops it when the
    process ends, however it ends, so a killed run leaves no stale lock; a second training into the folder is
    refused instead of mixing checkpoints, config and logs."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a")
    except OSError as e:
        raise DiffrepError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DiffrepError(f"{out} is being trained by another process right now: wait for it to finish, or "
                           "choose another --out") from None
    return handle


def trim_metrics(path: Path, step: int) -> None:
    """Drop ``metrics.jsonl`` lines past ``step`` (a resumed run logs each step once) and torn ones."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if logged_step(ln) <= step]
    with atomic_write(path, "w") as f:
        f.write("".join(ln + "\n" for ln in lines))


def logged_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; ``inf`` (dropped) for a blank or torn one, as a full disk leaves."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else math.inf
    except json.JSONDecodeError:
        return math.inf
