"""Where and how nets run: the device, deterministic kernels, torch.compile with an eager fallback."""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from diffrep import distributed
from diffrep.errors import DiffrepError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``cuda:LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", distributed.current().local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DiffrepError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffrepError(f"--device {name}: this PyTorch build sees no CUDA GPU; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DiffrepError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def use_deterministic_kernels() -> None:
    """Deterministic kernels: on a GPU cuBLAS with a fixed workspace, deterministic cuDNN algorithms
    and scatter-adds, math attention; on the CPU, where eager kernels always are, Inductor's compiled
    scatter-adds (the label embedding's gradient otherwise adds its rows in thread order).  The same
    inputs then give the same bits.  An op with no deterministic kernel warns (PyTorch names it)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


class CompiledOrEager(nn.Module):
    """``torch.compile(module)``, or ``module`` itself once compiling has failed (warned once).

    Compilation happens at the first call (and on new shapes); if the backend is missing or fails
    (no C++ compiler, an unsupported op), training goes on in eager mode instead of stopping.
    Inductor's layout optimisation (its own channels-last conversion of convolution graphs) is off:
    under CPU bf16 autocast (torch 2.13) it zeroed the gradients of every U-Net level below the top
    one (a test compares with eager).  In channels-last memory the bug remains either way, so the
    trainer refuses ``--channels-last`` with ``--compile`` on the CPU.

    Calls guard on the modules' hooks: by default Dynamo does not, so a net with plug-in hooks
    (CEP's perturbation, UMD's masking) compiled in a process that had compiled a net of the same
    class without them reused that graph and silently trained without the plug-in (and the reverse).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, options={"layout_optimization": False})
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
                    return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 — any compiler failure falls back to eager
                self.failed = True
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "continuing without --compile", stacklevel=2)
        return self.module(*args, **kwargs)
