"""``diffrep features``, ``probe`` and ``classify``: the model as a representation learner and a classifier."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, check_outputs, device_name, encoder_precision, encoder_weights,
                                examples, feature_cache, floats, parents, positive_float, positive_int, startup,
                                write_json)
from diffrep.errors import DiffrepError


def register(sub) -> None:
    from diffrep.evaluation import ENCODERS
    from diffrep.represent import POOLS, SCHEDULES

    f = sub.add_parser("features", help=COMMANDS["features"][1],
                       formatter_class=FORMATTER, parents=parents(seed=0, batch_size=100, encoder=True, cache=True, outputs=True),
                       description="SOURCE a run directory: the diffusion model's pooled hidden states of --data at "
                                   "every (--blocks, --t) pair. Otherwise SOURCE is images (a folder, an .npz or a "
                                   "built-in split) and --encoder encodes them.",
                       epilog=examples("diffrep features runs/qs --data mnist5k:test --blocks all --t 0.05,0.1,0.2,0.4 "
                                       "--out feats.npz",
                                       "diffrep features mnist5k:test --encoder reference --out ref_feats.npz",
                                       "torchrun --nproc-per-node 2 -m diffrep features gen.npz --encoder dinov2-s14 "
                                       "--encoder-weights dinov2-s14=vits14.pth --out f.npz"))
    f.add_argument("source", help="a run directory, or images: a folder, an .npz or a built-in split")
    f.add_argument("--data", help="run source: the images (a built-in split, folder or .npz; default: the test split "
                                  "of the run's built-in dataset)")
    _add_feature_options(f, POOLS, "run source: ")
    f.add_argument("--encoder", help=f"images source: the metric encoder, one of {', '.join(ENCODERS)} (clip and "
                   "clip-openai also as NAME:projected; default: the reference encoder of a built-in split, inception "
                   "for other images)")
    f.add_argument("--image-size", type=positive_int)
    f.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto (default): a run's net in bf16 where the device computes bf16 natively, else fp32; "
                        "a metric encoder in fp32")
    f.add_argument("--out", type=Path, required=True, help=".npz with 'features' (and 'logits'), plus the spec as JSON")
    f.set_defaults(handler=cmd_features)

    pr = sub.add_parser("probe", help=COMMANDS["probe"][1],
                        formatter_class=FORMATTER, parents=parents(seed=0, precision="net", outputs=True),
                        epilog=examples("diffrep probe runs/qs --backbones diffusion,reference,pixels --out probe.json "
                                        "--heatmap probe.png",
                                        "diffrep probe runs/dit --blocks block2,block4,block6 --t 0.1,0.3"))
    pr.add_argument("run", type=Path, help="run directory (needed for the diffusion backbone)")
    pr.add_argument("--data", help="labelled data: train the probes on its train split, test on its test split "
                    "(default: the run's dataset; an .npz with labels or a folder of class folders: see --test-data)")
    pr.add_argument("--test-data", help="the test set for --data that is not built in (default: a fixed "
                    "class-balanced 20%% of --data)")
    pr.add_argument("--backbones", default="diffusion,pixels", help="comma list: diffusion and/or encoder names "
                    "(encoders compute in fp32)")
    pr.add_argument("--encoder-weights", action="append", default=[], metavar="NAME=PATH")
    _add_feature_options(pr, POOLS, "")
    pr.add_argument("--out", type=Path, help="JSON of every (backbone, block, t) row")
    pr.add_argument("--heatmap", type=Path, help="PNG of accuracy over (block, t) (needs matplotlib)")
    pr.set_defaults(handler=cmd_probe)

    c = sub.add_parser("classify", help=COMMANDS["classify"][1],
                       formatter_class=FORMATTER,
                       parents=parents(seed=0, batch_size=250, precision="net", outputs=True,
                                       batch_help="network inputs per forward (250: fastest on CPU here)"),
                       epilog=examples("diffrep classify runs/qs --data mnist5k --split test --limit 200",
                                       "diffrep classify runs/qs --schedule racing --pairs 32 --out c.json",
                                       "diffrep classify runs/qs --schedule adaptive --rounds 8:5,32:1"))
    c.add_argument("run", type=Path)
    c.add_argument("--data", help="labelled data (default: the run's dataset; an .npz with labels or a folder of "
                   "class folders: see --test-data)")
    c.add_argument("--test-data", help="the test set for --data that is not built in (default: a fixed "
                   "class-balanced 20%% of --data)")
    c.add_argument("--split", default="test", choices=("train", "test"))
    c.add_argument("--n", "--limit", dest="limit", type=positive_int,
                   help="classify this many class-balanced images of the split (--limit: the former name)")
    c.add_argument("--pairs", type=positive_int, default=32, help="(t, ε) pairs per image on an even t grid")
    c.add_argument("--schedule", choices=SCHEDULES, default="exhaustive")
    c.add_argument("--rounds", help="adaptive: pairs:keep,… e.g. 8:5,32:1 (default pairs/10:classes/2,pairs:1)")
    c.add_argument("--z", type=positive_float, default=3.0, help="racing: drop a class z standard errors behind the best")
    c.add_argument("--time-weights", choices=("uniform", "fitted"), default="uniform")
    c.add_argument("--fit-images", type=positive_int, default=100, help="labelled train images for fitted weights / racing order")
    c.add_argument("--norm", choices=("l2", "l1"), default="l2")
    c.add_argument("--out", type=Path)
    c.set_defaults(handler=cmd_classify)


def _add_feature_options(p, pools: tuple, prefix: str) -> None:
    """The options of diffusion features at (block, t) that ``features`` and ``probe`` share."""
    p.add_argument("--blocks", default="all", help=f"{prefix}'all' or a comma list such as block3,block4")
    p.add_argument("--t", default="0.05,0.1,0.2,0.4", help=f"{prefix}noise levels in the process's time (σ for edm)")
    p.add_argument("--pool", choices=pools, default="mean",
                   help=f"{prefix}mean over positions/tokens, flatten, or average-pool to a 2/4/8 grid")
    p.add_argument("--resample-noise", action="store_true", help=f"{prefix}new ε at every t (default: one ε per image)")
    p.add_argument("--noise-draws", type=positive_int, default=1, help=f"{prefix}average the features over this many ε draws")
    p.add_argument("--l2-normalize", action="store_true", help=f"{prefix}unit-length feature vectors")


def cmd_features(a) -> int:
    import numpy as np

    from diffrep import distributed
    from diffrep.cli.evaluate import default_encoder
    from diffrep.evaluation import extract_features, load_encoders
    from diffrep.io import save_npz

    check_outputs(a, "out")
    if (Path(a.source) / "config.yaml").is_file() and a.encoder is None:
        return _run_features(a)
    name = a.encoder or default_encoder(a.source)
    encoder = load_encoders([name], encoder_weights(a.encoder_weights, [name]), a.resize, data=a.source)[0]
    images = _images_to_encode(a.source, a.image_size)
    precision = encoder_precision(a)
    encoded = extract_features(encoder, images.images, batch_size=a.batch_size, dtype=precision,
                               device=device_name(a.device), cache=feature_cache(a), progress=not a.no_progress)
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
    from diffrep.evaluation import load_eval_set

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
    from diffrep.runs import check_images_fit_run, load_run

    net, process, cfg, info, space, condition = load_run(a.source, "ema", a.device)
    if a.data is None and cfg.data not in BUILTIN:
        raise DiffrepError(f"{a.source} was trained on {cfg.data}: pass --data with the images to encode")
    data = a.data or f"{cfg.data}:test"
    images = _images_to_encode(data, a.image_size)
    check_images_fit_run(images.images, info, a.source, data)
    blocks, times = resolve_blocks(a.blocks, net.tap_names), floats(a.t, "--t")
    check_times(process, times)
    precision = resolve_precision(a.precision, next(net.parameters()).device)
    startup(precision)
    feats = diffusion_features(net, process, images.images, blocks=blocks, times=times, pooling=a.pool,
                               seed=a.seed, resample=a.resample_noise, noise_draws=a.noise_draws,
                               normalize=a.l2_normalize, batch_size=a.batch_size, autocast=precision.autocast,
                               progress=not a.no_progress, space=space, condition=condition)
    spec = json.dumps({"run": str(a.source), "data": images.name, "pool": a.pool, "seed": a.seed,
                       "resample_noise": a.resample_noise, "noise_draws": a.noise_draws, "l2_normalize": a.l2_normalize,
                       "precision": precision.name})
    save_npz(a.out, spec=np.array(spec), **{f"{b}@t={t:g}": f.numpy() for (b, t), f in feats.items()})
    print(f"{len(images.images)} images × {len(feats)} (block, t) feature sets → {a.out} (keys like '{blocks[0]}@t=…')")
    return 0


def cmd_probe(a) -> int:
    from diffrep.represent import plot_heatmap, probe_backbones

    check_outputs(a, "out", "heatmap")
    rows = probe_backbones(a.run, data=a.data, backbones=a.backbones.split(","), blocks=a.blocks,
                           times=floats(a.t, "--t"), pooling=a.pool, seed=a.seed, resample=a.resample_noise,
                           noise_draws=a.noise_draws, normalize=a.l2_normalize,
                           encoder_weights=encoder_weights(a.encoder_weights, a.backbones.split(",")),
                           precision=a.precision, device=a.device, progress=not a.no_progress, on_start=startup,
                           test_data=a.test_data)
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
        write_json(a.out, {"command": "diffrep " + " ".join(sys.argv[1:]), "rows": rows})
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
    from diffrep.represent import classify_run

    check_outputs(a, "out")
    r = classify_run(a.run, data=a.data, split=a.split, limit=a.limit, pairs=a.pairs, schedule=a.schedule,
                     time_weights=a.time_weights, fit_images=a.fit_images, rounds=_rounds(a.rounds), z=a.z,
                     norm=a.norm, seed=a.seed, batch_size=a.batch_size, precision=a.precision, device=a.device,
                     on_start=startup, progress=not a.no_progress, test_data=a.test_data)
    print(f"{r['data']}: accuracy {100 * r['accuracy']:.2f}% on {r['n']} images, {r['calls_per_image']:.0f} network "
          f"calls per image ({r['schedule']}; exhaustive {r['exhaustive_calls']}), {r['images_per_s']:.2f} images/s")
    if a.out:
        write_json(a.out, r)
    return 0
