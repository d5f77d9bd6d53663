"""Datasets: fixed built-in splits, folders, .npz files and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import write_images
from diffrep.data import balanced_subset, load_builtin, load_dataset, load_folder, load_npz, to_model_range, to_uint8
from diffrep.errors import DiffrepError


def test_mnist5k_split_is_fixed_balanced_and_disjoint():
    train, test = load_builtin("mnist5k", "train"), load_builtin("mnist5k", "test")
    assert train.images.shape == (4000, 1, 32, 32) and test.images.shape == (1000, 1, 32, 32)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert train.images.dtype == torch.uint8
    assert (train.images[..., :2, :] == 0).all(), "28×28 digits are zero-padded to 32×32"
    flat_train = {bytes(x) for x in train.images.numpy()}
    assert not any(bytes(x) in flat_train for x in test.images.numpy()), "train and test share an image"
    again = load_builtin("mnist5k", "test")
    assert torch.equal(again.images, test.images)


def test_digits_split():
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255


def test_model_range_roundtrip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = to_model_range(x)
    assert y.min() == -1 and y.max() == 1
    assert torch.equal(to_uint8(y), x)


def test_balanced_subset():
    labels = torch.arange(100) % 10
    idx = balanced_subset(labels, 25)
    assert len(idx) == 25 and sorted(torch.bincount(labels[idx]).tolist()) == [2] * 5 + [3] * 5
    with pytest.raises(DiffrepError, match="class-balanced"):
        balanced_subset(labels, 200)


def test_folder_with_class_subfolders(tmp_path):
    write_images(tmp_path / "cat", 3)
    write_images(tmp_path / "dog", 2, seed=1)
    data = load_folder(tmp_path)
    assert data.images.shape == (5, 1, 8, 8) and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1]


def test_flat_folder_is_unconditional_rgb(tmp_path):
    write_images(tmp_path, 4, mode="RGB")
    data = load_folder(tmp_path)
    assert data.images.shape == (4, 3, 8, 8) and data.labels is None and data.num_classes == 0


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)      # 0 … 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    data = load_folder(tmp_path)
    assert data.images.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(data.images[0, 0].numpy(), np.rint(ramp / 257.0).astype(np.uint8))


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        data = load_folder(tmp_path)
    assert len(data) == 3


def test_mixed_sizes_need_image_size(tmp_path):
    write_images(tmp_path, 2, size=(8, 8))
    from PIL import Image

    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DiffrepError, match="--image-size"):
        load_folder(tmp_path)
    data = load_folder(tmp_path, image_size=6)
    assert data.images.shape == (3, 1, 6, 6)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DiffrepError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffrepError, match="holds no images"):
        load_dataset(str(tmp_path / "empty"))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DiffrepError, match="mnist5k, digits"):
        load_dataset("cifar10")


def test_npz_adm_layout(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.arange(6) % 3)
    data = load_npz(tmp_path / "s.npz")
    assert data.images.shape == (6, 3, 8, 8) and data.num_classes == 3
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(DiffrepError, match="arr_0"):
        load_npz(tmp_path / "bad.npz")


def test_images_beside_class_folders_are_reported(tmp_path):
    write_images(tmp_path / "cat", 2)
    write_images(tmp_path, 3, seed=1)
    with pytest.warns(UserWarning, match="ignored 3 image"):
        data = load_folder(tmp_path)
    assert len(data) == 2 and data.num_classes == 1


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_file(tmp_path):
    import os

    from diffrep.io import UMASK, atomic_write

    with atomic_write(tmp_path / "out.json", "w") as f:
        f.write("{}")
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~UMASK != 0o600
    assert os.listdir(tmp_path) == ["out.json"]
