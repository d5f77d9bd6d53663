"""Feature extraction speed per encoder on this machine: images/s in fp32 and bf16, and peak memory.

Each (encoder, dtype) runs in a fresh process so its peak resident memory is its own.
Architectures are the real ones (FID Inception-v3, DINOv2 ViT-S/B/L-14, CLIP ViT-L/14) with random weights
saved in the official layout and loaded through the user's path (``--encoder-weights``): speed
does not depend on the weight values, and no network is needed.  Inputs are mnist5k digits
(32×32 grey), resized by each encoder's default mode (part of the timed work).

    python benchmarks/extract.py [--n 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import table, write_result

ENCODERS = ("reference", "pixels", "inception", "dinov2-s14", "dinov2-b14", "dinov2-l14", "clip")


def save_random_weights(name: str, folder: Path) -> str | None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    if name == "inception":
        from diffrep.evaluation.encoders.inception import FIDInceptionV3

        net = FIDInceptionV3()
    elif name.startswith("dinov2"):
        from diffrep.evaluation.encoders.dinov2 import DINOV2_CONFIGS, DinoV2ViT

        net = DinoV2ViT(**{k: DINOV2_CONFIGS[name][k] for k in ("embed_dim", "depth", "num_heads")})
    elif name.startswith("clip"):
        from diffrep.evaluation.encoders.clip import VIT_L14, ClipViT

        net = ClipViT(**VIT_L14, quick_gelu=name == "clip-openai")
    else:
        return None
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def child(name: str, weights: str | None, dtype: str, n: int, batch_size: int) -> dict:
    """Runs in its own process: load, warm up on one batch, time ``n`` images."""
    from diffrep.data import load_builtin
    from diffrep.evaluation.encoders import get_encoder
    from diffrep.evaluation.features import extract_features

    encoder = get_encoder(name, weights)
    images = load_builtin("mnist5k", "test").images[:n]
    extract_features(encoder, images[:batch_size], batch_size=batch_size, dtype=dtype, progress=False)
    start = time.perf_counter()
    out = extract_features(encoder, images, batch_size=batch_size, dtype=dtype, progress=False)
    seconds = time.perf_counter() - start
    return {"encoder": name, "dtype": dtype, "n": n, "dim": out.features.shape[1], "images_per_s": n / seconds,
            "input": f"{encoder.spec.input_size or 'native'} ({encoder.spec.resize})",
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="images per measurement")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--child", nargs=4, metavar=("NAME", "WEIGHTS", "DTYPE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, weights, dtype, n = args.child
        print(json.dumps(child(name, None if weights == "-" else weights, dtype, int(n), args.batch_size)))
        return
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ENCODERS:
            weights = save_random_weights(name, Path(tmp))
            n = args.n * 8 if name in ("reference", "pixels") else args.n
            for dtype in ("fp32", "bf16"):
                done = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", name,
                                       weights or "-", dtype, str(n)], capture_output=True, text=True)
                if done.returncode:
                    skipped[name] = done.stderr.strip().splitlines()[-1]
                    break
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1])
    print(table(rows, ["encoder", "dtype", "input", "dim", "n", "images_per_s", "peak_rss_mib"]))
    for name, why in skipped.items():
        print(f"{name}: not measured — {why}")
    path = write_result("extract", {"rows": rows, "skipped": skipped, "batch_size": args.batch_size,
                                    "command": f"python benchmarks/extract.py --n {args.n}"})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
