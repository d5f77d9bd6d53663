"""Shared fixtures (the in-process CLI) and the test run's header; helpers live in ``helpers.py``."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The feature cache (the judge's reference side among others) goes to a folder of this test run, never to the
# user's ~/.cache; tests that look at the cache set their own.
os.environ["DIFFREP_CACHE"] = tempfile.mkdtemp(prefix="diffrep-test-cache-")
if torch.cuda.is_available():  # the bit-identity tests then hold on a GPU machine too
    from diffrep.runtime import use_deterministic_kernels

    use_deterministic_kernels()


def pytest_report_header(config) -> str:
    """The CPU's kind and the precision ``auto`` picks on it, so that a slow run explains itself."""
    from diffrep.precision import cpu_facts, resolve_precision

    facts = cpu_facts()
    return (f"diffrep: CPU {facts['cpu_model']} ({facts['cpu_capability']}, {torch.get_num_threads()} threads); "
            f"{resolve_precision('auto', 'cpu').describe()}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``bf16`` must run bf16 kernels: where the CPU emulates bf16 (tens of times slower)
    they join the ``slow`` run (``python -m pytest -m slow``) instead of the default one."""
    from diffrep.precision import bf16_support

    if not bf16_support(torch.device("cpu"))[0]:
        for item in items:
            if item.get_closest_marker("bf16"):
                item.add_marker(pytest.mark.slow)


@pytest.fixture
def cli(capsys):
    """Run ``diffrep ARGS`` in this process; returns ``(exit code, stdout, stderr)``."""
    from diffrep.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
