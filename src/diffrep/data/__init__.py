"""Data: image sets that need no network (the embedded ones, a folder, an ``.npz``) and the spaces nets work in."""

from diffrep.data.images import (BUILTIN, IMAGE_SUFFIXES, SPLIT_SEED, ImageSet, balanced_subset, class_balanced_split,
                                 images_from_array, labelled_split, load_builtin, load_dataset, load_folder, load_npz, make_grid, read_npz,
                                 save_grid, to_model_range, to_uint8)
from diffrep.data.spaces import PixelSpace, Space, check_space_spec, open_space, space_from_record

__all__ = ["BUILTIN", "IMAGE_SUFFIXES", "ImageSet", "SPLIT_SEED", "balanced_subset", "class_balanced_split",
           "images_from_array", "labelled_split", "load_builtin", "load_dataset", "load_folder", "load_npz", "make_grid",
           "read_npz", "save_grid", "to_model_range", "to_uint8", "PixelSpace", "Space",
           "check_space_spec", "open_space", "space_from_record"]
