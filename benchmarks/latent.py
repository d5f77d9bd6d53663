"""Latent diffusion on the embedded MNIST-5k: the VAE's reconstruction floor, the latent cache's speed, and a latent
DiT against the pixel DiT at equal wall-clock (issue 21's numbers).

    python benchmarks/latent.py vae --steps 2000                 # → results/latent-vae.json
    python benchmarks/latent.py cache                            # → results/latent-cache-trained.json
    python benchmarks/latent.py cache --vae sd-architecture --steps 5   # → results/latent-cache-sd-architecture.json
    python benchmarks/latent.py race --arm pixel=500,1000,1500 --arm latent=1000,2000,4000 \
        --arm latent-repa=1000,2000,4000                         # → results/latent-race.json

``race`` trains each arm in segments (``diffrep train --resume`` with a larger ``--steps``) from the ``dit-tiny`` recipe
(lr 2e-3, batch 128, flow matching, ``--compile``: one compilation per segment, counted, three segments an arm):
``pixel`` is DiT-T/4 on 32×32 pixels (64 tokens), ``latent`` DiT-T/2 on the VAE's 4×8×8 latents (16 tokens),
``latent-repa`` the latter with REPA aligned to the reference encoder's tokens of the pixels (the REPA paper's
setting).  After each milestone 1,000 class-balanced samples (Euler, 50 steps, no CFG) are
judged by the reference encoder; minutes are training wall-clock (the latent cache's one-off build is outside them:
``cache`` measures it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import machine, table, write_result
from quality import judge_run

from diffrep.config import make_config, preset
from diffrep.data import load_builtin, open_space
from diffrep.latent.autoencoder import save_vae_folder
from diffrep.latent.train_vae import VaeConfig, VaeTrainer, reconstruction_floor
from diffrep.train import Trainer

OUT = Path("runs/bench")
VAE = OUT / "latent-vae"
ARMS = {
    "pixel": {"model": "DiT-T/4"},
    "latent": {"model": "DiT-T/2", "space": f"vae:{VAE}"},
    "latent-repa": {"model": "DiT-T/2", "space": f"vae:{VAE}", "plugins": ["repa:depth=2"]},
}


def command() -> str:
    """This call's command line, as the docs quote it."""
    return "python benchmarks/latent.py " + " ".join(sys.argv[1:])


def bench_vae(a) -> None:
    cfg = VaeConfig(steps=a.steps, preset=a.preset, latent=a.latent)
    shutil.rmtree(VAE, ignore_errors=True)
    trainer = VaeTrainer(cfg, VAE, progress=False)
    start = time.perf_counter()
    trainer.run()
    minutes = (time.perf_counter() - start) / 60
    floor = reconstruction_floor(VAE, "mnist5k")
    row = {"preset": a.preset, "latent": a.latent, "steps": a.steps, "train_minutes": round(minutes, 2),
           "parameters": sum(p.numel() for p in trainer.vae.parameters()), "precision": trainer.precision.name, **floor}
    print(table([row], ["preset", "latent", "parameters", "steps", "train_minutes", "mse", "accuracy", "fd_ref",
                        "fd_ref_train_vs_test"]))
    print(f"→ {write_result('latent-vae', {'result': row, 'config': vars(cfg), 'command': command()})}")


def step_seconds(options: dict, out: Path, steps: int) -> float:
    """Seconds per training step, timed over ``steps`` steps after 3 warm-up steps."""
    shutil.rmtree(out, ignore_errors=True)
    trainer = Trainer(make_config(options, {"steps": 3}), out, progress=False)
    trainer.run()
    start = time.perf_counter()
    for k in range(3, 3 + steps):
        trainer.train_step(k)
    return (time.perf_counter() - start) / steps


def sd_architecture_vae() -> Path:
    """SD-VAE's architecture (diffusers' config of ``sd-vae-ft-ema``: widths 128–512, 2 layers per block, attention in
    the middle block) at one channel, with random weights (speed does not depend on them), saved as a folder."""
    from diffusers import AutoencoderKL

    folder = OUT / "latent-vae-sd-architecture"
    torch.manual_seed(0)
    save_vae_folder(AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4,
                                  block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4,
                                  sample_size=32), folder)
    return folder


def bench_cache(a) -> None:
    import os

    images = load_builtin("mnist5k").images
    vae = VAE if a.vae == "trained" else sd_architecture_vae()
    root = OUT / "latent-cache"
    shutil.rmtree(root, ignore_errors=True)
    os.environ["DIFFREP_CACHE"] = str(root)
    start = time.perf_counter()
    open_space(f"vae:{vae}", tuple(images.shape[1:])).prepare(images, hflip=True, progress=False)
    build = time.perf_counter() - start
    base = {**preset("dit-tiny"), "model": "DiT-T/2", "space": f"vae:{vae}", "grid_every": 0, "hflip": True}
    cached = step_seconds(base, root / "cached", a.steps)
    live = step_seconds({**base, "latent_cache": False}, root / "live", a.steps)
    row = {"vae": a.vae, "images": len(images), "hflip": True, "cache_build_s": round(build, 2),
           "encode_images_per_s": round(2 * len(images) / build, 1), "step_s_cached": round(cached, 4),
           "step_s_on_the_fly": round(live, 4), "speedup": round(live / cached, 2), "batch_size": base["batch_size"]}
    print(table([row], list(row)))
    print(f"→ {write_result(f'latent-cache-{a.vae}', {'result': row, 'command': command()})}")


def bench_race(a) -> None:
    rows, plan = [], dict(spec.split("=") for spec in a.arm)
    for arm, steps_list in plan.items():
        milestones = [int(s) for s in steps_list.split(",")]
        run = OUT / f"latent-race-{arm}"
        shutil.rmtree(run, ignore_errors=True)
        seconds = 0.0
        for i, steps in enumerate(milestones):
            cfg = make_config(preset("dit-tiny"), ARMS[arm], {"steps": steps, "grid_every": 0, "compile": True})
            trainer = Trainer(cfg, run, resume=i > 0, progress=False)   # the latent cache is read (built) here
            start = time.perf_counter()
            trainer.run()
            seconds += time.perf_counter() - start
            row = {"arm": arm, "model": cfg.model, "step": steps, "train_minutes": round(seconds / 60, 2),
                   **judge_run(run, a.n)}
            rows.append(row)
            print(f"{arm} step {steps}: {seconds / 60:.1f} min, accuracy {row['accuracy']:.4f}, FD_ref "
                  f"{row['fd_ref']:.3f}", file=sys.stderr)
    print(table(rows, ["arm", "model", "step", "train_minutes", "accuracy", "fd_ref", "fd_ratio", "sample_seconds"]))
    payload = {"rows": rows, "summary": race_summary(rows), "arms": {k: ARMS[k] for k in plan},
               "recipe": "dit-tiny + compile", "n_samples": a.n, "command": command()}
    print(table(payload["summary"], list(payload["summary"][0])))
    print(f"→ {write_result('latent-race', payload)}")
    plot_race()


def race_summary(rows: list[dict]) -> list[dict]:
    """Per arm: its final numbers, and the training minutes at which it first reached the pixel arm's final FD_ref
    (``None``: not within its milestones), against half the pixel arm's time."""
    pixel = [r for r in rows if r["arm"] == "pixel"]
    target = pixel[-1] if pixel else None
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        reached = next((r["train_minutes"] for r in mine if target and r["fd_ref"] <= target["fd_ref"]), None)
        out.append({"arm": arm, "final_step": mine[-1]["step"], "final_minutes": mine[-1]["train_minutes"],
                    "final_fd_ref": mine[-1]["fd_ref"], "final_accuracy": mine[-1]["accuracy"],
                    "minutes_to_pixel_final": reached,
                    "within_half_pixel_time": None if reached is None else reached <= target["train_minutes"] / 2})
    return out


def summarize_race(a=None) -> None:
    import json

    from _common import RESULTS

    result = json.loads((RESULTS / "latent-race.json").read_text())
    result["summary"] = race_summary(result["rows"])
    print(table(result["summary"], list(result["summary"][0])))
    write_result("latent-race", result)     # its own "machine" entry overrides the fresh one
    plot_race()


def plot_race() -> None:
    """``results/latent-race.png``: FD_ref against training minutes per arm, with the VAE's reconstruction floor."""
    import json

    from _common import RESULTS, figure

    rows = json.loads((RESULTS / "latent-race.json").read_text())["rows"]
    floor_file = RESULTS / "latent-vae.json"
    with figure(RESULTS / "latent-race.png") as ax:
        for arm in dict.fromkeys(r["arm"] for r in rows):
            mine = [r for r in rows if r["arm"] == arm]
            ax.plot([r["train_minutes"] for r in mine], [r["fd_ref"] for r in mine], "o-", label=arm)
        if floor_file.exists():
            floor = json.loads(floor_file.read_text())["result"]["fd_ref"]
            ax.axhline(floor, color="grey", linestyle="--", label="VAE reconstructions (floor)")
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("FD_ref (lower is better)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    v = sub.add_parser("vae")
    v.add_argument("--steps", type=int, default=2000)
    v.add_argument("--preset", default="VAE-T")
    v.add_argument("--latent", default="4x8x8")
    c = sub.add_parser("cache")
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--vae", choices=("trained", "sd-architecture"), default="trained",
                   help="the VAE of `vae`, or SD-VAE's architecture with random weights")
    r = sub.add_parser("race")
    r.add_argument("--arm", action="append", required=True, metavar="ARM=STEPS,…",
                   help=f"an arm ({', '.join(ARMS)}) and its milestones (repeatable)")
    r.add_argument("--n", type=int, default=1000)
    sub.add_parser("summary", help="recompute the race's summary and plot from results/latent-race.json")
    a = p.parse_args()
    torch.manual_seed(0)
    print(machine()["cpu_model"], file=sys.stderr)
    {"vae": bench_vae, "cache": bench_cache, "race": bench_race, "summary": summarize_race}[a.part](a)


if __name__ == "__main__":
    main()
