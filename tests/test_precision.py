"""``--precision auto``: bf16 where the device computes it natively, fp32 elsewhere; the quickstart sized to the machine."""

from __future__ import annotations

import dataclasses
import platform
import warnings

import pytest
import torch

from helpers import SMOKE
from diffrep import precision, quickstart
from diffrep.config import load_run_config, make_config, preset
from diffrep.errors import DiffrepError
from diffrep.precision import bf16_slowdown, bf16_support, resolve_precision
from diffrep.train import Trainer


def _clear_caches() -> None:
    bf16_support.cache_clear()
    bf16_slowdown.cache_clear()
    precision._warn_once.cache_clear()


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU of a given kind: ``cpu_kind("AVX2")``, ``cpu_kind("AVX512", amx=True)``, …
    ``slowdown`` stands in for the micro-benchmark (bf16 time / fp32 time)."""
    def set_kind(capability: str, amx: bool = False, avx512_bf16: bool = False, machine: str = "x86_64",
                 slowdown: float = 40.0) -> None:
        _clear_caches()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(precision, "bf16_slowdown", lambda: slowdown)

    yield set_kind
    _clear_caches()


@pytest.mark.parametrize("kind, expected", [
    (dict(capability="AVX2"), "fp32"),
    (dict(capability="DEFAULT"), "fp32"),
    (dict(capability="AVX512", amx=True), "bf16"),
    (dict(capability="AVX512", avx512_bf16=True), "bf16"),
    (dict(capability="AVX512", slowdown=3.0), "fp32"),           # AVX-512 without bf16 instructions: measured
    (dict(capability="AVX512", slowdown=0.5), "bf16"),
    (dict(capability="SVE256", machine="aarch64", slowdown=0.4), "bf16"),
    (dict(capability="DEFAULT", machine="aarch64", slowdown=8.0), "fp32"),
])
def test_auto_follows_the_cpus_bf16_support(cpu_kind, kind, expected):
    cpu_kind(**kind)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected and chosen.autocast == (expected == "bf16")
    assert chosen.reason.startswith("auto, ")


def test_explicit_choices_win_and_bf16_without_hardware_warns_once(cpu_kind):
    cpu_kind("AVX512", amx=True)
    assert resolve_precision("fp32", "cpu").name == "fp32"
    cpu_kind("AVX2", slowdown=47.6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", "cpu").name == "bf16"
        resolve_precision("bf16", "cpu")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "47.6× slower than fp32" in message and "--precision auto would use fp32" in message


def test_metric_encoders_stay_fp32_under_auto(cpu_kind):
    cpu_kind("AVX512", amx=True)
    assert resolve_precision("auto", "cpu", encoder=True).name == "fp32"
    assert resolve_precision("bf16", "cpu", encoder=True).name == "bf16"


def test_cuda_auto_asks_torch_whether_bf16_is_native(monkeypatch):
    _clear_caches()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake A100")
    try:
        assert resolve_precision("auto", torch.device("cuda", 0)).name == "bf16"
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
        bf16_support.cache_clear()
        assert resolve_precision("auto", torch.device("cuda", 0)).name == "fp32"
    finally:
        _clear_caches()


def test_an_unknown_precision_lists_the_valid_ones(cli, tmp_path):
    with pytest.raises(DiffrepError, match="unknown --precision 'half': choose one of auto, bf16, fp32"):
        make_config({"precision": "half"})
    (tmp_path / "c.yaml").write_text("precision: fp16\n")
    code, _, err = cli("train", *SMOKE, "--config", tmp_path / "c.yaml", "--out", tmp_path / "r")
    assert code == 2 and "choose one of auto, bf16, fp32" in err and len(err.strip().splitlines()) == 1


def test_a_run_records_what_auto_chose_and_a_resume_keeps_it(cli, cpu_kind, tmp_path):
    cpu_kind("AVX512", amx=True)
    code, _, err = cli("train", *SMOKE, "--steps", 2, "--ckpt-every", 2, "--out", tmp_path / "r")
    assert code == 0 and "precision bf16: auto, this CPU has AMX" in err
    assert load_run_config(tmp_path / "r").precision == "bf16"
    cpu_kind("AVX2")                                  # the run moves to a laptop
    code, _, err = cli("train", "--steps", 4, "--resume", "--no-progress", "--out", tmp_path / "r")
    assert code == 0
    assert "precision bf16: recorded by this run" in err and "auto would choose fp32 for a new run here" in err
    assert "resume with --precision fp32 (not bit-identical)" in err        # the one-line warning
    code, _, err = cli("train", "--steps", 6, "--resume", "--precision", "fp32", "--no-progress", "--out", tmp_path / "r")
    assert code == 0 and "continuing in fp32, as asked" in err
    assert load_run_config(tmp_path / "r").precision == "fp32"


def test_a_new_run_without_native_bf16_trains_in_fp32(cpu_kind, tmp_path):
    cpu_kind("AVX2")
    trainer = Trainer(make_config(preset("smoke"), {"steps": 1}), tmp_path / "r", progress=False)
    assert trainer.cfg.precision == "fp32" and not trainer.autocast


# ---- the quickstart sized to the machine ------------------------------------------------------

def _speeds(monkeypatch, **img_s: tuple[float, float]) -> None:
    """``measure_speed`` returns ``img_s[model]`` = (train, sample) images/s instead of timing."""
    monkeypatch.setattr(quickstart, "measure_speed",
                        lambda cfg, device="auto": quickstart.Speed(*img_s[cfg.model.replace("-", "_")]))


def test_quickstart_keeps_the_preset_where_it_fits(monkeypatch):
    _speeds(monkeypatch, UNet_S=(200.0, 2000.0), UNet_XS=(800.0, 8000.0))
    choice = quickstart.choose()
    assert choice.plan.name == "preset" and choice.cfg.model == "UNet-S" and choice.cfg.steps == 800
    assert choice.n == 1000 and choice.eta_s == pytest.approx(800 * 128 / 200 + 1000 * 3 * 50 / 2000 + 10)


def test_quickstart_on_a_slow_cpu_fits_the_small_plan_to_the_budget(monkeypatch):
    _speeds(monkeypatch, UNet_S=(11.0, 35.0), UNet_XS=(40.0, 140.0))
    choice = quickstart.choose()
    assert choice.plan.name == "small" and choice.cfg.model == "UNet-XS"
    assert choice.eta_s <= quickstart.BUDGET_S
    longer = dataclasses.replace(choice.cfg, steps=choice.cfg.steps + 50)
    one_more = quickstart.Speed(40.0, 140.0).seconds(longer, choice.plan, choice.n)
    assert one_more > quickstart.BUDGET_S       # the steps fill the budget
    assert "small plan" in choice.why and "UNet-S 11 img/s" in choice.why
    _speeds(monkeypatch, UNet_S=(1.0, 3.0), UNet_XS=(2.0, 6.0))
    assert quickstart.choose().cfg.steps == quickstart.PLANS["small"].min_steps     # never below the floor


def test_quickstart_size_and_resume_need_no_measurement(monkeypatch, tmp_path):
    monkeypatch.setattr(quickstart, "measure_speed", None)      # calling it would fail
    assert quickstart.choose("small").cfg.model == "UNet-XS"
    assert quickstart.choose("preset", steps=5).cfg.steps == 5
    with pytest.raises(DiffrepError, match="unknown --size 'huge'"):
        quickstart.choose("huge")
    cfg = quickstart.PLANS["small"].config(steps=350)
    Trainer(cfg, tmp_path / "qs", progress=False)             # writes config.yaml, as an interrupted run has
    resumed = quickstart.choose(resume_from=tmp_path / "qs")
    assert resumed.plan.name == "small" and resumed.cfg.steps == 350


def test_quickstart_measures_real_throughput():
    speed = quickstart.measure_speed(quickstart.PLANS["small"].config(), batch=8, sample_batch=8)
    assert speed.train_img_s > 0 and speed.sample_img_s > speed.train_img_s     # a forward is cheaper than a step
