"""Representation-conditioned generation: a net conditioned on image embeddings, trained, sampled, varied, refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import weights
from diffrep.config import make_config
from diffrep.data import load_builtin
from diffrep.errors import DiffrepError
from diffrep.evaluation.encoders import get_encoder
from diffrep.evaluation.features import extract_features
from diffrep.guidance.cfg import ClassifierFreeGuidance
from diffrep.nets import build_net
from diffrep.nets.common import EmbeddingCondition
from diffrep.processes import Prediction, make_process
from diffrep.train.batches import draw_batch

ARGS = ["train", "--preset", "smoke", "--steps", 4, "--ckpt-every", 2, "--precision", "fp32", "--no-progress",
        "--condition", "embedding:source=pixels"]


def test_the_embedding_condition_has_a_learned_null_and_checks_its_size():
    torch.manual_seed(0)
    module = EmbeddingCondition(6, 8)
    torch.nn.init.normal_(module.null)
    e = F.normalize(torch.randn(3, 6), dim=1)
    e[1] = 0
    out = module(e, 3)
    torch.testing.assert_close(out[1], module.null.detach())
    torch.testing.assert_close(out[0], module.mlp(e[:1])[0])
    torch.testing.assert_close(module(None, 2), module.null.expand(2, -1))
    with pytest.raises(DiffrepError, match="6-dimensional embeddings"):
        module(torch.randn(3, 5), 3)
    net = build_net("UNet-XS", 8, 1, 10, embedding_dim=6)
    assert net.num_classes == 0 and "label_embedding" not in net.capabilities


def test_cfg_pairs_an_embedding_with_the_zero_embedding():
    seen = []

    class Recorder:
        process = make_process("flow")

        def __call__(self, x, t, cond=None, taps=()):
            seen.append(cond)
            return Prediction(torch.zeros_like(x), torch.zeros_like(x), {})

    e = F.normalize(torch.randn(2, 6), dim=1)
    ClassifierFreeGuidance(Recorder(), 2.0)(torch.randn(2, 1, 8, 8), 0.5, e)
    torch.testing.assert_close(seen[0], torch.cat([e, torch.zeros_like(e)]))


def test_a_batch_carries_the_embeddings_of_its_images_zero_where_dropped():
    data = load_builtin("digits")
    embeddings = F.normalize(torch.randn(len(data), 5), dim=1)
    cfg = make_config({"data": "digits", "label_dropout": 0.3})
    indices = torch.arange(100, 164)
    labelled = draw_batch(data, indices, cfg, make_process("flow"), 7)
    embedded = draw_batch(data, indices, cfg, make_process("flow"), 7, embeddings=embeddings)
    dropped = labelled.cond < 0                         # the same draws drop the same rows
    assert 5 < int(dropped.sum()) < 40
    assert (embedded.cond[dropped] == 0).all()
    torch.testing.assert_close(embedded.cond[~dropped], embeddings[indices][~dropped])
    torch.testing.assert_close(embedded.x0, labelled.x0)


def test_an_embedding_run_trains_resumes_and_samples_from_and_like_images(tmp_path, cli):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert cli(*ARGS, "--out", run)[0] == 0
    info = json.loads((run / "model.json").read_text())
    assert info["condition"] == {"name": "embedding", "source": "pixels", "dim": 64} and info["num_classes"] == 0
    stored = load_file(str(run / "embeddings.safetensors"))["embeddings"]
    data = load_builtin("digits")
    expected = F.normalize(extract_features(get_encoder("pixels"), data.images, progress=False).features.float(), dim=1)
    torch.testing.assert_close(stored, expected)
    assert cli(*ARGS, "--steps", 2, "--out", tmp_path / "half")[0] == 0
    assert cli(*ARGS, "--out", tmp_path / "half", "--resume")[0] == 0
    a, b = weights(run), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, out, _ = cli("sample", run, "--n", 20, "--steps", 2, "--cfg", 2, "--out", tmp_path / "s.npz", "--no-progress")
    assert code == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_1"].tolist() == [i % 10 for i in range(20)], "the source images' classes, balanced"
    np.savez(tmp_path / "like.npz", arr_0=data.images[:3].permute(0, 2, 3, 1).numpy(), arr_1=np.array([7, 8, 9]))
    code, _, err = cli("sample", run, "--n", 6, "--steps", 2, "--like", tmp_path / "like.npz", "--out",
                       tmp_path / "v.npz", "--no-progress")
    assert code == 0, err
    with np.load(tmp_path / "v.npz") as f:
        assert f["arr_1"].tolist() == [7, 8, 9, 7, 8, 9]


def test_bad_embedding_input_is_one_line(tmp_path, cli):
    run = tmp_path / "run"
    assert cli(*ARGS, "--steps", 2, "--out", run)[0] == 0
    code, _, err = cli("sample", run, "--guidance", "classifier:path=x.safetensors", "--out", tmp_path / "a.npz")
    assert code == 2 and "conditioned on embeddings, not classes" in err
    code, _, err = cli("sample", run, "--labels", "3", "--out", tmp_path / "b.npz")
    assert code == 2 and "balanced or random training images" in err
    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    code, _, err = cli("sample", run, "--like", tmp_path / "rgb.npz", "--out", tmp_path / "c.npz")
    assert code == 2 and "--like images are (3, 8, 8)" in err
    labelled = tmp_path / "labelled"
    assert cli("train", "--preset", "smoke", "--steps", 2, "--no-progress", "--out", labelled)[0] == 0
    code, _, err = cli("sample", labelled, "--like", tmp_path / "rgb.npz", "--out", tmp_path / "d.npz")
    assert code == 2 and "is conditioned on labels" in err
    code, _, err = cli(*ARGS, "--unconditional", "--out", tmp_path / "e")
    assert code == 2 and "drop --unconditional" in err
    with pytest.raises(DiffrepError, match="--condition"):
        make_config({"condition": "embedding:k=4"})
