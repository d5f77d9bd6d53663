"""Atomic file writes: a temporary file in the same folder, fsync, rename.

A crash at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from diffrep.errors import DiffrepError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename itself) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    """The process's umask, read once at import (setting it to read it races with threads that create files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it over ``path``.  The file
    gets the permissions a plain ``open`` would give it (0666 less the umask), not the temporary file's 0600.  A full
    disk (or quota, or file-size limit) is a one-line error, and the old file stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise DiffrepError(f"cannot write {path}: {e.strerror.lower()}; nothing was replaced (free some space, "
                               "or write elsewhere)") from None
        raise


def check_output_path(path: Path | str, overwrite: bool, flag: str = "--out") -> None:
    """Before any work: a one-line error for an output that exists (unless ``overwrite``), that is a folder, whose
    folder cannot be created or written to, or whose name the file system refuses (too long)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DiffrepError(f"{flag} {path} is a folder: give the path of a file")
        if path.exists() and not overwrite:
            raise DiffrepError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another path")
        folder = path.absolute().parent
        while not folder.exists():
            folder = folder.parent
    except OSError as e:
        raise DiffrepError(f"{flag} {path}: {e.strerror.lower()}; choose another path") from None
    if not folder.is_dir():
        raise DiffrepError(f"{flag} {path}: {folder} is a file, so no folder can be made there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DiffrepError(f"{flag} {path}: cannot write into {folder} (permission denied); choose another path")


def provenance(run: Path | str | None = None, step: int | None = None) -> dict:
    """What made an output: diffrep's and torch's versions, the command line, the time, and the run and checkpoint
    step it came from (when there is one)."""
    import torch

    from diffrep import __version__

    out = {"diffrep": __version__, "torch": str(torch.__version__), "command": "diffrep " + shlex.join(sys.argv[1:]),
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if run is not None:
        out.update(run=str(run), checkpoint_step=step)
    return out


def save_npz(path: Path | str, made_by: dict | None = None, **arrays: np.ndarray) -> None:
    """``np.savez`` written atomically (``path`` keeps its name; no ``.npz`` is appended), with a ``provenance``
    array: ``made_by`` (see :func:`provenance`) as JSON."""
    arrays["provenance"] = np.array(json.dumps(made_by or provenance()))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_torch_file(path: Path | str, what: str, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.  A file that holds
    anything else (a pickled object, possibly malicious) or is not a torch file is a one-line error that names it;
    it does not repeat PyTorch's advice to load it unsafely."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a raw pickle: judged below
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):     # no object refused: junk or a damaged file
            raise DiffrepError(f"cannot read {what} {path}: not a torch file, or a damaged one") from None
        raise DiffrepError(f"{what} {path} holds pickled objects other than tensors: not loaded (diffrep never runs "
                           "code from a file); save plain tensors (a state dict, or .safetensors)") from None
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, not a torch file: one line naming the file
        reason = " ".join(str(err).split())[:200]
        raise DiffrepError(f"cannot read {what} {path}: {reason}") from None
