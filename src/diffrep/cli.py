"""The ``diffrep`` command line: thin wrappers that parse, validate and call the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from diffrep.errors import DiffrepError

if TYPE_CHECKING:
    from diffrep.precision import Precision


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (a count or a size)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number ≥ 0 (an interval where 0 means never)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


NET_PRECISION_HELP = "auto (default): bf16 autocast where the device computes bf16 natively, else fp32"
ENCODER_PRECISION_HELP = "auto (default): fp32, as the published numbers metric encoders are compared with; bf16 is faster"


def _startup(precision) -> None:
    """The start-up line: which precision was chosen, and why."""
    print(precision.describe(), file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    from diffrep.config import PRESETS
    from diffrep.encoders import ENCODERS
    from diffrep.encoders.resize import RESIZE_MODES
    from diffrep.classifier import SCHEDULES
    from diffrep.evaluate import DEFAULT_METRICS, METRICS
    from diffrep.nets import MODELS
    from diffrep.precision import PRECISIONS
    from diffrep.represent import POOLS
    from diffrep.processes import PROCESSES
    from diffrep.samplers import SAMPLERS

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="diffrep", formatter_class=fmt,
                                description="One diffusion model as generator and representation learner.",
                                epilog=_examples("diffrep quickstart", "diffrep train --preset quickstart --out runs/qs",
                                                 "diffrep sample runs/qs --n 1000 --out samples.npz", "diffrep judge samples.npz",
                                                 "diffrep eval samples.npz mnist5k:test --metrics fd,kid,prdc",
                                                 "diffrep probe runs/qs --backbones diffusion,pixels",
                                                 "diffrep classify runs/qs --schedule racing --limit 200"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a diffusion model", formatter_class=fmt,
                       description="Train a diffusion model. Options: defaults ← --preset ← --config YAML ← flags.",
                       epilog=_examples("diffrep train --data mnist5k --model UNet-S --process flow --steps 2000 --batch-size 128 --out runs/x",
                                        "diffrep train --preset dit-tiny --out runs/dit",
                                        "diffrep train --out runs/x --steps 4000 --resume   # extend a finished run",
                                        "diffrep train --config my.yaml --out runs/y"))
    t.add_argument("--out", required=True, type=Path, help="run directory (created; must not hold a run unless --resume)")
    t.add_argument("--preset", choices=list(PRESETS), help="start from a named preset (see `diffrep presets`)")
    t.add_argument("--config", type=Path, help="YAML file of options (keys as the flags, with _ or -)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last good checkpoint")
    t.add_argument("--data", help="mnist5k | digits | a folder of images | an .npz (default mnist5k)")
    t.add_argument("--image-size", type=positive_int, help="resize images to this square size (needed for mixed sizes)")
    t.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips")
    t.add_argument("--unconditional", dest="class_conditional", action="store_false", default=None,
                   help="ignore labels even when the data has them")
    t.add_argument("--label-dropout", type=float, help="fraction of labels replaced by the null class (CFG), default 0.1")
    t.add_argument("--model", choices=list(MODELS), metavar="MODEL", help=f"one of {', '.join(MODELS)} (default UNet-S)")
    t.add_argument("--process", choices=PROCESSES, help="flow (SiT), vp (DDPM) or edm (default flow)")
    t.add_argument("--prediction", choices=("eps", "v"), help="vp only: ε- or v-prediction")
    t.add_argument("--schedule", choices=("linear", "cosine"), help="vp only: β schedule")
    t.add_argument("--time-sampling", choices=("uniform", "logit-normal"), help="flow only: training-time distribution")
    t.add_argument("--steps", type=positive_int, help="total optimiser steps (raise it with --resume to extend a run)")
    t.add_argument("--batch-size", type=positive_int, help="global batch size")
    t.add_argument("--grad-accum", type=positive_int, help="micro-batches per step (same update as the full batch)")
    t.add_argument("--lr", type=float, help="peak learning rate (warm-up, then constant)")
    t.add_argument("--warmup", type=non_negative_int, help="warm-up steps")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    t.add_argument("--ema-decay", type=float)
    t.add_argument("--ema-start", type=non_negative_int, help="EMA copies the weights before this step")
    t.add_argument("--precision", choices=PRECISIONS, help="auto (default): bf16 autocast where the device computes bf16 "
                   "natively (CUDA, AMX or AVX512_BF16 CPUs), else fp32; a run records the choice and a resume keeps it")
    t.add_argument("--grad-checkpoint", action="store_true", default=None,
                   help="activation checkpointing per block: less memory, ~30%% more compute")
    t.add_argument("--channels-last", action="store_true", default=None, help="U-Net in NHWC memory layout (not with --compile on the CPU)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the net (first steps compile; falls back to eager with a warning if it fails)")
    t.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels, so a resumed or repeated GPU run, or compiled CPU run, is bit-identical too "
                        "(slower; eager CPU runs always are)")
    t.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun: shard weights, gradients, optimizer and EMA over the processes (FSDP2) "
                        "instead of replicating them (DDP); for nets that do not fit one device")
    t.add_argument("--adamw-impl", choices=("fused", "foreach", "for-loop"), help="AdamW kernel (default foreach)")
    t.add_argument("--plugin", dest="plugins", action="append", metavar="NAME[:OPT=VAL,…]",
                   help="a training plug-in, repeatable: repa:encoder=reference,depth=2,weight=0.5 | sra "
                        "(see `diffrep plugins`)")
    t.add_argument("--seed", type=int)
    t.add_argument("--ckpt-every", type=non_negative_int, help="checkpoint every N steps (and at the end, and on Ctrl-C)")
    t.add_argument("--keep-last", type=non_negative_int, help="checkpoints to keep (0: all)")
    t.add_argument("--log-every", type=non_negative_int)
    t.add_argument("--grid-every", type=non_negative_int, help="sample-grid PNG every N steps (0: never)")
    t.add_argument("--eval-every", type=non_negative_int, help="evaluate EMA samples every N steps (0: never): eval.jsonl, "
                   "TensorBoard eval/*, eval.png")
    t.add_argument("--eval-samples", type=positive_int, help="samples per evaluation (default 1000, class-balanced)")
    t.add_argument("--eval-metrics", help=f"comma list of {', '.join(METRICS)} (default fd)")
    t.add_argument("--eval-encoders", help="comma list of encoders (default reference)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 …")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="draw samples from a trained run (ADM .npz layout)", formatter_class=fmt,
                       epilog=_examples("diffrep sample runs/x --n 1000 --sampler euler --steps 50 --out samples.npz --grid grid.png",
                                        "diffrep sample runs/x --n 1000 --sampler dpmpp_2m --steps 20 --cfg 1.5 --cfg-interval 0.1,0.9 --out s.npz"))
    s.add_argument("run", type=Path, help="run directory written by `diffrep train`")
    s.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=1000,
                   help="number of images (spell it --num-samples under torchrun, whose own options --n would abbreviate)")
    s.add_argument("--sampler", default="euler", choices=list(SAMPLERS))
    s.add_argument("--steps", type=positive_int, default=50, help="grid intervals (Heun uses 2·steps−1 net calls)")
    s.add_argument("--grid-rho", type=float, help="time grid t_i = t_max·(1 − i/steps)^ρ (edm: its σ grid's ρ); "
                   "default: the process's (1 for flow and vp, 7 for edm)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    s.add_argument("--cfg-interval", help="lo,hi: guide only for t (σ for edm) in [lo, hi]")
    s.add_argument("--labels", default="balanced", help="balanced | random | none | a class index")
    s.add_argument("--batch-size", type=positive_int, default=250)
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--precision", choices=PRECISIONS, default="auto", help=NET_PRECISION_HELP)
    s.add_argument("--out", type=Path, required=True, help=".npz: arr_0 uint8 N×H×W×C, arr_1 labels")
    s.add_argument("--grid", type=Path, help="also write a PNG grid of the first 100 samples")
    s.add_argument("--device", default="auto")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the net (2× the images/s on a GPU and on this CPU; falls back to eager if it fails)")
    s.add_argument("--no-progress", action="store_true")

    j = sub.add_parser("judge", help="reference-encoder accuracy and FD_ref of samples of the embedded data",
                       formatter_class=fmt, epilog=_examples("diffrep judge samples.npz", "diffrep judge samples.npz --json judge.json"))
    j.add_argument("samples", help="an .npz (arr_0 [+ arr_1]) or a folder of images")
    j.add_argument("--data", default="mnist5k", choices=("mnist5k", "digits"), help="whose reference encoder and test split")
    j.add_argument("--json", type=Path, help="also write the numbers here")

    q = sub.add_parser("quickstart", help="train the default preset on mnist5k, sample, judge", formatter_class=fmt,
                       epilog=_examples("diffrep quickstart", "diffrep quickstart --size preset --out runs/qs2",
                                        "diffrep quickstart --out runs/qs3 --size small --steps 500"))
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    q.add_argument("--steps", type=positive_int, help="override the preset's step count")
    q.add_argument("--size", choices=("auto", "preset", "small"), default="auto",
                   help="auto (default): time a few steps, run the preset (UNet-S, 800 steps) if it is projected "
                        "within 1.5 × --minutes here, else the small plan (UNet-XS, steps fitted to --minutes)")
    q.add_argument("--minutes", type=float, default=13.0,
                   help="the wall-time budget --size auto plans for (default 13)")
    q.add_argument("--n", type=positive_int, help="samples to judge per set (default: the plan's, 1000 or 500)")
    q.add_argument("--device", default="auto")
    q.add_argument("--resume", action="store_true", help="continue an interrupted quickstart")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the net (off in the preset: over 800 CPU steps compiling costs more than it saves)")

    e = sub.add_parser("eval", help="metrics × encoders between generated and reference images", formatter_class=fmt,
                       description="Evaluate GEN against REF. GEN/REF: a folder of images, an .npz (ADM layout: arr_0 "
                                   "images; REF may hold only mu/sigma), a run directory (its samples.npz) or a "
                                   "built-in split such as mnist5k:test. Prints a metric × encoder table.",
                       epilog=_examples("diffrep eval samples.npz mnist5k:test",
                                        "diffrep eval samples.npz mnist5k:test --metrics fd,kid,prdc,vendi,authpct,ct "
                                        "--train mnist5k:train --out results.json",
                                        "diffrep eval gen/ VIRTUAL_imagenet256_labeled.npz --encoders inception,dinov2-l14 "
                                        "--encoder-weights inception=pt_inception.pth --encoder-weights dinov2-l14=vitl.pth",
                                        "torchrun --nproc-per-node 8 -m diffrep eval gen.npz ref.npz --encoders dinov2-l14"))
    e.add_argument("gen", help="generated images")
    e.add_argument("ref", help="reference images (or ADM statistics)")
    e.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help=f"comma list of {', '.join(METRICS)}")
    e.add_argument("--encoders", default="reference", help=f"comma list of {', '.join(ENCODERS)}")
    e.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH",
                   help="local weights file for an encoder (repeatable); default: the official download")
    e.add_argument("--resize", choices=RESIZE_MODES, help="override every encoder's resize mode")
    e.add_argument("--train", help="training images, for authpct and ct (e.g. mnist5k:train)")
    e.add_argument("--k", type=positive_int, default=3, help="neighbours for precision/recall (default 3)")
    e.add_argument("--k-dc", type=positive_int, default=5, help="neighbours for density/coverage (default 5)")
    e.add_argument("--kid-subset-size", type=positive_int, default=1000)
    e.add_argument("--reference-sqrtm", action="store_true", help="compute FD with scipy's sqrtm (parity checks)")
    e.add_argument("--no-ref-stats", dest="ref_stats", action="store_false",
                   help="use REF's images even when it holds mu/sigma")
    e.add_argument("--image-size", type=positive_int, help="resize folder images of mixed sizes to this square size")
    e.add_argument("--precision", choices=PRECISIONS, default="auto", help=ENCODER_PRECISION_HELP)
    e.add_argument("--batch-size", type=positive_int, default=100)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    e.add_argument("--cache-dir", type=Path, help="feature cache (default $DIFFREP_CACHE/features or ~/.cache/diffrep/features)")
    e.add_argument("--out", type=Path, help="write the rows (values, params, encoder specs) as JSON")
    e.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("features", help="features of images: a diffusion run's at (block, t), or a metric encoder's",
                       formatter_class=fmt,
                       description="SOURCE a run directory: the diffusion model's pooled hidden states of --data at "
                                   "every (--blocks, --t) pair. Otherwise SOURCE is images (a folder, an .npz or a "
                                   "built-in split) and --encoder encodes them.",
                       epilog=_examples("diffrep features runs/qs --data mnist5k:test --blocks all --t 0.05,0.1,0.2,0.4 "
                                        "--out feats.npz",
                                        "diffrep features mnist5k:test --encoder reference --out ref_feats.npz",
                                        "torchrun --nproc-per-node 2 -m diffrep features gen.npz --encoder dinov2-s14 "
                                        "--encoder-weights dinov2-s14=vits14.pth --out f.npz"))
    f.add_argument("source", help="a run directory, or images: a folder, an .npz or a built-in split")
    f.add_argument("--data", help="run source: the images (a built-in split, folder or .npz; default: the test split "
                                  "of the run's built-in dataset)")
    f.add_argument("--blocks", default="all", help="run source: 'all' or a comma list such as block3,block4")
    f.add_argument("--t", default="0.05,0.1,0.2,0.4", help="run source: noise levels in the process's time (σ for edm)")
    f.add_argument("--pool", choices=POOLS, default="mean",
                   help="run source: mean over positions/tokens, flatten, or average-pool to a 2/4/8 grid")
    f.add_argument("--resample-noise", action="store_true", help="run source: new ε at every t (default: one ε per image)")
    f.add_argument("--noise-draws", type=positive_int, default=1, help="run source: average the features over this many ε draws")
    f.add_argument("--l2-normalize", action="store_true", help="run source: unit-length feature vectors")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--encoder", choices=list(ENCODERS), help="images source: the metric encoder (default reference)")
    f.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH",
                   help="a local weights file for the encoder (default: the official download)")
    f.add_argument("--resize", choices=RESIZE_MODES, help="override the encoder's resize mode")
    f.add_argument("--image-size", type=positive_int)
    f.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default): a run's net in bf16 where the device computes bf16 natively, else fp32; "
                        "a metric encoder in fp32")
    f.add_argument("--batch-size", type=positive_int, default=100)
    f.add_argument("--device", default="auto")
    f.add_argument("--no-cache", action="store_true")
    f.add_argument("--cache-dir", type=Path)
    f.add_argument("--out", type=Path, required=True, help=".npz with 'features' (and 'logits'), plus the spec as JSON")
    f.add_argument("--no-progress", action="store_true")

    pr = sub.add_parser("probe", help="linear and k-NN probes of a run's features at (block, t) and of other backbones",
                        formatter_class=fmt,
                        epilog=_examples("diffrep probe runs/qs --backbones diffusion,reference,pixels --out probe.json "
                                         "--heatmap probe.png",
                                         "diffrep probe runs/dit --blocks block2,block4,block6 --t 0.1,0.3"))
    pr.add_argument("run", type=Path, help="run directory (needed for the diffusion backbone)")
    pr.add_argument("--data", choices=("mnist5k", "digits"),
                    help="train on its train split, test on test (default: the run's dataset)")
    pr.add_argument("--backbones", default="diffusion,pixels", help="comma list: diffusion and/or encoder names")
    pr.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH")
    pr.add_argument("--blocks", default="all")
    pr.add_argument("--t", default="0.05,0.1,0.2,0.4")
    pr.add_argument("--pool", choices=POOLS, default="mean")
    pr.add_argument("--resample-noise", action="store_true")
    pr.add_argument("--noise-draws", type=positive_int, default=1, help="average the diffusion features over this many ε draws")
    pr.add_argument("--l2-normalize", action="store_true")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--precision", choices=PRECISIONS, default="auto", help=NET_PRECISION_HELP + " (encoders: fp32)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--out", type=Path, help="JSON of every (backbone, block, t) row")
    pr.add_argument("--heatmap", type=Path, help="PNG of accuracy over (block, t) (needs matplotlib)")
    pr.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("classify", help="zero-shot Diffusion Classifier accuracy of a class-conditional run",
                       formatter_class=fmt,
                       epilog=_examples("diffrep classify runs/qs --data mnist5k --split test --limit 200",
                                        "diffrep classify runs/qs --schedule racing --pairs 32 --out c.json",
                                        "diffrep classify runs/qs --schedule adaptive --rounds 8:5,32:1"))
    c.add_argument("run", type=Path)
    c.add_argument("--data", choices=("mnist5k", "digits"), help="default: the run's dataset")
    c.add_argument("--split", default="test", choices=("train", "test"))
    c.add_argument("--limit", type=positive_int, help="classify this many class-balanced images of the split")
    c.add_argument("--pairs", type=positive_int, default=32, help="(t, ε) pairs per image on an even t grid")
    c.add_argument("--schedule", choices=SCHEDULES, default="exhaustive")
    c.add_argument("--rounds", help="adaptive: pairs:keep,… e.g. 8:5,32:1 (default pairs/10:classes/2,pairs:1)")
    c.add_argument("--z", type=float, default=3.0, help="racing: drop a class z standard errors behind the best")
    c.add_argument("--time-weights", choices=("uniform", "fitted"), default="uniform")
    c.add_argument("--fit-images", type=positive_int, default=100, help="labelled train images for fitted weights / racing order")
    c.add_argument("--norm", choices=("l2", "l1"), default="l2")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=positive_int, default=250, help="network inputs per forward (250: fastest on CPU here)")
    c.add_argument("--precision", choices=PRECISIONS, default="auto", help=NET_PRECISION_HELP)
    c.add_argument("--device", default="auto")
    c.add_argument("--out", type=Path)

    sub.add_parser("presets", help="list the presets", epilog=_examples("diffrep presets"), formatter_class=fmt)
    sub.add_parser("plugins", help="list the training plug-ins and their options", formatter_class=fmt,
                   epilog=_examples("diffrep plugins",
                                    "diffrep train --preset dit-tiny --plugin repa:depth=2,weight=0.5 --out runs/repa"))

    r = sub.add_parser("reference", help="train the reference encoder of a built-in dataset", formatter_class=fmt,
                       epilog=_examples("diffrep reference --data mnist5k --out src/diffrep/assets/reference-mnist5k.safetensors"))
    r.add_argument("--data", default="mnist5k", choices=("mnist5k", "digits"))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--epochs", type=positive_int, default=30)
    r.add_argument("--seed", type=int, default=0)
    return p


TRAIN_FLAGS = ("data", "image_size", "hflip", "class_conditional", "label_dropout", "model", "process", "prediction",
               "schedule", "time_sampling", "steps", "batch_size", "grad_accum", "lr", "warmup", "weight_decay",
               "grad_clip", "ema_decay", "ema_start", "precision", "grad_checkpoint", "channels_last", "compile",
               "deterministic", "fsdp", "adamw_impl", "plugins", "seed", "ckpt_every", "keep_last",
               "log_every", "grid_every", "eval_every", "eval_samples", "eval_metrics", "eval_encoders")


def cmd_train(a) -> int:
    from diffrep.config import load_run_config, make_config, preset, read_yaml_config
    from diffrep.trainer import Trainer

    flags = {k: getattr(a, k) for k in TRAIN_FLAGS}
    if a.resume and not (a.preset or a.config):
        base = {**vars(load_run_config(a.out)), "precision": "auto"}  # auto on a resume: the recorded precision
        cfg = make_config(base, flags)
    else:
        cfg = make_config(preset(a.preset) if a.preset else {}, read_yaml_config(a.config) if a.config else {}, flags)
    trainer = Trainer(cfg, a.out, resume=a.resume, device=a.device, progress=not a.no_progress)
    if trainer.world.is_main:
        _startup(trainer.precision)
    step = trainer.run()
    if trainer.world.is_main:
        print(f"trained {step} steps → {a.out} ({_run_contents(a.out)})")
    return 0


def _parse_interval(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise DiffrepError(f"--cfg-interval {text!r}: expected two numbers lo,hi such as 0.1,0.9") from None
    if lo > hi:
        raise DiffrepError(f"--cfg-interval {text!r}: lo must not exceed hi")
    return lo, hi


def sample_run(run: Path, out: Path, n: int = 1000, sampler: str = "euler", steps: int = 50,
               grid_rho: float | None = None, seed: int = 0,
               cfg: float = 1.0, cfg_interval: tuple[float, float] | None = None, labels: str = "balanced",
               batch_size: int = 250, weights: str = "ema", precision: str = "auto", grid: Path | None = None,
               device: str = "auto", progress: bool = True, compile_net: bool = False,
               on_start: Callable[[Precision], None] | None = None) -> dict:
    """Sample a run into an ADM-layout ``.npz``; returns what was done.

    Under torchrun, rank ``r`` of ``W`` draws chunks ``j ≡ r (mod W)`` and rank 0 writes the
    file; chunk ``j`` is seeded by ``(seed, j)``, so image ``i`` is the same for any ``W``.
    ``on_start`` gets the precision once the run is loaded and the options checked.
    """
    from diffrep import distributed
    from diffrep.data import save_grid
    from diffrep.generate import generate, make_labels
    from diffrep.io import save_npz
    from diffrep.precision import resolve_precision
    from diffrep.samplers import get_sampler, network_evaluations
    from diffrep.trainer import CompiledOrEager, load_run

    get_sampler(sampler)
    if n < 1:
        raise DiffrepError(f"--n must be positive, got {n}")
    net, process, _, info = load_run(run, weights, device)
    chosen = resolve_precision(precision, next(net.parameters()).device)
    if compile_net:
        net = CompiledOrEager(net)
    y = make_labels(labels, n, info["num_classes"], seed)
    world = distributed.current()
    if on_start is not None and world.is_main:
        on_start(chosen)
    start = time.perf_counter()
    chunks = generate(net, process, tuple(info["image_shape"]), n, sampler=sampler, steps=steps, grid_rho=grid_rho,
                      seed=seed, labels=y, cfg_scale=cfg, cfg_interval=cfg_interval, batch_size=batch_size,
                      autocast=chosen.autocast,
                      chunks=lambda j: j % world.size == world.rank, progress=progress and world.is_main)
    images = distributed.gather_chunks(chunks)
    seconds = time.perf_counter() - start
    if world.is_main:
        arrays = {"arr_0": images.permute(0, 2, 3, 1).numpy()}
        if y is not None:
            arrays["arr_1"] = y.numpy()
        save_npz(out, **arrays)
        if grid:
            save_grid(images[:100], grid, nrow=10)
    distributed.barrier()
    return {"n": n, "sampler": sampler, "steps": steps, "grid_rho": grid_rho, "nfe": network_evaluations(sampler, steps),
            "cfg": cfg, "cfg_interval": cfg_interval, "seed": seed, "checkpoint_step": info["step"],
            "precision": chosen.name, "seconds": seconds,
            "images_per_s": n / seconds, "out": str(out)}


def cmd_sample(a) -> int:
    from diffrep import distributed

    done = sample_run(a.run, a.out, a.n, a.sampler, a.steps, a.grid_rho, a.seed, a.cfg, _parse_interval(a.cfg_interval),
                      a.labels, a.batch_size, a.weights, a.precision, a.grid, a.device, not a.no_progress,
                      compile_net=a.compile, on_start=_startup)
    if distributed.current().is_main:
        print(f"{done['n']} samples ({done['sampler']}, {done['nfe']} net calls each, cfg {done['cfg']}) from step "
              f"{done['checkpoint_step']} in {done['seconds']:.1f}s → {a.out}" + (f", grid {a.grid}" if a.grid else ""))
    return 0


def _judge_table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'':28s} {'n':>6s} {'accuracy':>9s} {'FD_ref':>8s} {'ratio':>6s}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"{name:28s} {r['n']:6d} {acc:>9s} {r['fd_ref']:8.3f} {r['fd_ratio']:6.2f}")
    n_ref = rows[0][1]["n_ref"]
    lines.append(f"ratio = FD_ref / FD_ref({n_ref:,} train vs {n_ref:,} test) = FD_ref / {rows[0][1]['fd_ref_train_vs_test']:.3f}")
    return "\n".join(lines)


def cmd_judge(a) -> int:
    from diffrep.data import load_dataset
    from diffrep.reference import judge

    result = judge(load_dataset(a.samples), a.data).as_dict()
    print(_judge_table([(Path(a.samples).name, result)]))
    if a.json:
        from diffrep.io import atomic_write

        with atomic_write(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def cmd_quickstart(a) -> int:
    from diffrep.data import load_npz
    from diffrep.io import atomic_write
    from diffrep.quickstart import choose
    from diffrep.reference import judge
    from diffrep.trainer import Trainer

    if not a.resume and (a.out / "config.yaml").exists():
        raise DiffrepError(f"{a.out} already holds a run: pass --resume to continue it, or choose another --out")
    resume_from = a.out if a.resume else None
    print(f"quickstart: {'reading the plan of ' + str(a.out) if a.resume else 'measuring this machine'} …", file=sys.stderr)
    if a.minutes <= 0:
        raise DiffrepError(f"--minutes must be positive, got {a.minutes:g}")
    choice = choose(a.size, steps=a.steps, n=a.n, compile_net=a.compile, device=a.device, resume_from=resume_from,
                    budget_s=60 * a.minutes)
    cfg, plan = choice.cfg, choice.plan
    eta = f", about {choice.eta_s / 60:.0f} min in all" if choice.eta_s else ""
    print(f"quickstart plan '{plan.name}' ({choice.why}): {cfg.model}, {cfg.process}, {cfg.steps} steps of "
          f"{cfg.batch_size} on {cfg.data}, then 2 × {choice.n} samples ({plan.sampler} {plan.sampler_steps}){eta} → {a.out}")
    start = time.perf_counter()
    trainer = Trainer(cfg, a.out, resume=a.resume, device=a.device)
    _startup(trainer.precision)
    trainer.run()
    train_s = time.perf_counter() - start
    rows = []
    for name, scale in plan.sample_sets():
        npz = a.out / f"samples_{'cfg' if scale != 1.0 else 'nocfg'}.npz"
        sample_run(a.out, npz, n=choice.n, sampler=plan.sampler, steps=plan.sampler_steps, cfg=scale,
                   grid=npz.with_suffix(".png"), device=a.device)
        rows.append((name, judge(load_npz(npz), cfg.data).as_dict()))
    total_s = time.perf_counter() - start
    with atomic_write(a.out / "quickstart.json", "w") as f:
        json.dump({"plan": plan.name, "plan_reason": choice.why, "model": cfg.model, "precision": trainer.precision.name,
                   "precision_reason": trainer.precision.reason, "train_seconds": round(train_s, 1),
                   "total_seconds": round(total_s, 1), "eta_seconds": choice.eta_s and round(choice.eta_s, 1),
                   "steps": cfg.steps, "batch_size": cfg.batch_size, "n_samples": choice.n,
                   "sampler": f"{plan.sampler} {plan.sampler_steps}", "results": dict(rows)}, f, indent=1)
    print(f"\ntrained in {train_s / 60:.1f} min, {total_s / 60:.1f} min in all; run: {a.out} ({_run_contents(a.out)})")
    print(f"samples: {a.out}/samples_nocfg.npz, {a.out}/samples_cfg.npz (+ .png grids); numbers: {a.out}/quickstart.json\n")
    print(_judge_table(rows))
    return 0


def _run_contents(run: Path) -> str:
    """What a training run wrote, for the closing message."""
    names = ("checkpoints/", "metrics.jsonl", "eval.jsonl", "tb/", "grids/")
    return ", ".join(n for n in names if (Path(run) / n.rstrip("/")).exists())


def _device(name: str) -> str:
    from diffrep.trainer import pick_device

    return str(pick_device(name))


def _encoder_weights(pairs: list[str], encoders: list[str]) -> dict[str, str]:
    """``--encoder-weights NAME=PATH`` flags as ``{NAME: PATH}``; each NAME must be one of ``encoders``."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not path:
            raise DiffrepError(f"--encoder-weights {pair!r}: expected NAME=PATH, e.g. inception=pt_inception.pth")
        if name not in encoders:
            raise DiffrepError(f"--encoder-weights {pair!r}: {name!r} is not among the encoders used here "
                               f"({', '.join(encoders)})")
        out[name] = path
    return out


def _cache(a):
    from diffrep.features import FeatureCache

    return None if a.no_cache else FeatureCache(a.cache_dir)


def _encoder_precision(a) -> str:
    """``--precision`` resolved for a metric encoder (start-up line on rank 0)."""
    from diffrep import distributed
    from diffrep.precision import resolve_precision

    chosen = resolve_precision(a.precision, _device(a.device), encoder=True)
    if distributed.current().is_main:
        _startup(chosen)
    return chosen.name


def cmd_eval(a) -> int:
    from diffrep import distributed
    from diffrep.evaluate import evaluate, format_table, load_encoders, load_eval_set
    from diffrep.io import atomic_write

    names = [m.strip() for m in a.metrics.split(",") if m.strip()]
    encoder_names = [e.strip() for e in a.encoders.split(",") if e.strip()]
    encoders = load_encoders(encoder_names, _encoder_weights(a.encoder_weights, encoder_names), a.resize)
    gen, ref = load_eval_set(a.gen, a.image_size), load_eval_set(a.ref, a.image_size)
    train = load_eval_set(a.train, a.image_size) if a.train else None
    precision = _encoder_precision(a)
    rows = evaluate(gen, ref, metric_names=names, encoders=encoders, train=train, batch_size=a.batch_size,
                    dtype=precision, device=_device(a.device), cache=_cache(a), progress=not a.no_progress,
                    reference_sqrtm=a.reference_sqrtm, ref_stats=a.ref_stats, k_pr=a.k, k_dc=a.k_dc,
                    kid_subset_size=a.kid_subset_size)
    if not distributed.current().is_main:
        return 0
    print(format_table(rows))
    if a.out:
        import torch

        from diffrep import __version__

        with atomic_write(a.out, "w") as fh:
            json.dump({"command": "diffrep " + " ".join(sys.argv[1:]), "diffrep": __version__,
                       "torch": torch.__version__, "rows": rows}, fh, indent=1)
        print(f"→ {a.out}")
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise DiffrepError(f"{flag} {text!r}: expected comma-separated numbers such as 0.05,0.1,0.2") from None


def cmd_features(a) -> int:
    import numpy as np

    from diffrep import distributed
    from diffrep.encoders import get_encoder
    from diffrep.features import extract_features
    from diffrep.io import save_npz

    if (Path(a.source) / "config.yaml").is_file() and a.encoder is None:
        return _run_features(a)
    name = a.encoder or "reference"
    encoder = get_encoder(name, _encoder_weights(a.encoder_weights, [name]).get(name), a.resize)
    images = _images_to_encode(a.source, a.image_size)
    precision = _encoder_precision(a)
    encoded = extract_features(encoder, images.images, batch_size=a.batch_size, dtype=precision,
                               device=_device(a.device), cache=_cache(a), progress=not a.no_progress)
    if distributed.current().is_main:
        arrays = {"features": encoded.features.numpy()}
        if encoded.logits is not None:
            arrays["logits"] = encoded.logits.numpy()
        spec = json.dumps({**encoder.spec.as_dict(), "precision": precision, "images": images.name})
        save_npz(a.out, spec=np.array(spec), **arrays)
        print(f"{len(encoded.features)} × {encoded.features.shape[1]} {encoder.spec.name} features → {a.out}")
    return 0


def _images_to_encode(spec: str, image_size: int | None):
    """``load_eval_set(spec)``, refusing a set that holds statistics only."""
    from diffrep.evaluate import load_eval_set

    images = load_eval_set(spec, image_size)
    if images.images is None:
        raise DiffrepError(f"{spec} holds statistics only, no images to encode")
    return images


def _run_features(a) -> int:
    import numpy as np

    from diffrep.data import BUILTIN
    from diffrep.io import save_npz
    from diffrep.precision import resolve_precision
    from diffrep.represent import check_times, diffusion_features, resolve_blocks
    from diffrep.trainer import check_images_fit_run, load_run

    net, process, cfg, info = load_run(a.source, "ema", a.device)
    if a.data is None and cfg.data not in BUILTIN:
        raise DiffrepError(f"{a.source} was trained on {cfg.data}: pass --data with the images to encode")
    data = a.data or f"{cfg.data}:test"
    images = _images_to_encode(data, a.image_size)
    check_images_fit_run(images.images, info, a.source, data)
    blocks, times = resolve_blocks(a.blocks, net.tap_names), _floats(a.t, "--t")
    check_times(process, times)
    precision = resolve_precision(a.precision, next(net.parameters()).device)
    _startup(precision)
    feats = diffusion_features(net, process, images.images, blocks=blocks, times=times, pooling=a.pool,
                               seed=a.seed, resample=a.resample_noise, noise_draws=a.noise_draws,
                               normalize=a.l2_normalize, batch_size=a.batch_size, autocast=precision.autocast,
                               progress=not a.no_progress)
    spec = json.dumps({"run": str(a.source), "data": images.name, "pool": a.pool, "seed": a.seed,
                       "resample_noise": a.resample_noise, "noise_draws": a.noise_draws, "l2_normalize": a.l2_normalize,
                       "precision": precision.name})
    save_npz(a.out, spec=np.array(spec), **{f"{b}@t={t:g}": f.numpy() for (b, t), f in feats.items()})
    print(f"{len(images.images)} images × {len(feats)} (block, t) feature sets → {a.out} (keys like '{blocks[0]}@t=…')")
    return 0


def cmd_probe(a) -> int:
    from diffrep.io import atomic_write
    from diffrep.probes import plot_heatmap, probe_backbones

    rows = probe_backbones(a.run, data=a.data, backbones=a.backbones.split(","), blocks=a.blocks,
                           times=_floats(a.t, "--t"), pooling=a.pool, seed=a.seed, resample=a.resample_noise,
                           noise_draws=a.noise_draws, normalize=a.l2_normalize,
                           encoder_weights=_encoder_weights(a.encoder_weights, a.backbones.split(",")),
                           precision=a.precision, device=a.device, progress=not a.no_progress, on_start=_startup)
    best = {}
    for r in rows:
        if r["backbone"] not in best or r["linear"] > best[r["backbone"]]["linear"]:
            best[r["backbone"]] = r
    print(f"{'backbone':12s} {'best block':>10s} {'t':>6s} {'dim':>6s} {'linear':>8s} {'kNN':>8s} {'kNN white':>10s}")
    for name, r in best.items():
        t = "—" if r["t"] is None else f"{r['t']:g}"
        print(f"{name:12s} {r['block'] or '—':>10s} {t:>6s} {r['dim']:6d} {100 * r['linear']:7.2f}% {100 * r['knn']:7.2f}% "
              f"{100 * r['knn_white']:9.2f}%")
    if a.out:
        with atomic_write(a.out, "w") as f:
            json.dump({"command": "diffrep " + " ".join(sys.argv[1:]), "rows": rows}, f, indent=1)
    if a.heatmap:
        plot_heatmap(rows, a.heatmap)
    return 0


def _rounds(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    try:
        return [(int(p), int(k)) for p, k in (r.split(":") for r in text.split(","))]
    except ValueError:
        raise DiffrepError(f"--rounds {text!r}: expected pairs:keep,… such as 8:5,32:1") from None


def cmd_classify(a) -> int:
    from diffrep.classifier import classify_run
    from diffrep.io import atomic_write

    r = classify_run(a.run, data=a.data, split=a.split, limit=a.limit, pairs=a.pairs, schedule=a.schedule,
                     time_weights=a.time_weights, fit_images=a.fit_images, rounds=_rounds(a.rounds), z=a.z,
                     norm=a.norm, seed=a.seed, batch_size=a.batch_size, precision=a.precision, device=a.device,
                     on_start=_startup)
    print(f"{r['data']}: accuracy {100 * r['accuracy']:.2f}% on {r['n']} images, {r['calls_per_image']:.0f} network "
          f"calls per image ({r['schedule']}; exhaustive {r['exhaustive_calls']}), {r['images_per_s']:.2f} images/s")
    if a.out:
        with atomic_write(a.out, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def cmd_presets(a) -> int:
    from diffrep.config import PRESETS

    width = max(map(len, PRESETS))
    for name, (line, _) in PRESETS.items():
        print(f"{name:{width}s}  {line}")
    return 0


def cmd_plugins(a) -> int:
    from diffrep.plugins import describe_plugins

    print(describe_plugins())
    return 0


def cmd_reference(a) -> int:
    from diffrep.reference import save_reference, train_reference

    net, card = train_reference(a.data, epochs=a.epochs, seed=a.seed)
    card["command"] = f"diffrep reference --data {a.data} --out {a.out} --epochs {a.epochs} --seed {a.seed}"
    save_reference(net, card, a.out)
    print(f"reference encoder for {a.data}: test accuracy {100 * card['test_accuracy']:.2f}% → {a.out}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "judge": cmd_judge, "eval": cmd_eval, "features": cmd_features,
            "probe": cmd_probe, "classify": cmd_classify, "quickstart": cmd_quickstart, "presets": cmd_presets,
            "plugins": cmd_plugins, "reference": cmd_reference}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line are one plain line each, not a source excerpt."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from diffrep import distributed
    from diffrep.memory import reuse_freed_memory

    args = _parser().parse_args(argv)
    reuse_freed_memory()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            distributed.init_from_env(getattr(args, "device", "auto"))
            return COMMANDS[args.command](args)
        except DiffrepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: the run's last checkpoint is on disk; continue with --resume", file=sys.stderr)
            return 130
        finally:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
