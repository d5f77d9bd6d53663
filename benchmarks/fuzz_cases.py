"""The bad-input catalogue of ``benchmarks/fuzz.py``: options, data, checkpoints, run folders, output paths,
concurrency, YAML and pickles.  Each case names what it expects: ``error`` (refused in one line), ``warn``
(runs, with a warning that says ``says``) or ``ok``."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass
class Case:
    group: str
    argv: Callable[["Workspace"], list] | None = None
    expect: str = "error"
    says: str = ""
    setup: Callable[["Workspace"], list] | None = None
    check: Callable[["Workspace"], bool] | None = None
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def guard(self, ws: "Workspace") -> list[Path]:
        return ws.guarded()


class Workspace:
    """A folder with a trained smoke run, its samples, an existing result and a user's own files."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def build(self) -> None:
        from diffrep.cli import main

        self.root.mkdir(parents=True, exist_ok=True)
        assert main(["train", "--preset", "smoke", "--no-progress", "--out", str(self.run)]) == 0
        assert main(["sample", str(self.run), "--n", "40", "--steps", "4", "--no-progress", "--out",
                     str(self.samples)]) == 0
        self.mine.mkdir(exist_ok=True)
        (self.mine / "notes.txt").write_text("a user's own file")
        self.result.write_text('{"a result": 1}')
        rgb = np.random.default_rng(0).integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
        np.savez(self.root / "rgb.npz", rgb)

    run = property(lambda self: self.root / "run")
    samples = property(lambda self: self.root / "samples.npz")
    mine = property(lambda self: self.root / "mine")
    result = property(lambda self: self.root / "result.json")

    def guarded(self) -> list[Path]:
        return [self.run, self.samples, self.mine, self.result]

    def new(self, suffix: str = "") -> Path:
        """A path nothing exists at."""
        self.count += 1
        return self.root / "new" / f"out{self.count}{suffix}"

    def copy_of_run(self) -> Path:
        """A copy of the trained run, for cases that damage it."""
        self.count += 1
        target = self.root / "copies" / f"run{self.count}"
        shutil.copytree(self.run, target)
        return target


TRAIN = ["train", "--preset", "smoke", "--steps", "2", "--no-progress"]


def train(*flags: str, expect: str = "error", says: str = "") -> Case:
    return Case("options", lambda ws: [*TRAIN, *flags, "--out", ws.new()], expect, says)


def sample(*flags: str, expect: str = "error", says: str = "") -> Case:
    return Case("options", lambda ws: ["sample", ws.run, "--n", "8", "--steps", "2", "--no-progress", *flags,
                                       "--out", ws.new(".npz")], expect, says)


def distill(*flags: str) -> Case:
    return Case("options", lambda ws: ["distill", ws.run, "--steps", "2", "--no-progress", *flags, "--out", ws.new()])


def restore(*flags: str, says: str = "") -> Case:
    return Case("options", lambda ws: ["restore", ws.run, "--data", "digits:test", "--n", "4", "--no-progress",
                                       *flags, "--out", ws.new(".npz")], "error", says)


def _damaged(harm: Callable[[Path], None]) -> Callable[[Workspace], list]:
    """Sample from a copy of the run whose newest checkpoint ``harm`` damaged: it must fall back, with a warning."""
    def setup(ws: Workspace) -> list:
        run = ws.copy_of_run()
        harm(sorted((run / "checkpoints").glob("step_*"))[-1])
        return ["sample", run, "--n", "4", "--steps", "2", "--no-progress", "--out", ws.new(".npz")]
    return setup


def _rehash(folder: Path) -> None:
    from diffrep.checkpoint import _sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: _sha256(folder / name) for name in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


class _RunsCode:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


def _malicious_state(folder: Path) -> None:
    torch.save({"optimizer": {}, "step": 20, "evil": _RunsCode()}, folder / "state.pt")
    _rehash(folder)


def _run_with(edit: Callable[[Path], None], *command: str) -> Callable[[Workspace], list]:
    def setup(ws: Workspace) -> list:
        run = ws.copy_of_run()
        edit(run)
        return [c if c != "RUN" else run for c in command] + ["--out", ws.new(".npz")]
    return setup


def _yaml(text: str) -> Callable[[Workspace], list]:
    def setup(ws: Workspace) -> list:
        path = ws.new(".yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return [*TRAIN, "--config", path, "--out", ws.new()]
    return setup


def _in_folder(prepare: Callable[[Path], None], *flags: str, expect: str = "error", says: str = "") -> Case:
    def setup(ws: Workspace) -> list:
        out = ws.new()
        out.parent.mkdir(parents=True, exist_ok=True)
        prepare(out)
        return [*TRAIN, *flags, "--out", out]
    return Case("run folders", None, expect, says, setup)


def _foreign(out: Path) -> None:
    out.mkdir()
    (out / "model.json").write_text("the user's own model.json")


def _died(out: Path) -> None:
    from diffrep.cli import main

    main([*TRAIN, "--out", str(out)])
    shutil.rmtree(out / "checkpoints")


def _interrupted(signal_number: int) -> Callable[[Workspace], list]:
    """A smoke training of 400 steps in another process, stopped by ``signal_number`` once it has checkpointed;
    the case continues it with ``--resume``."""
    def setup(ws: Workspace) -> list:
        import subprocess
        import sys
        import time

        out = ws.new()
        proc = subprocess.Popen([sys.executable, "-m", "diffrep", "train", "--preset", "smoke", "--steps", "400",
                                 "--ckpt-every", "5", "--no-progress", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not list((out / "checkpoints").glob("step_*")) and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal_number)
        proc.wait()
        return ["train", "--resume", "--no-progress", "--out", out]
    return setup


def _locked(out: Path) -> None:
    from diffrep.train.rundir import lock_run_dir

    LOCKS.append(lock_run_dir(out))


LOCKS: list = []
BOMB = "lr: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")) + "]\n"


@contextlib.contextmanager
def _disk_full(limit: int = 4096):
    """Writes past ``limit`` bytes fail as on a full disk (a file-size limit: EFBIG; SIGXFSZ ignored)."""
    import resource
    import signal

    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def _overwrite_result_on_a_full_disk(ws: Workspace) -> list:
    return ["sample", ws.run, "--n", "64", "--steps", "2", "--no-progress", "--overwrite", "--out", ws.result]


CASES: dict[str, Case] = {
    # numbers a flag must refuse at parse time
    **{f"train --{flag} {value}": train(f"--{flag}", value) for flag, values in {
        "lr": ("-1", "0", "nan", "inf", "abc"), "ema-decay": ("-1", "1", "1.5", "nan"), "grad-clip": ("-1", "nan"),
        "beta2": ("2", "-0.1"), "weight-decay": ("-1",), "label-dropout": ("1.5", "-0.2"), "steps": ("0", "-5", "1.5"),
        "batch-size": ("0", "-1"), "image-size": ("0",), "warmup": ("-1",), "ckpt-every": ("-1",),
        "model": ("UNet-XXL",), "process": ("diffusion",), "precision": ("fp8",), "data": ("nowhere:test",)}.items()
        for value in values},
    "train --warmup 100 --steps 2": train("--warmup", "100", expect="warn", says="--warmup 100 ≥ --steps 2"),
    "train --batch-size 4096 on digits": train("--batch-size", "4096", expect="warn", says="--batch-size 4096"),
    "train --plugin nosuch": train("--plugin", "nosuch"),
    "train --plugin repa:weight=abc": train("--plugin", "repa:weight=abc"),
    "train --resume yes": train("--resume", "yes"),
    **{f"sample --{flag} {value}": sample(f"--{flag}", value) for flag, values in {
        "cfg": ("nan", "inf", "x"), "grid-rho": ("-1", "0", "nan"), "steps": ("0",), "n": ("0", "-3"),
        "sampler": ("rk45",), "labels": ("11", "cat"), "cfg-interval": ("nan,0.5", "0.9,0.1"),
        "weights": ("best",), "batch-size": ("0",), "precision": ("int8",)}.items() for value in values},
    "sample --cfg 1e9": sample("--cfg", "1e9", expect="warn", says="cfg"),
    **{f"sample --guidance {spec}": sample("--guidance", spec) for spec in (
        "nosuch:1", "cfg:scale=nan", "auto:ckpt=1", "auto:w=2", "classifier:path=missing.safetensors",
        "elucd:scale=2")},
    **{f"train --{flag} {value}": train(f"--{flag}", value) for flag, value in (
        ("condition", "clusters:k=1"), ("condition", "kmeans"), ("diffusevae", "nowhere"))},
    "train --condition clusters:k=3 --unconditional": train("--condition", "clusters:k=3", "--unconditional"),
    **{f"train --{flag} {value}": train(f"--{flag}", value) for flag, value in (
        ("condition", "embedding:k=3"), ("distill", "guidance:teacher=x"), ("distill", "sharpen:teacher=x,step=1"))},
    "sample --like on a labelled run": Case("options", lambda ws: ["sample", ws.run, "--like", ws.samples, "--n", "8",
                                                                   "--no-progress", "--out", ws.new(".npz")]),
    **{f"distill {' '.join(flags)}": distill(*flags) for flags in (
        ("--kind", "nosuch"), ("--kind", "guidance", "--max-scale", "0.5"), ("--kind", "progressive",
                                                                              "--sampling-steps", "0"))},
    "distill from a folder that is no run": Case("data", lambda ws: ["distill", ws.mine, "--kind", "guidance",
                                                                     "--out", ws.new()]),
    "distill into a user's folder": Case("data", lambda ws: ["distill", ws.run, "--kind", "guidance", "--steps", "2",
                                                             "--no-progress", "--out", ws.mine]),
    "sample from a folder that is no run": Case("data", lambda ws: ["sample", ws.mine, "--out", ws.new(".npz")]),
    "sample from a missing run": Case("data", lambda ws: ["sample", ws.root / "nope", "--out", ws.new(".npz")]),
    **{f"restore --{flag} {value}": restore(f"--{flag}", value, *rest) for flag, value, *rest in (
        ("task", "nosuch", "--solver", "pinv"), ("solver", "nosuch", "--task", "sr2"),
        ("samples", "0", "--task", "sr2", "--solver", "pinv"), ("sigma-y", "-1", "--task", "sr2", "--solver", "pinv"),
        ("sigma-y", "nan", "--task", "sr2", "--solver", "pinv"),
        ("task-opt", "fraction=0", "--task", "inpaint-random", "--solver", "pinv"),
        ("task-opt", "fraction=1.5", "--task", "inpaint-random", "--solver", "pinv"),
        ("task-opt", "factor=3", "--task", "sr2", "--solver", "pinv"),
        ("task-opt", "size=99", "--task", "deblur-gauss", "--solver", "pinv"),
        ("task-opt", "nosuch=1", "--task", "sr2", "--solver", "pinv"),
        ("solver-opt", "steps=0", "--task", "sr2", "--solver", "ddrm"),
        ("solver-opt", "steps=abc", "--task", "sr2", "--solver", "ddrm"),
        ("task", "colorize", "--solver", "pinv"), ("task", "deblur-motion", "--solver", "ddrm"),
        ("data", "mnist5k:test", "--task", "sr2", "--solver", "pinv"))},
    "translate --s-start -1": Case("options", lambda ws: ["translate", ws.run, ws.run, "--data", "digits:test",
                                                          "--s-start", "-1", "--out", ws.new(".npz")]),
    "translate --target-labels shift:x": Case("options", lambda ws: [
        "translate", ws.run, ws.run, "--data", "digits:test", "--target-labels", "shift:x", "--out", ws.new(".npz")]),
    "eval --metrics nosuch": Case("options", lambda ws: ["eval", ws.samples, "digits:test", "--metrics", "nosuch"]),
    "eval --encoders nosuch": Case("options", lambda ws: ["eval", ws.samples, "digits:test", "--encoders", "nosuch"]),
    "eval a missing file": Case("data", lambda ws: ["eval", ws.root / "nope.npz", "digits:test"]),
    "eval reference encoder on RGB data": Case("data", lambda ws: ["eval", ws.root / "rgb.npz", ws.root / "rgb.npz",
                                                                   "--encoders", "reference", "--metrics", "fd"]),
    "eval images of different sizes": Case("data", lambda ws: ["eval", ws.samples, ws.root / "rgb.npz",
                                                               "--encoders", "pixels", "--metrics", "fd"]),
    "judge an RGB file": Case("data", lambda ws: ["judge", ws.root / "rgb.npz"]),
    "judge a text file": Case("data", lambda ws: ["judge", ws.result]),
    "features --t 2": Case("options", lambda ws: ["features", ws.run, "--t", "2", "--out", ws.new(".npz")]),
    "features --blocks nosuch": Case("options", lambda ws: ["features", ws.run, "--blocks", "nosuch",
                                                            "--out", ws.new(".npz")]),
    "features of mnist5k with a digits run": Case("data", lambda ws: ["features", ws.run, "--data", "mnist5k:test",
                                                                      "--out", ws.new(".npz")]),
    "classify --pairs 0": Case("options", lambda ws: ["classify", ws.run, "--pairs", "0"]),
    "classify --z -1": Case("options", lambda ws: ["classify", ws.run, "--z", "-1"]),
    "classify --rounds 8:x": Case("options", lambda ws: ["classify", ws.run, "--schedule", "adaptive",
                                                         "--rounds", "8:x"]),
    "probe --backbones nosuch": Case("options", lambda ws: ["probe", ws.run, "--backbones", "nosuch"]),
    "reference --out card.json": Case("outputs", lambda ws: ["reference", "--data", "digits", "--out", ws.result]),
    "a typo in the command": Case("options", lambda ws: ["smaple", ws.run]),
    # outputs: checked before the work, never overwritten without --overwrite
    **{f"{cmd} --out an existing result": Case("outputs", argv) for cmd, argv in {
        "sample": lambda ws: ["sample", ws.run, "--n", "4", "--out", ws.result],
        "eval": lambda ws: ["eval", ws.samples, "digits:test", "--out", ws.result],
        "judge": lambda ws: ["judge", ws.samples, "--data", "digits", "--out", ws.result],
        "features": lambda ws: ["features", "digits:test", "--encoder", "pixels", "--out", ws.result],
        "restore": lambda ws: ["restore", ws.run, "--task", "sr2", "--solver", "pinv", "--data", "digits:test",
                               "--out", ws.result],
        "translate": lambda ws: ["translate", ws.run, ws.run, "--data", "digits:test", "--out", ws.result],
        "classify": lambda ws: ["classify", ws.run, "--out", ws.result],
        "probe": lambda ws: ["probe", ws.run, "--out", ws.result],
        "sample --grid": lambda ws: ["sample", ws.run, "--n", "4", "--out", ws.new(".npz"), "--grid", ws.result],
    }.items()},
    **{f"{cmd} --out a folder": Case("outputs", argv) for cmd, argv in {
        "sample": lambda ws: ["sample", ws.run, "--n", "4", "--out", ws.mine],
        "eval": lambda ws: ["eval", ws.samples, "digits:test", "--out", ws.mine],
        "restore": lambda ws: ["restore", ws.run, "--task", "sr2", "--solver", "pinv", "--data", "digits:test",
                               "--out", ws.mine],
    }.items()},
    "sample --out under a file": Case("outputs", lambda ws: ["sample", ws.run, "--n", "4",
                                                             "--out", ws.result / "x.npz"]),
    "sample --out with a 300-character name": Case("outputs", lambda ws: ["sample", ws.run, "--n", "4",
                                                                          "--out", ws.root / ("x" * 300 + ".npz")]),
    # run folders
    "train into a foreign folder": _in_folder(_foreign, says="not empty"),
    "train into a file": _in_folder(lambda out: out.write_text("x"), says="is a file"),
    "train into a run without --resume": Case("run folders", lambda ws: [*TRAIN, "--out", ws.run]),
    "train --resume with another lr": Case("run folders", lambda ws: ["train", "--resume", "--lr", "0.5", "--steps",
                                                                      "30", "--out", ws.run], says="different config"),
    "train --resume --steps below the run's": Case("run folders", lambda ws: ["train", "--resume", "--steps", "5",
                                                                              "--out", ws.run], says="already at"),
    "train --resume into nothing": _in_folder(lambda out: None, "--resume", says="no run"),
    "train into a locked run folder": _in_folder(_locked, says="another process"),
    "restart a run that died before its first checkpoint": _in_folder(_died, expect="warn", says="starting it over"),
    "train --resume auto into nothing": _in_folder(lambda out: None, "--resume", "auto", expect="ok"),
    "train --overwrite into a foreign folder": _in_folder(_foreign, "--overwrite", says="not empty"),
    "train --overwrite a run": Case("run folders", None, "warn", "--overwrite: deleted",
                                    lambda ws: [*TRAIN, "--overwrite", "--out", ws.copy_of_run()]),
    "train --resume after SIGTERM": Case("signals", None, "ok", setup=_interrupted(15)),
    "train --resume after kill -9": Case("signals", None, "ok", setup=_interrupted(9)),
    "train --resume after Ctrl-C": Case("signals", None, "ok", setup=_interrupted(2)),
    # checkpoints damaged on disk: sampling falls back to the previous checkpoint, with a warning
    **{f"sample from a checkpoint with {what}": Case("checkpoints", None, "warn", "falling back", _damaged(harm))
       for what, harm in {
           "a truncated model": lambda d: (d / "ema.safetensors").write_bytes(b"\0" * 10),
           "no manifest": lambda d: (d / "manifest.json").unlink(),
           "a manifest without files": lambda d: (d / "manifest.json").write_text('{"step": 20, "identity": {}}'),
           "a manifest that is not JSON": lambda d: (d / "manifest.json").write_text("{"),
           "a state without keys": lambda d: (torch.save({}, d / "state.pt"), _rehash(d)),
           "a malicious state.pt": _malicious_state,
           "a missing ema": lambda d: (d / "ema.safetensors").unlink(),
       }.items()},
    "sample with model.json missing": Case("checkpoints", None, "warn", "model.json", _run_with(
        lambda run: (run / "model.json").unlink(), "sample", "RUN", "--n", "4", "--steps", "2", "--no-progress")),
    "sample with config.yaml edited to nonsense": Case("checkpoints", None, "error", "config", _run_with(
        lambda run: (run / "config.yaml").write_text("optim: {lr: fast}\n"), "sample", "RUN", "--n", "4")),
    "sample with config.yaml not YAML": Case("checkpoints", None, "error", "YAML", _run_with(
        lambda run: (run / "config.yaml").write_text("optim: [\n"), "sample", "RUN", "--n", "4")),
    # YAML
    "--config missing": Case("yaml", lambda ws: [*TRAIN, "--config", ws.root / "nope.yaml", "--out", ws.new()]),
    "--config not YAML": Case("yaml", None, setup=_yaml("lr: [1, 2\n")),
    "--config a list": Case("yaml", None, setup=_yaml("- lr\n- 1\n")),
    "--config unknown key": Case("yaml", None, setup=_yaml("learning_rate: 0.1\n")),
    "--config wrong type": Case("yaml", None, setup=_yaml("ema_decay: high\n")),
    "--config a value the flags override": Case("yaml", None, "ok", setup=_yaml("steps: 3\n")),
    "--config lr nan": Case("yaml", None, setup=_yaml("lr: .nan\n")),
    "--config an alias bomb": Case("yaml", None, setup=_yaml(BOMB)),
    "--config a python object tag": Case("yaml", None, setup=_yaml("lr: !!python/object/apply:os.system [echo hi]\n")),
    # a full disk: one line, and the old result stays
    "sample --overwrite a result on a full disk": Case("disk", None, "error", "cannot write", around=_disk_full,
                                                      setup=_overwrite_result_on_a_full_disk),
    "train on a full disk": Case("disk", lambda ws: [*TRAIN, "--out", ws.new()], "error", "cannot write",
                                 around=_disk_full),
    # pickles
    "encoder weights that are a pickle": Case("pickles", None, setup=lambda ws: _pickle_weights(ws)),
}


def _pickle_weights(ws: Workspace) -> list:
    path = ws.new(".pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(), f)
    return ["features", "digits:test", "--encoder", "reference", "--encoder-weights", f"reference={path}", "--no-cache",
            "--out", ws.new(".npz")]
