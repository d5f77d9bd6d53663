"""Run folders on disk: foreign folders, locks, --resume and --resume auto, runs that died early, damaged
checkpoints and their fallback, a lost model.json, torn logs."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SMOKE
from diffrep.checkpoint import latest_checkpoint, list_checkpoints
from diffrep.config import make_config, preset
from diffrep.train import Trainer


def test_truncated_checkpoint_falls_back_to_the_previous_one(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 20, "--out", tmp_path)[0] == 0
    newest = tmp_path / "checkpoints/step_0000020/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="does not match its hash"):
        assert latest_checkpoint(tmp_path).step == 10
    code, out, _ = cli("train", "--resume", "--no-progress", "--out", tmp_path)
    assert code == 0 and latest_checkpoint(tmp_path).step == 20


def _rehash(folder) -> None:
    """Rewrite a checkpoint's manifest hashes, as a user who edits a file and its manifest would."""
    from diffrep.checkpoint import _sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: _sha256(folder / name) for name in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGES = {
    "manifest without files": (lambda d: (d / "manifest.json").write_text('{"step": 20, "identity": {}}'),
                               "no readable manifest"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{step"), "no readable manifest"),
    "state without keys": (lambda d: (torch.save({"plugins": []}, d / "state.pt"), _rehash(d)), "state.pt lacks"),
    "state not a torch file": (lambda d: ((d / "state.pt").write_bytes(b"junk"), _rehash(d)), "cannot read checkpoint"),
    "ema listed nowhere": (lambda d: ((d / "ema.safetensors").unlink(), _rehash_without(d, "ema.safetensors")),
                           "lists no ema.safetensors"),
}


def _rehash_without(folder, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"][name]
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A smoke run with checkpoints at steps 10 and 20 (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("two_checkpoints")
    Trainer(make_config(preset("smoke"), {"steps": 20, "ckpt_every": 10, "grid_every": 0}), out, progress=False).run()
    return out


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_damaged_checkpoint_part_falls_back_to_the_previous_checkpoint(two_checkpoints, tmp_path, damage):
    import shutil

    shutil.copytree(two_checkpoints, tmp_path, dirs_exist_ok=True)
    harm, message = DAMAGES[damage]
    harm(tmp_path / "checkpoints/step_0000020")
    with pytest.warns(UserWarning, match=message):
        assert latest_checkpoint(tmp_path).step == 10


@pytest.mark.parametrize("damage", ["missing", "not JSON", "no image shape"])
def test_a_lost_model_json_is_restored_from_the_checkpoint(two_checkpoints, tmp_path, damage):
    import shutil

    from diffrep.runs import load_run

    shutil.copytree(two_checkpoints, tmp_path, dirs_exist_ok=True)
    original = json.loads((tmp_path / "model.json").read_text())
    if damage == "missing":
        (tmp_path / "model.json").unlink()
    else:
        (tmp_path / "model.json").write_text("{oops" if damage == "not JSON" else '{"num_classes": 10}')
    with pytest.warns(UserWarning, match="model.json is missing or damaged: using the copy in step_0000020"):
        run = load_run(tmp_path)
    assert run.info["image_shape"] == original["image_shape"] and run.info["num_classes"] == original["num_classes"]


def test_a_damaged_newer_checkpoint_is_set_aside_not_kept_in_place_of_good_ones(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 20, "--out", tmp_path)[0] == 0
    damaged = tmp_path / "checkpoints/step_0000020/model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    (tmp_path / "checkpoints/step_0000010_backup").mkdir()        # a user's copy: not a checkpoint name
    code, _, err = cli("train", "--resume", "--steps", 15, "--ckpt-every", 5, "--keep-last", 1, "--no-progress",
                       "--out", tmp_path)
    assert code == 0, err
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000015"]
    assert latest_checkpoint(tmp_path).step == 15
    assert (tmp_path / "checkpoints/stale_step_0000020/model.safetensors").is_file()


def test_resume_errors(cli, tmp_path):
    code, _, err = cli("train", *SMOKE, "--resume", "--out", tmp_path / "empty")
    assert code == 2 and "holds no run to continue" in err and len(err.strip().splitlines()) == 1
    assert cli("train", *SMOKE, "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("train", *SMOKE, "--resume", "--lr", "0.5", "--out", tmp_path / "run")
    assert code == 2 and "lr: 0.001 → 0.5" in err
    code, _, err = cli("train", *SMOKE, "--out", tmp_path / "run")
    assert code == 2 and "already holds a run" in err


def test_run_folders_a_foreign_folder_a_file_and_a_run_that_died_before_its_first_checkpoint(cli, tmp_path):
    import shutil

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "model.json").write_text("my own file")
    code, _, err = cli("train", *SMOKE, "--out", foreign)
    assert code == 2 and "not empty and holds no diffrep run" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["model.json"] and (foreign / "model.json").read_text() == "my own file"
    (tmp_path / "file").write_text("x")
    code, _, err = cli("train", *SMOKE, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err and (tmp_path / "file").read_text() == "x"
    died = tmp_path / "died"
    assert cli("train", *SMOKE, "--steps", 4, "--out", died)[0] == 0
    for again in ([], ["--resume"]):          # only start-up files left: a restart and a --resume both start over
        shutil.rmtree(died / "checkpoints")
        with open(died / "metrics.jsonl", "a") as f:
            f.write('{"step": 3, "lo')          # a torn last line, as a full disk leaves
        code, _, err = cli("train", *SMOKE, "--steps", 4, *again, "--out", died)
        assert code == 0 and "stopped before its first checkpoint: starting it over" in err, err
        assert latest_checkpoint(died).step == 4
        assert [json.loads(ln)["step"] for ln in (died / "metrics.jsonl").read_text().splitlines()] == [4]


def test_a_run_folder_is_locked_while_it_trains_and_never_trains_backwards(cli, tmp_path):
    from diffrep.train.rundir import lock_run_dir

    held = lock_run_dir(tmp_path / "run")            # as another process training into the folder would
    code, _, err = cli("train", *SMOKE, "--out", tmp_path / "run")
    assert code == 2 and "being trained by another process" in err and not (tmp_path / "run" / "config.yaml").exists()
    held.close()                                      # the lock dies with its holder: no stale lock to clear
    assert cli("train", *SMOKE, "--steps", 10, "--out", tmp_path / "run")[0] == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    code, _, err = cli("train", *SMOKE, "--steps", 5, "--resume", "--out", tmp_path / "run")
    assert code == 2 and "already at step 10; give --steps above 10" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == config


def test_resume_auto_starts_a_run_or_continues_it(cli, tmp_path):
    code, _, err = cli("train", *SMOKE, "--steps", 4, "--resume", "auto", "--out", tmp_path / "run")
    assert code == 0, err
    assert latest_checkpoint(tmp_path / "run").step == 4 and "UNet-S (" in err and "a new run, to step 4" in err
    code, _, err = cli("train", *SMOKE, "--steps", 8, "--resume", "auto", "--out", tmp_path / "run")
    assert code == 0, err
    assert latest_checkpoint(tmp_path / "run").step == 8 and "resuming at step 4, to step 8" in err
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [4, 5, 8]
    with pytest.raises(SystemExit):
        cli("train", *SMOKE, "--resume", "yes", "--out", tmp_path / "run")


def test_a_checkpoint_folder_left_by_a_kill_is_removed_on_resume(cli, two_checkpoints, tmp_path):
    import shutil

    shutil.copytree(two_checkpoints, tmp_path, dirs_exist_ok=True)
    partial = tmp_path / "checkpoints" / ".tmp_step_0000030"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    code, _, err = cli("train", "--resume", "--steps", 25, "--no-progress", "--out", tmp_path)
    assert code == 0 and "removed 1 checkpoint(s) whose writing was interrupted: .tmp_step_0000030" in err
    assert not partial.exists() and latest_checkpoint(tmp_path).step == 25


def test_a_torn_last_log_line_does_not_block_a_resume(cli, tmp_path):
    assert cli("train", *SMOKE, "--steps", 10, "--out", tmp_path)[0] == 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')
    code, _, err = cli("train", *SMOKE, "--steps", 20, "--resume", "--out", tmp_path)
    assert code == 0, err
    assert all(json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines())


def test_overwrite_starts_a_run_over_and_never_touches_other_files(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *SMOKE, "--steps", 10, "--out", run)[0] == 0
    (run / "notes.txt").write_text("the user's notes")
    code, _, err = cli("train", *SMOKE, "--steps", 4, "--overwrite", "--out", run)
    assert code == 0 and "--overwrite: deleted config.yaml, model.json, checkpoints, metrics.jsonl" in err, err
    assert latest_checkpoint(run).step == 4 and [p.name for p in list_checkpoints(run)] == ["step_0000004"]
    assert (run / "notes.txt").read_text() == "the user's notes"
    code, _, err = cli("train", *SMOKE, "--overwrite", "--resume", "--out", run)
    assert code == 2 and "pass one of them" in err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    code, _, err = cli("train", *SMOKE, "--overwrite", "--out", foreign)
    assert code == 2 and "holds no diffrep run" in err and (foreign / "data.csv").read_text() == "1,2"
