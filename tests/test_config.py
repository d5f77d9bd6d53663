"""The config: sections in config.yaml, flat files of earlier releases, flags generated from field metadata."""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

import torch

from diffrep.config import SECTIONS, TrainConfig, load_run_config, make_config, preset, read_yaml_config, save_config
from diffrep.errors import DiffrepError

FLAT_CONFIG_OF_0_1 = """data: digits
image_size: null
hflip: false
class_conditional: true
label_dropout: 0.1
model: UNet-S
process: flow
prediction: eps
schedule: linear
time_sampling: uniform
grad_checkpoint: false
channels_last: false
compile: false
deterministic: false
fsdp: false
steps: 20
batch_size: 16
grad_accum: 1
lr: 0.001
warmup: 100
weight_decay: 0.0
beta2: 0.999
adamw_impl: foreach
grad_clip: 1.0
ema_decay: 0.999
ema_start: 0
precision: bf16
seed: 0
ckpt_every: 10
keep_last: 3
log_every: 5
grid_every: 0
grid_sampler: euler
grid_steps: 32
eval_every: 0
eval_samples: 1000
eval_metrics: fd
eval_encoders: reference
plugins: []
"""


def test_config_yaml_is_written_in_sections_and_read_back(tmp_path):
    cfg = make_config(preset("smoke"), {"plugins": ["sra"]})
    save_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(written) == [*SECTIONS, "provenance"] and written["optim"]["plugins"] == ["sra"]
    assert written["data"]["data"] == "digits" and written["model"]["model"] == "UNet-S"
    assert written["provenance"]["diffrep"] and written["provenance"]["torch"] == torch.__version__
    assert load_run_config(tmp_path) == cfg


def test_a_yaml_alias_bomb_is_a_short_error(tmp_path):
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    bomb = f"lr: [{', '.join(levels)}]\n"     # 9^9 strings once expanded (billion laughs)
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(DiffrepError) as e:
        make_config(read_yaml_config(tmp_path / "bomb.yaml"))
    assert "config option lr: expected a number" in str(e.value) and len(str(e.value)) < 300


def test_a_flat_config_of_an_earlier_release_still_loads(tmp_path):
    (tmp_path / "config.yaml").write_text(FLAT_CONFIG_OF_0_1)
    cfg = load_run_config(tmp_path)
    assert (cfg.data, cfg.steps, cfg.precision, cfg.batch_size) == ("digits", 20, "bf16", 16)


def test_every_config_field_has_a_train_flag_with_its_metadata(cli, capsys):
    from diffrep.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest: a for a in train._actions}
    for f in fields(TrainConfig):
        assert f.name in dests, f"--{f.name} is missing"
        assert dests[f.name].default is None, f"--{f.name} would override presets and config files"
        assert f.metadata["section"] in SECTIONS
    assert dests["class_conditional"].option_strings == ["--unconditional"]
    assert "UNet-XS" in dests["model"].choices and dests["steps"].type("5") == 5
    with pytest.raises(SystemExit):
        cli("train", "--out", "x", "--steps", "0")
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("name,value", [("lr", -1.0), ("lr", float("nan")), ("beta2", 2.0), ("ema_decay", -1.0),
                                        ("ema_decay", 1.5), ("grad_clip", -1.0), ("weight_decay", float("inf")),
                                        ("label_dropout", 1.0)])
def test_float_options_outside_their_domain_are_refused(name, value):
    from diffrep.errors import DiffrepError

    with pytest.raises(DiffrepError, match=f"--{name.replace('_', '-')} must be"):
        make_config({name: value})


def test_legal_but_suspicious_values_are_named():
    cfg = make_config({"steps": 10, "warmup": 10, "batch_size": 64})
    found = cfg.suspicious(dataset_size=50, labels_used=2, num_classes=100001)
    assert [m.split(" ")[0] for m in found] == ["--warmup", "--batch-size", "the"], found
    assert "100001 class embeddings" in found[2]
    assert make_config({}).suspicious(dataset_size=4000, labels_used=10, num_classes=10) == []
