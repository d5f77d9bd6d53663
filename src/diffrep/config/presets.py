"""Named starting points for ``diffrep train --preset`` (``diffrep presets`` lists them)."""

from __future__ import annotations

from diffrep.errors import DiffrepError

PRESETS: dict[str, tuple[str, dict]] = {
    "quickstart": (
        "UNet-S (1.1M params), flow matching, class-conditional mnist5k; the README's main job (7.5–10 min on 2 CPU cores)",
        {"model": "UNet-S", "process": "flow", "steps": 800, "batch_size": 128, "lr": 2e-3, "warmup": 100,
         "ema_decay": 0.999, "ckpt_every": 250, "grid_every": 500},
    ),
    "dit-tiny": (
        "DiT-T/4 (4.2M params), flow matching, class-conditional mnist5k; the DiT baseline for plug-ins "
        "(28 min with --compile)",
        {"model": "DiT-T/4", "process": "flow", "steps": 5200, "batch_size": 128, "lr": 2e-3, "warmup": 200,
         "ema_decay": 0.9995, "ckpt_every": 500, "grid_every": 500},
    ),
    "dit-s4": (
        "DiT-S/4 (32M params, DiT's S size), flow matching, mnist5k; for throughput, too slow to train well on a CPU",
        {"model": "DiT-S/4", "process": "flow", "steps": 20000, "batch_size": 128, "lr": 1e-4, "warmup": 0,
         "ema_decay": 0.9999},
    ),
    "smoke": (
        "UNet-S for 20 steps on sklearn's 8×8 digits: checks an installation in seconds",
        {"data": "digits", "model": "UNet-S", "steps": 20, "batch_size": 16, "ckpt_every": 10, "grid_every": 0,
         "log_every": 5},
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise DiffrepError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (see `diffrep presets`)")
    return dict(PRESETS[name][1])
