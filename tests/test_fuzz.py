"""The bad-input catalogue of ``benchmarks/fuzz.py`` as tests, one per case (marked slow: about 80 seconds here).

    python -m pytest -m slow tests/test_fuzz.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from fuzz import run_case  # noqa: E402
from fuzz_cases import CASES, LOCKS, Workspace  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("fuzz"))
    ws.build()
    yield ws
    for lock in LOCKS:
        lock.close()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_case(workspace, name):
    outcome = run_case(name, CASES[name], workspace)
    assert outcome.verdict == "ok", (outcome.verdict, outcome.message, outcome.changed)
