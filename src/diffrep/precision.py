"""Which precision a net runs in: ``--precision auto|bf16|fp32``, chosen by what the device can do.

bf16 autocast halves memory traffic and, where the hardware has bf16 arithmetic, runs matmuls
2–4× faster than fp32: NVIDIA GPUs from Ampere on, x86 CPUs with AMX or AVX512_BF16 (Intel
Sapphire Rapids and later, AMD Zen 4 and later).  Elsewhere PyTorch emulates bf16 in software:
on an AVX2-only CPU (most laptops) a bf16 matmul ran at 0.8 GFLOP/s against 38 in fp32, 48×
slower.  So ``auto`` means bf16 where it is native and fp32 everywhere else.  The CPU's
instruction set decides where it is unambiguous (``torch.backends.cpu.get_cpu_capability()`` and
the AMX/AVX512_BF16 flags); otherwise (an AVX-512 CPU without bf16 instructions, an ARM CPU) a
micro-benchmark of a bf16 against an fp32 matmul does, once per process.

Metric encoders (FID's Inception, DINOv2, CLIP, the reference CNN) are another matter: their
numbers are compared with published fp32 numbers, so ``auto`` keeps them in fp32 on every device.
"""

from __future__ import annotations

import functools
import platform
import time
import warnings
from dataclasses import dataclass

import torch

from diffrep.errors import DiffrepError

PRECISIONS = ("auto", "bf16", "fp32")
BENCH_SHAPE = (64, 256, 512)
"""(M, K, N) of the micro-benchmark's matmul, on one thread: a small net's MLP, large enough that the
timing is not call overhead, small enough to take about 40 ms where bf16 is emulated."""
NATIVE_SPEEDUP = 1.2
"""bf16 counts as native when its matmul beats fp32's by this factor (autocast's casts cost something)."""
X86_WITHOUT_BF16 = ("DEFAULT", "NO AVX", "AVX2")
"""x86 capabilities (``get_cpu_capability()``) with no bf16 instructions at all."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``bf16`` or ``fp32``; ``reason`` says why, for the start-up line."""

    name: str
    reason: str

    @property
    def autocast(self) -> bool:
        """Whether the net runs under bf16 autocast."""
        return self.name == "bf16"

    def describe(self) -> str:
        return f"precision {self.name}: {self.reason}"


def check_precision(name: str, flag: str = "--precision") -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a one-line error listing them."""
    if name not in PRECISIONS:
        raise DiffrepError(f"unknown {flag} {name!r}: choose one of {', '.join(PRECISIONS)}")
    return name


@functools.lru_cache(maxsize=None)
def bf16_support(device: torch.device) -> tuple[bool, str]:
    """``(native, why)``: whether ``device`` computes bf16 in hardware (measured where the instruction
    set does not say), and a few words on how that was decided.  Cached for the process."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} computes bf16 natively"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type != "cpu":
        return False, f"bf16 autocast is not used on {device.type}"
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        if capability in X86_WITHOUT_BF16:
            return False, f"this CPU has {capability} only, no bf16 instructions"
        if torch.cpu._is_amx_tile_supported():
            return True, f"this CPU has AMX ({capability})"
        if torch.cpu._is_avx512_bf16_supported():
            return True, f"this CPU has AVX512_BF16 ({capability})"
    ratio = bf16_slowdown()
    native = ratio * NATIVE_SPEEDUP <= 1.0
    return native, (f"a bf16 matmul ran {1 / ratio:.1f}× as fast as fp32 on this CPU ({capability}, measured)")


@functools.lru_cache(maxsize=None)
def bf16_slowdown() -> float:
    """Time of a CPU bf16 matmul over that of the same fp32 matmul (best of a few; > 1: bf16 is slower)."""
    m, k, n = BENCH_SHAPE
    seconds = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # one core's instruction set; no thread-pool waits on a busy machine
    try:
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(2):                          # warm-up: kernel selection, caches
                torch.mm(a, b)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - start)
            seconds[dtype] = best
    finally:
        torch.set_num_threads(threads)
    return seconds[torch.bfloat16] / seconds[torch.float32]


def resolve_precision(requested: str, device: torch.device | str, *, recorded: str | None = None,
                      encoder: bool = False) -> Precision:
    """The precision to run in.

    ``requested``: the user's ``auto``, ``bf16`` or ``fp32`` (explicit choices always win).
    ``recorded``: the precision a resumed training run was trained in; ``auto`` keeps it, so that the
    continuation is bit-identical.  ``encoder``: a metric encoder, which ``auto`` keeps in fp32.
    Warns (once) when the result is bf16 on a device that would emulate it.
    """
    check_precision(requested)
    device = torch.device(device)
    if requested == "auto" and recorded is not None:
        native, why = bf16_support(device)
        fresh = "bf16" if native else "fp32"
        differs = "" if fresh == recorded else f"; auto would choose {fresh} for a new run here ({why})"
        chosen = Precision(recorded, f"recorded by this run, kept so that the resume is bit-identical{differs}")
    elif requested == "auto" and encoder:
        chosen = Precision("fp32", "metric encoders run in fp32, as the published numbers they are compared with")
    elif requested == "auto":
        native, why = bf16_support(device)
        chosen = Precision("bf16" if native else "fp32", f"auto, {why}")
    else:
        chosen = Precision(requested, "as asked")
    if chosen.autocast:
        _warn_if_emulated(device, resumed=recorded is not None and requested == "auto")
    return chosen


def _warn_if_emulated(device: torch.device, resumed: bool) -> None:
    native, why = bf16_support(device)
    if native:
        return
    slow = f"; a bf16 matmul ran {bf16_slowdown():.1f}× slower than fp32 here" if device.type == "cpu" else ""
    if resumed:
        _warn_once(f"this run was trained in bf16, which this device does not compute natively ({why}{slow}): it "
                   "resumes in bf16 to stay bit-identical; for speed resume with --precision fp32 (not bit-identical) "
                   "or start a new run with --precision fp32")
    else:
        _warn_once(f"--precision bf16 on a device without native bf16 ({why}{slow}): --precision auto would use fp32")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def cpu_facts() -> dict:
    """The CPU's model, instruction-set capability and bf16 support, for start-up lines and benchmark records."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    native, why = bf16_support(torch.device("cpu"))
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
            "bf16_reason": why}
