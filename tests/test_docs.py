"""The code in the docs runs as written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from diffrep.checkpoint import latest_checkpoint
from diffrep.plugins import PLUGINS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_plugin_example_trains_logs_its_term_and_resumes(tmp_path, monkeypatch):
    [code] = python_blocks(DOCS / "plugins.md")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(PLUGINS, "patchalign", None)        # the example registers it; removed after the test
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    records = [json.loads(line) for line in (tmp_path / "runs/patchalign/metrics.jsonl").read_text().splitlines()]
    terms = [r["patchalign/patch"] for r in records]
    assert len(terms) == 4 and all(math.isfinite(v) and v > 0 for v in terms) and terms[-1] < terms[0]
    saved = latest_checkpoint(tmp_path / "runs/patchalign").weights("heads")
    resumed = namespace["Trainer"](namespace["cfg"], "runs/patchalign", resume=True, progress=False)
    assert saved.keys() == {"0.head.weight", "0.head.bias"}
    assert torch.equal(resumed.plugins[0].head.weight, saved["0.head.weight"])
