"""Bad input and damaged files: a one-line error naming the problem and the fix, no traceback, nothing lost."""

from __future__ import annotations

import pickle

import pytest
import torch

from diffrep.errors import DiffrepError
from diffrep.io import load_torch_file


class _RunsCode:
    """A pickle that would create a file when loaded (a stand-in for a malicious one)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_malicious_pickle_is_not_run_and_the_message_gives_no_unsafe_advice(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2), "evil": _RunsCode(sentinel)}, path)
    with pytest.raises(DiffrepError) as e:
        load_torch_file(path, "encoder weights file")
    message = str(e.value)
    assert not sentinel.exists()
    assert "pickled objects other than tensors" in message and "weights_only=False" not in message
    assert "\n" not in message


def test_a_malicious_pickle_as_encoder_weights_is_a_one_line_cli_error(cli, tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "ref.pth"
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(sentinel), f)
    code, _, err = cli("features", "digits:test", "--encoder", "reference", "--encoder-weights", f"reference={path}",
                       "--no-cache", "--no-progress", "--out", tmp_path / "f.npz")
    assert code == 2 and not sentinel.exists() and not (tmp_path / "f.npz").exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "weights_only=False" not in err


def test_an_output_name_the_file_system_refuses_is_a_one_line_error_before_any_work(cli, tmp_path):
    out = tmp_path / ("x" * 300 + ".npz")
    code, _, err = cli("features", "digits:test", "--encoder", "pixels", "--no-cache", "--no-progress", "--out", out)
    assert code == 2 and "file name too long; choose another path" in err and len(err.strip().splitlines()) == 1


def test_data_that_is_a_file_but_not_an_npz_is_named_as_such(cli, tmp_path):
    (tmp_path / "result.json").write_text("{}")
    code, _, err = cli("judge", tmp_path / "result.json")
    assert code == 2 and "result.json' is a file, not an .npz or a folder" in err


def test_a_full_disk_is_a_one_line_error_and_the_old_file_stays(tmp_path):
    import resource
    import signal

    from diffrep.io import atomic_write

    path = tmp_path / "result.bin"
    path.write_bytes(b"the old result")
    old, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, old[1]))       # writes past 1 KB fail, as on a full disk
    try:
        with pytest.raises(DiffrepError, match="cannot write .*result.bin: file too large; nothing was replaced"):
            with atomic_write(path) as f:
                f.write(b"x" * 100_000)
                f.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == b"the old result" and [p.name for p in tmp_path.iterdir()] == ["result.bin"]
