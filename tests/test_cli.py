"""The command line: help with examples, one-line errors, train → sample → judge."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import SMOKE, run_cli_process
from diffrep.config import load_run_config

def _commands() -> list[str]:
    from diffrep.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


COMMANDS = _commands()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command, capsys):
    with pytest.raises(SystemExit) as e:
        cli(command, "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"diffrep {command}" in out


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["trian"]])
def test_version_help_and_typos_do_not_import_torch(argv):
    code = ("import sys\nfrom diffrep.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\nprint('torch imported:', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert "torch imported: False" in done.stdout, done.stdout + done.stderr
    if argv == ["trian"]:
        assert "exit 2" in done.stdout and "invalid choice: 'trian'" in done.stderr
    else:
        assert "exit 0" in done.stdout and ("diffrep 0." in done.stdout or "classify" in done.stdout)


def test_module_entry_point():
    done = run_cli_process("presets")
    assert done.returncode == 0 and "quickstart" in done.stdout and "dit-tiny" in done.stdout


def one_line_error(result) -> str:
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_names_list_the_valid_ones(cli, tmp_path, capsys):
    assert "mnist5k, digits" in one_line_error(cli("train", "--data", "imagenet", "--out", tmp_path / "a"))
    for flag, value in (("--model", "DiT-Q/4"), ("--preset", "huge"), ("--sampler", "dpm3")):
        command = ["sample", tmp_path] if flag == "--sampler" else ["train", "--out", tmp_path / "b"]
        with pytest.raises(SystemExit) as e:
            cli(*command, flag, value)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and ("DiT-S/4" in err or "quickstart" in err or "dpmpp_2m" in err)


def test_missing_data_folder_and_not_a_run(cli, tmp_path):
    assert "does not exist" in one_line_error(cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "r"))
    assert "not a diffrep run" in one_line_error(cli("sample", tmp_path, "--out", tmp_path / "s.npz"))


def test_corrupt_image_is_reported_on_one_line(cli, tmp_path):
    from helpers import write_images

    write_images(tmp_path / "data" / "a", 4)
    write_images(tmp_path / "data" / "b", 4, seed=1)
    (tmp_path / "data" / "b" / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = cli("train", *SMOKE, "--data", tmp_path / "data", "--steps", 2, "--out", tmp_path / "run")
    assert code == 0
    assert "warning: skipped 1 unreadable image(s)" in err and "bad.png" in err


def test_train_then_sample_a_tiny_run(cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli("train", *SMOKE, "--out", run)[0] == 0
    code, out, _ = cli("sample", run, "--n", 30, "--steps", 4, "--sampler", "dpmpp_2m", "--cfg", 2.0,
                       "--cfg-interval", "0.1,0.9", "--out", tmp_path / "s.npz", "--grid", tmp_path / "g.png",
                       "--no-progress")
    assert code == 0 and "30 samples" in out
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (30, 8, 8, 1) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].tolist() == [i % 10 for i in range(30)]
    assert (tmp_path / "g.png").stat().st_size > 0
    compiled = []

    def record_compile(module, **kw):           # stands in for the compiler: the same function, recorded
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", record_compile)
    args = ("--n", 12, "--steps", 3, "--no-progress", "--batch-size", 4)
    assert cli("sample", run, *args, "--out", tmp_path / "eager.npz")[0] == 0
    assert cli("sample", run, *args, "--compile", "--out", tmp_path / "compiled.npz")[0] == 0
    assert len(compiled) == 1, "auto does not compile 12 images × 3 calls; --compile alone does"
    assert cli("sample", run, *args, "--compile", "off", "--out", tmp_path / "off.npz")[0] == 0 and len(compiled) == 1
    from diffrep.generate import compile_pays

    assert compile_pays(1000, 50) and compile_pays(500, 100) and not compile_pays(999, 50)
    with np.load(tmp_path / "eager.npz") as e, np.load(tmp_path / "compiled.npz") as c:
        assert np.array_equal(e["arr_0"], c["arr_0"])


def test_judge_real_test_images(cli, tmp_path):
    """The whole test split judged against itself: the encoder's accuracy, and FD_ref 0."""
    import json

    from diffrep.data import load_builtin

    test = load_builtin("mnist5k", "test")
    np.savez(tmp_path / "real.npz", arr_0=test.images.permute(0, 2, 3, 1).numpy(), arr_1=test.labels.numpy())
    code, out, _ = cli("judge", tmp_path / "real.npz", "--out", tmp_path / "j.json")
    assert code == 0 and "FD_ref" in out
    result = json.loads((tmp_path / "j.json").read_text())
    assert result["accuracy"] > 0.98 and result["fd_ref"] < 1e-6


def test_sampling_is_reproducible_with_a_seed(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *SMOKE, "--out", run)[0] == 0
    for name in ("a", "b"):
        assert cli("sample", run, "--n", 20, "--steps", 3, "--batch-size", 10, "--no-progress",
                   "--out", tmp_path / f"{name}.npz")[0] == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


def test_bad_cfg_interval(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 2, "--out", tmp_path)[0] == 0
    assert "lo,hi" in one_line_error(cli("sample", tmp_path, "--cfg", 2, "--cfg-interval", "0.5", "--out", tmp_path / "s.npz"))


def test_quickstart_trains_eagerly_samples_and_judges(cli, tmp_path):
    """The README's main job, shortened: eager by default (compiling costs more than it saves for
    800 steps on a CPU), both sample sets judged, the plan and the numbers written."""
    code, out, err = cli("quickstart", "--out", tmp_path / "qs", "--size", "small", "--steps", 2, "--n", 20)
    assert code == 0, err
    config = vars(load_run_config(tmp_path / "qs"))
    assert config["compile"] is False and config["model"] == "UNet-XS" and config["precision"] in ("bf16", "fp32")
    result = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert result["steps"] == 2 and result["plan"] == "small" and result["precision"] == config["precision"]
    assert set(result["results"]) == {"no CFG, heun 5", "CFG 2.5, heun 5"}
    assert all(r["n"] == 20 and 0 <= r["accuracy"] <= 1 and r["fd_ref"] > 0 for r in result["results"].values())
    assert "CFG 2.5, heun 5" in out and "quickstart plan 'small' (--size small)" in out
    assert f"precision {config['precision']}: " in err
    code, _, err = cli("quickstart", "--out", tmp_path / "qs", "--size", "small")
    assert code == 2 and "already holds a run: pass --resume" in err


def test_bad_values_files_and_options_get_one_line_errors(cli, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nsteps: ten\n")       # YAML reads 1e-3 as a string: accepted
    from diffrep.config import make_config, read_yaml_config

    assert make_config({"lr": read_yaml_config(tmp_path / "c.yaml")["lr"]}).lr == 0.001
    assert make_config({"hflip": 1, "plugins": ("sra",)}).hflip is True
    assert make_config({"process": "edm", "prediction": "v"}).prediction == "v"     # runs saved so still load
    assert "steps: expected a whole number, got 'ten'" in one_line_error(
        cli("train", *SMOKE, "--config", tmp_path / "c.yaml", "--out", tmp_path / "r"))
    assert "unknown --device 'gpu'" in one_line_error(cli("train", *SMOKE, "--device", "gpu", "--out", tmp_path / "r"))
    assert "has a fixed size" in one_line_error(cli("train", *SMOKE, "--image-size", 16, "--out", tmp_path / "r"))
    assert "vp only" in one_line_error(cli("train", *SMOKE, "--prediction", "v", "--out", tmp_path / "r"))
    assert "unknown foo" in one_line_error(cli("train", *SMOKE, "--eval-metrics", "fd,foo", "--out", tmp_path / "r"))
    assert "needs a value, e.g. depth=2" in one_line_error(cli("train", *SMOKE, "--plugin", "repa:depth", "--out", tmp_path / "r"))
    assert "must be deeper" in one_line_error(
        cli("train", *SMOKE, "--plugin", "sra:student_block=3,teacher_block=2", "--out", tmp_path / "r"))

    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((4, 1, 8, 8), np.uint8))
    assert "look like N×C×H×W" in one_line_error(cli("judge", tmp_path / "nchw.npz"))
    np.savez(tmp_path / "labels.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8), arr_1=np.arange(3))
    assert "labels must be 4 non-negative integers" in one_line_error(cli("train", *SMOKE, "--data", tmp_path / "labels.npz",
                                                                          "--out", tmp_path / "r"))
    (tmp_path / "fake.npz").write_text("not an archive")
    assert "not a readable .npz" in one_line_error(cli("judge", tmp_path / "fake.npz"))
    np.savez(tmp_path / "ok.npz", arr_0=np.zeros((4, 32, 32, 1), np.uint8))
    assert "'refrence' is not among the encoders" in one_line_error(
        cli("eval", tmp_path / "ok.npz", "mnist5k:test", "--encoder-weights", "refrence=x.pth"))

    with pytest.raises(SystemExit) as e:
        cli("sample", tmp_path, "--steps", 0, "--out", tmp_path / "s.npz")
    assert e.value.code == 2 and "argument --steps: must be at least 1, got 0" in capsys.readouterr().err


def test_run_commands_default_to_the_runs_data_and_refuse_other_sizes(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 2, "--out", tmp_path / "run")[0] == 0      # 8×8 digits
    code, out, err = cli("classify", tmp_path / "run", "--limit", 10, "--pairs", 2)
    assert code == 0 and "digits:test" in out
    assert "classify:200call" in err.replace(" ", "")     # a progress bar: 10 images × 10 classes × 2 pairs
    assert "trained on (1, 8, 8)" in one_line_error(cli("classify", tmp_path / "run", "--data", "mnist5k", "--limit", 10))
    assert "trained on (1, 8, 8)" in one_line_error(cli("features", tmp_path / "run", "--data", "mnist5k:test",
                                                        "--out", tmp_path / "f.npz"))
    assert "lie in [0, 1]" in one_line_error(cli("features", tmp_path / "run", "--t", "2,0.1", "--out", tmp_path / "f.npz"))


def test_labels_for_an_unconditional_run_are_refused():
    from diffrep.errors import DiffrepError
    from diffrep.generate import make_labels

    assert make_labels("balanced", 4, num_classes=0) is None
    with pytest.raises(DiffrepError, match="unconditional"):
        make_labels("3", 4, num_classes=0)


@pytest.mark.parametrize("args,message", [
    (["--cfg", "nan"], "--cfg: expected a finite number, got 'nan'"),
    (["--cfg", "inf"], "--cfg: expected a finite number, got 'inf'"),
    (["--grid-rho", "-1"], "--grid-rho: must be positive, got '-1'"),
])
def test_sample_refuses_numbers_outside_their_domain_before_any_work(cli, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli("sample", tmp_path / "no-run", "--out", tmp_path / "s.npz", *args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    code, _, err = cli("sample", tmp_path / "no-run", "--out", tmp_path / "s.npz", "--cfg-interval", "nan,1")
    assert code == 2 and "not nan" in err and not (tmp_path / "s.npz").exists()


def test_sample_warns_on_a_legal_but_saturating_guidance_scale(cli, tmp_path):
    code, _, err = cli("sample", tmp_path / "no-run", "--out", tmp_path / "s.npz", "--cfg", "50")
    assert "warning: --cfg 50.0: guidance scales above 20" in err
    assert code == 2 and "no-run" in err.splitlines()[-1]      # then the missing run: one line, no traceback


@pytest.mark.parametrize("command", [["sample", "no-run"], ["eval", "a.npz", "mnist5k:test"],
                                     ["features", "mnist5k:test"], ["classify", "no-run"], ["probe", "no-run"]])
def test_outputs_are_checked_before_any_work_and_never_overwritten_silently(cli, tmp_path, command):
    existing = tmp_path / "out.x"
    existing.write_bytes(b"the user's result")
    code, _, err = cli(*command, "--out", existing)
    assert code == 2 and "exists: pass --overwrite" in err and existing.read_bytes() == b"the user's result"
    code, _, err = cli(*command, "--out", tmp_path)
    assert code == 2 and "is a folder: give the path of a file" in err
    code, _, err = cli(*command, "--out", existing / "inside.json")
    assert code == 2 and "is a file, so no folder can be made there" in err
    assert len(err.strip().splitlines()) == 1


def test_reference_writes_weights_and_card_to_two_files(cli, tmp_path):
    code, _, err = cli("reference", "--data", "digits", "--out", tmp_path / "card.json")
    assert code == 2 and "give a .safetensors path" in err and not (tmp_path / "card.json").exists()
    (tmp_path / "r.json").write_text("card")
    code, _, err = cli("reference", "--data", "digits", "--out", tmp_path / "r.safetensors")
    assert code == 2 and "the card of --out" in err and "exists" in err


def test_outputs_carry_their_provenance(cli, tmp_path):
    assert cli("train", "--preset", "smoke", "--steps", 2, "--no-progress", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("sample", tmp_path / "run", "--n", 4, "--steps", 2, "--no-progress", "--out", tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as z:
        made = json.loads(str(z["provenance"]))
    assert made["checkpoint_step"] == 2 and made["run"] == str(tmp_path / "run") and made["diffrep"] and made["torch"]
    assert cli("judge", tmp_path / "s.npz", "--data", "digits", "--json", tmp_path / "j.json")[0] == 0
    assert json.loads((tmp_path / "j.json").read_text())["provenance"]["command"].startswith("diffrep ")
    assert "provenance" in json.loads((tmp_path / "run" / "model.json").read_text())
