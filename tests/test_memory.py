"""The CPU allocator setting: freed large buffers are reused instead of page-faulting again."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from diffrep.memory import reuse_freed_memory

def faults_of_reallocating():
    for _ in range(20):                              # steady state: glibc's heap settles after a few
        torch.ones(64 << 20, dtype=torch.uint8)      # 64 MiB, allocated, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(64 << 20, dtype=torch.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

if sys.argv[1] == "tuned":
    assert reuse_freed_memory()
print(faults_of_reallocating())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    pages = 5 * (64 << 20) // 4096
    assert faults("default") > pages // 2       # glibc mmaps each buffer anew and the kernel zero-fills it
    assert faults("tuned") < pages // 20        # freed buffers are served again from the heap
