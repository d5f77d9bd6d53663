"""Checkpoints: safetensors weights, a ``weights_only`` training state, a manifest of hashes.

Layout: ``<run>/checkpoints/step_0000500/{model,ema,heads}.safetensors``, ``state.pt``
(optimizer, plug-in state, step) and ``manifest.json`` (sha256 of each file and the
config identity).  A checkpoint is written into a temporary folder that is renamed
into place only when every file is on disk, so a crash never leaves a torn one; a
file damaged later (truncated, edited) fails its hash and the loader falls back to
the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from diffrep.errors import DiffrepError
from diffrep.io import atomic_write, fsync_dir, load_torch_file

WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "heads.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


@dataclass
class Checkpoint:
    path: Path
    step: int
    manifest: dict

    def weights(self, which: str = "ema") -> dict[str, torch.Tensor]:
        return load_file(str(self.path / f"{which}.safetensors"))

    def state(self) -> dict:
        return load_torch_file(self.path / "state.pt", "checkpoint state")


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict,
                    identity: dict, keep_last: int, model: dict | None = None) -> Path:
    """Write ``weights`` (file stem → state dict) and ``state`` atomically as ``step_<step>``; prune to ``keep_last``.
    ``model``: the run's ``model.json`` content, kept in the manifest so that a lost ``model.json`` can be restored."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stem, sd in weights.items():
        with atomic_write(tmp / f"{stem}.safetensors") as f:
            f.write(save(_contiguous(sd)))
    with atomic_write(tmp / "state.pt") as f:
        torch.save(state, f)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    with atomic_write(tmp / "manifest.json", "w") as f:
        json.dump({"step": step, "files": files, "identity": identity, **({"model": model} if model else {})}, f,
                  indent=1)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for newer in list_checkpoints(run_dir):
        if _step_of(newer) > step:
            _set_aside(newer)
    fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _set_aside(path: Path) -> None:
    """Rename a checkpoint newer than the one just written (the run resumed before it because it is
    damaged) to ``stale_step_N``: kept on disk, but no longer loaded, and not counted by ``keep_last``."""
    target, k = path.with_name(f"stale_{path.name}"), 0
    while target.exists():
        k += 1
        target = path.with_name(f"stale_{path.name}_{k}")
    path.rename(target)
    warnings.warn(f"checkpoint {path.name} is newer than the run's current step (it was skipped on resume): "
                  f"moved to {target.name}", stacklevel=3)


def remove_partial_checkpoints(run_dir: Path) -> list[str]:
    """Delete the temporary folders of checkpoints whose writing was killed (never loaded); their names."""
    root = Path(run_dir) / "checkpoints"
    partial = sorted(p for p in root.glob(".tmp_step_*") if p.is_dir()) if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in partial]


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit())


REQUIRED_FILES = ("model.safetensors", "ema.safetensors", "state.pt")
STATE_KEYS = ("optimizer", "step")


def verify(path: Path) -> Checkpoint:
    """Check a checkpoint folder against its manifest; raise :class:`DiffrepError` naming the damage: a manifest that
    is unreadable or lacks its fields, a file missing or not matching its hash, a training state without its keys."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files, step = manifest["files"], int(manifest["step"])
        if not isinstance(files, dict) or not isinstance(manifest["identity"], dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise DiffrepError(f"checkpoint {path} has no readable manifest.json (with step, files and identity)") from None
    for name in REQUIRED_FILES:
        if name not in files:
            raise DiffrepError(f"checkpoint {path}: its manifest lists no {name}")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise DiffrepError(f"checkpoint {path} is missing {name}")
        if _sha256(f) != digest:
            raise DiffrepError(f"checkpoint {path}: {name} does not match its hash (truncated or modified on disk)")
    state = load_torch_file(path / "state.pt", "checkpoint state", mmap=True)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DiffrepError(f"checkpoint {path}: state.pt lacks {', '.join(missing)}")
    return Checkpoint(path, step, manifest)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that passes :func:`verify`; damaged newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return verify(path)
        except DiffrepError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
    return None
