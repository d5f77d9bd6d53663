"""Reading encoder weights: the official download or a local file, checked key by key against the network.

Never unpickles code: ``.pth`` files are read with ``weights_only=True``, ``.safetensors`` with safetensors, and a
TorchScript archive (OpenAI's CLIP ``.pt``) with ``torch.jit.load``, which runs no Python code, for its tensors only.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from diffrep.errors import DiffrepError
from diffrep.io import load_torch_file


def read_state_dict(weights: str | Path | None, url: str, what: str) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``weights`` (a local file; ``None``: download ``url`` into the torch.hub cache) and a
    label naming where it came from.  ``what`` names the network in error messages."""
    if weights is None:
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
        except Exception as err:  # offline, proxy, corrupt cache: the same advice
            reason = " ".join(str(err).split())
            raise DiffrepError(f"cannot download the {what} weights from {url} ({reason}): download that file and "
                               "pass it with --encoder-weights NAME=PATH (weights=PATH in Python)") from None
        return state, url
    path = Path(weights)
    if not path.is_file():
        raise DiffrepError(f"{what} weights file not found: {path}")
    if path.suffix != ".safetensors":
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), str(path)
        return load_torch_file(path, f"{what} weights file"), str(path)
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:  # truncated or not a safetensors file
        reason = " ".join(str(err).split())
        raise DiffrepError(f"cannot read {what} weights file {path}: {reason}") from None
    return state, str(path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def weights_file(path: str | Path, names: tuple[str, ...]) -> Path:
    """``path`` itself, or for a folder (a hub snapshot) the first of ``names`` in it."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise DiffrepError(f"{path} is a folder without a weights file ({', '.join(names)}): pass the file itself")


def check_state_dict(state: object, expected: dict[str, Tensor], what: str, source: str) -> None:
    """Raise :class:`DiffrepError` unless ``state`` has exactly the keys and shapes of ``expected``."""
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DiffrepError(f"{source} is not {_article(what)} weights file: expected a flat dict of tensors")
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise DiffrepError(f"{source} is not {_article(what)} weights file: {len(missing)} missing keys {missing[:5]}, "
                           f"{len(unexpected)} unexpected keys {unexpected[:5]}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise DiffrepError(f"{source} is not {_article(what)} weights file: {key} has shape {tuple(state[key].shape)}, "
                               f"expected {tuple(tensor.shape)}")


def _article(what: str) -> str:
    return f"{'an' if what[0].lower() in 'aefhilmnorsx' else 'a'} {what}"
