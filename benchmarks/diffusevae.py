"""DiffuseVAE (arXiv 2201.00308, form 1) against the plain diffusion model at equal training and equal NFE, on the
embedded MNIST-5k (issue 21's curve).

    python benchmarks/diffusevae.py --kl-weight 2.0 --vae-steps 2000 --steps 800   # → results/diffusevae.json, .png
    python benchmarks/diffusevae.py --sweep-kl 0.05 0.5 2.0 --vae-steps 1000        # → results/diffusevae-kl.json

Stages, each skipped when its run is already there (pass ``--fresh`` to start over):

1. a generative VAE (``VAE-T``, latent ``--latent``, KL weight ``--kl-weight`` against the summed squared error:
   a Gaussian decoder of std ``sqrt(w/2)``), judged on its reconstructions (the floor) and on its own samples
   ``decode(z), z ~ N(0, I)`` (what DiffuseVAE refines);
2. two unconditional flow-matching U-Nets from the quickstart recipe (UNet-S, 800 steps, batch 128, lr 2e-3, EMA
   0.999), ``plain`` and ``diffusevae`` (the same net with the VAE's reconstruction as a second input channel);
3. 1,000 samples per arm at each NFE (Euler), judged by the reference encoder (FD_ref; accuracy is undefined for
   unconditional samples, so the judge's confidence, the mean top-class probability, stands beside it).

The ablation row ``diffusevae | recon. of test images`` conditions the same net on reconstructions of real test images
instead of VAE samples: the gap to the main row is what the VAE's prior costs (its samples are off the data).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import figure, table, write_result

from diffrep.config import make_config, preset
from diffrep.data import ImageSet, load_builtin, to_uint8
from diffrep.generate import generate
from diffrep.latent.diffusevae import open_reconstructions
from diffrep.latent.train_vae import VaeConfig, VaeTrainer, reconstruction_floor
from diffrep.reference import encode, judge, load_reference
from diffrep.runs import load_run
from diffrep.train import Trainer

OUT = Path("runs/bench")
VAE = OUT / "diffusevae-vae"
ARMS = {"plain": OUT / "diffusevae-plain", "diffusevae": OUT / "diffusevae-net"}


def command() -> str:
    return "python benchmarks/diffusevae.py " + " ".join(sys.argv[1:])


def judged(images: torch.Tensor) -> dict:
    """FD_ref of ``uint8`` samples and the reference classifier's mean top-class probability (its confidence)."""
    verdict = judge(ImageSet(images, None, 0, "samples")).as_dict()
    _, logits = encode(load_reference("mnist5k"), images)
    confidence = float(logits.softmax(1).amax(1).mean())
    return {"fd_ref": round(verdict["fd_ref"], 4), "fd_ratio": round(verdict["fd_ratio"], 2),
            "confidence": round(confidence, 4)}


def train_vae(a) -> dict:
    """Train the VAE once (``bench.json`` in its run marks it done) and judge its samples."""
    done = VAE / "bench.json"
    if not done.exists():
        shutil.rmtree(VAE, ignore_errors=True)
        start = time.perf_counter()
        VaeTrainer(VaeConfig(steps=a.vae_steps, latent=a.latent, kl_weight=a.kl_weight), VAE, progress=False).run()
        minutes = round((time.perf_counter() - start) / 60, 2)
        floor = reconstruction_floor(VAE, "mnist5k")
        done.write_text(json.dumps({"train_minutes": minutes, **{k: floor[k] for k in ("accuracy", "fd_ref", "mse")}}))
    record = json.loads(done.read_text())
    vae = open_reconstructions(str(VAE), (1, 32, 32))
    prior = to_uint8(vae.sample(a.n, torch.Generator().manual_seed(0)))
    return {"steps": a.vae_steps, "latent": a.latent, "kl_weight": a.kl_weight,
            "train_minutes": record.pop("train_minutes"), "reconstruction": record, "samples": judged(prior)}


def train_arms(a) -> dict:
    minutes = {}
    for arm, run in ARMS.items():
        options = {"diffusevae": str(VAE)} if arm == "diffusevae" else {}
        cfg = make_config(preset("quickstart"), {"class_conditional": False, "steps": a.steps, "grid_every": 0},
                          options)
        start = time.perf_counter()
        Trainer(cfg, run, resume="auto", progress=False).run()
        minutes[arm] = round((time.perf_counter() - start) / 60, 2)
    return minutes


class TestReconstructions:
    """The ablation's condition: reconstructions of real test images, handed out chunk after chunk (``generate`` draws
    its chunks in order)."""

    def __init__(self, vae, n: int):
        self.images = vae.reconstruct(load_builtin("mnist5k", "test").images[:n])
        self.offset = 0

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        out = self.images[self.offset:self.offset + n]
        self.offset += n
        return out


def curve(a) -> list[dict]:
    rows = []
    for arm, run in ARMS.items():
        loaded = load_run(run, device="cpu")
        conditions = ["-"] if loaded.image_condition is None else ["VAE samples", "recon. of test images"]
        for nfe in a.nfe:
            for name in conditions:
                condition = loaded.image_condition
                if name == "recon. of test images":
                    condition = TestReconstructions(condition, a.n)
                start = time.perf_counter()
                chunks = generate(loaded.net, loaded.process, loaded.x0_shape, a.n, steps=nfe, seed=1, progress=False,
                                  image_condition=condition)
                seconds = time.perf_counter() - start
                images = torch.cat([chunks[j] for j in sorted(chunks)])
                row = {"arm": arm, "condition": name, "nfe": nfe,
                       **judged(images), "sample_seconds": round(seconds, 1)}
                rows.append(row)
                print(row, file=sys.stderr)
    return rows


def plot(rows: list[dict], vae_fd: float, png: Path) -> None:
    with figure(png) as ax:
        for (arm, condition), style in ((("plain", "-"), "o-"), (("diffusevae", "VAE samples"), "s-"),
                                        (("diffusevae", "recon. of test images"), "s--")):
            pts = [(r["nfe"], r["fd_ref"]) for r in rows if (r["arm"], r["condition"]) == (arm, condition)]
            ax.plot(*zip(*pts), style, label=arm if condition == "-" else f"{arm} ({condition})")
        ax.axhline(vae_fd, color="grey", linestyle=":", label="VAE samples alone")
        ax.set(xscale="log", yscale="log", xlabel="NFE (Euler)", ylabel="FD_ref (reference encoder)",
               title="DiffuseVAE vs plain flow matching, mnist5k")
        nfe = sorted({r["nfe"] for r in rows})
        ax.set_xticks(nfe, labels=[str(n) for n in nfe])
        ax.minorticks_off()
        ax.legend(fontsize=8)


def sweep_kl(a) -> None:
    """The VAE alone at several KL weights: its reconstruction floor and its samples (what DiffuseVAE refines)."""
    rows = []
    for weight in a.sweep_kl:
        out = OUT / f"diffusevae-kl-{weight:g}"
        shutil.rmtree(out, ignore_errors=True)
        VaeTrainer(VaeConfig(steps=a.vae_steps, latent=a.latent, kl_weight=weight), out, progress=False).run()
        floor = reconstruction_floor(out, "mnist5k")
        vae = open_reconstructions(str(out), (1, 32, 32))
        samples = judged(to_uint8(vae.sample(a.n, torch.Generator().manual_seed(0))))
        rows.append({"kl_weight": weight, "steps": a.vae_steps, "recon_accuracy": round(floor["accuracy"], 4),
                     "recon_fd_ref": round(floor["fd_ref"], 4), "mse": round(floor["mse"], 4),
                     "samples_fd_ref": samples["fd_ref"], "samples_confidence": samples["confidence"]})
        print(rows[-1], file=sys.stderr)
    print(table(rows, list(rows[0])))
    print(f"→ {write_result('diffusevae-kl', {'rows': rows, 'latent': a.latent, 'command': command()})}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kl-weight", type=float, default=0.05)
    p.add_argument("--latent", default="4x8x8")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--steps", type=int, default=800, help="training steps of each diffusion arm")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--fresh", action="store_true", help="delete the runs of an earlier call first")
    p.add_argument("--sweep-kl", type=float, nargs="+", help="only train VAEs of these KL weights and judge them")
    a = p.parse_args()
    if a.sweep_kl:
        return sweep_kl(a)
    if a.fresh:
        for run in (VAE, *ARMS.values()):
            shutil.rmtree(run, ignore_errors=True)
    vae = train_vae(a)
    minutes = train_arms(a)
    rows = curve(a)
    print(table([{"vae": "VAE-T", **vae["reconstruction"], **{f"samples_{k}": v for k, v in vae["samples"].items()}}],
                ["vae", "accuracy", "fd_ref", "mse", "samples_fd_ref", "samples_confidence"]))
    print(table(rows, ["arm", "condition", "nfe", "fd_ref", "fd_ratio", "confidence", "sample_seconds"]))
    result = {"vae": vae, "train_minutes": minutes, "rows": rows, "n_samples": a.n,
              "recipe": "quickstart, unconditional", "command": command()}
    plot(rows, vae["samples"]["fd_ref"], Path(__file__).parent / "results" / "diffusevae.png")
    print(f"→ {write_result('diffusevae', result)}")


if __name__ == "__main__":
    main()
