"""Translation by inversion (CycleDiffusion's DPM-Encoder): class agreement, FD_ref, structure kept, round trip.

Each arm encodes 100 class-balanced test digits with a source run and decodes them with a target run:
one class-conditional run into the next class at three start levels, and across runs of other
processes and architectures.

    python benchmarks/translate.py --run qs=runs/qs --run vp=runs/qs-vp --run dit=runs/dit-tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, write_result  # noqa: E402

from diffrep.inverse.translate import translate_run  # noqa: E402

ARMS = [  # (source, target, source labels, target labels, start level)
    ("qs", "qs", "true", "shift:1", 5.0),
    ("qs", "qs", "true", "shift:1", 20.0),
    ("qs", "qs", "true", "shift:1", 80.0),
    ("qs", "vp", "true", "shift:1", 20.0),
    ("qs", "dit", "true", "shift:1", 20.0),
    ("qs", "vp", "true", "true", 80.0),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeatable)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--name", default="translate")
    a = p.parse_args()
    runs = dict(spec.split("=", 1) for spec in a.run)
    rows = []
    for source, target, src_labels, tgt_labels, s_start in ARMS:
        if source not in runs or target not in runs:
            continue
        grid = RESULTS / f"{a.name}-{source}-{target}-{tgt_labels.replace(':', '')}-{s_start:g}.png"
        m = translate_run(Path(runs[source]), Path(runs[target]), n=a.n, source_labels=src_labels,
                          target_labels=tgt_labels, s_start=s_start, progress=False, grid=grid if s_start == 20 else None,
                          overwrite=True)
        rows.append({"source": source, "target": target, **m})
        print(f"{source}→{target} {src_labels}→{tgt_labels} s_start {s_start:5.1f}: target class "
              f"{100 * m.get('target_class_accuracy', float('nan')):5.1f}%  source class kept "
              f"{100 * m['source_class_kept']:5.1f}%  FD_ref {m['fd_ref']:6.2f}  SSIM to source {m['ssim_to_source']:.3f}  "
              f"round trip PSNR {m['reconstruction_psnr']:.1f} dB", flush=True)
    write_result(a.name, {"command": "python benchmarks/translate.py " + " ".join(sys.argv[1:]),
                          "torch": torch.__version__, "rows": rows})

if __name__ == "__main__":
    main()
