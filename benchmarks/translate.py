"""Translation by inversion (CycleDiffusion's DPM-Encoder): class agreement, FD_ref, structure kept, round trip.

Each arm encodes 100 class-balanced test digits with a source run and decodes them with a target run:
one class-conditional run into the next class at three start levels, across runs of other processes and
architectures, and across data: scikit-learn's 8×8 digits upscaled to 32×32 (``d32``) into MNIST (``qs``).

    python benchmarks/translate.py --write-digits32 runs/data        # digits32-train.npz, digits32-test.npz
    diffrep train --preset quickstart --data runs/data/digits32-train.npz --out runs/digits32
    python benchmarks/translate.py --run qs=runs/qs --run vp=runs/qs-vp --run dit=runs/dit-tiny \
        --run d32=runs/digits32 --digits32 runs/data/digits32-test.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, write_result  # noqa: E402

from diffrep.inverse.translate import translate_run  # noqa: E402

MNIST = "mnist5k:test"
ARMS = [  # (source, target, source labels, target labels, start level, input data)
    ("qs", "qs", "true", "shift:1", 5.0, MNIST),
    ("qs", "qs", "true", "shift:1", 20.0, MNIST),
    ("qs", "qs", "true", "shift:1", 80.0, MNIST),
    ("qs", "vp", "true", "shift:1", 20.0, MNIST),
    ("qs", "dit", "true", "shift:1", 20.0, MNIST),
    ("qs", "vp", "true", "true", 80.0, MNIST),
    ("d32", "qs", "true", "true", 20.0, "digits32"),
    ("d32", "qs", "true", "none", 5.0, "digits32"),
    ("d32", "qs", "true", "none", 20.0, "digits32"),
]


def write_digits32(folder: Path) -> None:
    """scikit-learn's digits, bicubic-upscaled from 8×8 to MNIST's 32×32, as ``.npz`` train and test splits."""
    import numpy as np
    import torch.nn.functional as F

    from diffrep.data import load_builtin

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        d = load_builtin("digits", split)
        big = F.interpolate(d.images.float(), size=(32, 32), mode="bicubic", align_corners=False)
        images = big.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.savez(folder / f"digits32-{split}.npz", arr_0=images, arr_1=d.labels.numpy())
        print(f"{folder / f'digits32-{split}.npz'}: {len(images)} images")


def untranslated_fd(data: str, n: int) -> float:
    """FD_ref of the inputs themselves against MNIST's test split: what a translation into MNIST starts from."""
    from diffrep.inverse.run import fd_ref_to_test, load_inputs, reference_judge

    inputs, _ = load_inputs(data, n)
    return fd_ref_to_test(reference_judge("mnist5k")(inputs.images)[0], "mnist5k")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR (repeatable)")
    p.add_argument("--digits32", help="the digits32 test .npz (the d32 arms' inputs)")
    p.add_argument("--write-digits32", type=Path, metavar="DIR", help="write the upscaled digits' splits and stop")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--name", default="translate")
    a = p.parse_args()
    if a.write_digits32:
        return write_digits32(a.write_digits32)
    runs = dict(spec.split("=", 1) for spec in a.run)
    rows, baselines = [], {}
    for source, target, src_labels, tgt_labels, s_start, data in ARMS:
        if source not in runs or target not in runs or (data == "digits32" and not a.digits32):
            continue
        data = a.digits32 if data == "digits32" else data
        grid = RESULTS / f"{a.name}-{source}-{target}-{tgt_labels.replace(':', '')}-{s_start:g}.png"
        m = translate_run(Path(runs[source]), Path(runs[target]), data=data, n=a.n, source_labels=src_labels,
                          target_labels=tgt_labels, s_start=s_start, progress=False, grid=grid if s_start == 20 else None,
                          overwrite=True)
        rows.append({"source": source, "target": target, "data": data, **m})
        print(f"{source}→{target} {src_labels}→{tgt_labels} s_start {s_start:5.1f}: target class "
              f"{100 * m.get('target_class_accuracy', float('nan')):5.1f}%  source class kept "
              f"{100 * m['source_class_kept']:5.1f}%  FD_ref {m['fd_ref']:6.2f}  SSIM to source {m['ssim_to_source']:.3f}  "
              f"round trip PSNR {m['reconstruction_psnr']:.1f} dB", flush=True)
        if data not in baselines:
            baselines[data] = untranslated_fd(data, a.n)
            print(f"  FD_ref of the untranslated inputs to MNIST's test split: {baselines[data]:.2f}", flush=True)
    write_result(a.name, {"command": "python benchmarks/translate.py " + " ".join(sys.argv[1:]),
                          "torch": torch.__version__, "untranslated_fd_ref": baselines, "rows": rows})


if __name__ == "__main__":
    main()
