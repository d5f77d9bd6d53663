"""The training configuration: options with their metadata, config files and sections, presets."""

from diffrep.config.files import (config_diff, flatten_sections, load_run_config, make_config, read_yaml_config,
                                  save_config, sectioned)
from diffrep.config.options import (ADAMW_IMPLS, FIELD_NAMES, FIELD_SECTIONS, FIELD_TYPES, RESUMABLE_FIELDS, SECTIONS,
                                    TrainConfig)
from diffrep.config.presets import PRESETS, preset

__all__ = ["ADAMW_IMPLS", "FIELD_NAMES", "FIELD_SECTIONS", "FIELD_TYPES", "PRESETS", "RESUMABLE_FIELDS", "SECTIONS",
           "TrainConfig", "config_diff", "flatten_sections", "load_run_config", "make_config", "preset",
           "read_yaml_config", "save_config", "sectioned"]
