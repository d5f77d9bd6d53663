"""Self-labels: k-means cluster ids of features as class labels (self-guided diffusion)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import weights

from diffrep.errors import DiffrepError
from diffrep.represent.clusters import agreement, cluster, parse_condition

ARGS = ["train", "--preset", "smoke", "--steps", 4, "--ckpt-every", 2, "--precision", "fp32", "--no-progress"]


def test_the_condition_spelling():
    assert parse_condition("labels") is None
    assert parse_condition("clusters:k=20") == {"kind": "clusters", "k": 20, "source": "pixels"}
    assert parse_condition("clusters:k=5,source=run:runs/u,t=0.2") == {"kind": "clusters", "k": 5, "source": "run:runs/u",
                                                                       "t": 0.2}
    assert parse_condition("embedding:source=reference") == {"kind": "embedding", "source": "reference"}
    for bad in ("clusters", "clusters:k=1", "clusters:k=x", "kmeans:k=3", "clusters:k=3,n=2", "embedding:k=3"):
        with pytest.raises(DiffrepError, match="--condition"):
            parse_condition(bad)


def test_kmeans_recovers_planted_clusters_and_agreement_scores_them():
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(300) % 3
    centres = torch.eye(3, 16) * 10
    features = centres[truth] + 0.3 * torch.randn(300, 16, generator=g)
    ids = cluster(features, 3, seed=0)
    assert agreement(ids, truth) == {"nmi": 1.0, "ari": 1.0}
    shuffled = truth[torch.randperm(300, generator=g)]
    assert agreement(shuffled, truth)["nmi"] < 0.05 and abs(agreement(shuffled, truth)["ari"]) < 0.05
    assert agreement(ids, None) == {}


def test_a_self_labelled_run_trains_on_cluster_ids_and_resumes_bit_for_bit(tmp_path, cli):
    args = ARGS + ["--condition", "clusters:k=5,source=pixels"]
    code, _, err = cli(*args, "--out", tmp_path / "full")
    assert code == 0, err
    info = json.loads((tmp_path / "full" / "model.json").read_text())
    stored = json.loads((tmp_path / "full" / "self_labels.json").read_text())
    assert info["num_classes"] == 5 and info["condition"]["name"] == "clusters" and 0.2 < info["condition"]["nmi"] < 1
    assert len(stored["labels"]) == 1438 and set(stored["labels"]) == set(range(5))
    assert weights(tmp_path / "full")["ema.y_embedder.table.weight"].shape[0] == 6
    assert cli(*args, "--steps", 2, "--out", tmp_path / "half")[0] == 0
    assert cli(*args, "--out", tmp_path / "half", "--resume")[0] == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, out, err = cli("sample", tmp_path / "full", "--n", 10, "--steps", 2, "--cfg", 2, "--out", tmp_path / "s.npz",
                         "--no-progress")
    assert code == 0, err


def test_bad_self_label_input_is_one_line(tmp_path, cli):
    code, _, err = cli(*ARGS, "--condition", "clusters:k=5", "--unconditional", "--out", tmp_path / "a")
    assert code == 2 and "drop --unconditional" in err
    missing = "clusters:k=5,source=run:" + str(tmp_path / "none")
    code, _, err = cli(*ARGS, "--condition", missing, "--out", tmp_path / "b")
    assert code == 2 and "none" in err
    assert cli(*ARGS, "--condition", "clusters:k=5", "--steps", 2, "--out", tmp_path / "c")[0] == 0
    saved = tmp_path / "c" / "self_labels.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "labels": [0, 1]}))
    code, _, err = cli(*ARGS, "--condition", "clusters:k=5", "--out", tmp_path / "c", "--resume")
    assert code == 2 and "holds 2 labels for 1438 images" in err
