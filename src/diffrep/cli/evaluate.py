"""``diffrep eval`` (metrics × encoders) and ``diffrep judge`` (the embedded data's reference encoder)."""

from __future__ import annotations

import sys
from pathlib import Path

from diffrep.cli.common import (COMMANDS, FORMATTER, check_outputs, device_name, encoder_precision, encoder_weights,
                                examples, feature_cache, parents, positive_int, write_json)


def register(sub) -> None:
    from diffrep.evaluation import DEFAULT_METRICS, ENCODERS, METRICS

    e = sub.add_parser("eval", help=COMMANDS["eval"][1], formatter_class=FORMATTER,
                       parents=parents(batch_size=100, precision="encoder", encoder=True, cache=True, outputs=True),
                       description="Evaluate GEN against REF. GEN/REF: a folder of images, an .npz (ADM layout: arr_0 "
                                   "images; REF may hold only mu/sigma), a run directory (its samples.npz) or a "
                                   "built-in split such as mnist5k:test. Prints a metric × encoder table.",
                       epilog=examples("diffrep eval samples.npz mnist5k:test",
                                       "diffrep eval samples.npz mnist5k:test --metrics fd,kid,prdc,vendi,authpct,ct "
                                       "--train mnist5k:train --out results.json",
                                       "diffrep eval gen/ VIRTUAL_imagenet256_labeled.npz --encoders inception,dinov2-l14 "
                                       "--encoder-weights inception=pt_inception.pth --encoder-weights dinov2-l14=vitl.pth",
                                       "diffrep eval gen.npz ref.npz --encoders inception --resize bilinear-tf --metrics "
                                       "fd,is   # the ADM evaluator's / torch-fidelity's FID and IS",
                                       "torchrun --nproc-per-node 8 -m diffrep eval gen.npz ref.npz --encoders dinov2-l14"))
    e.add_argument("gen", help="generated images")
    e.add_argument("ref", help="reference images (or ADM statistics)")
    e.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help=f"comma list of {', '.join(METRICS)}")
    e.add_argument("--encoders", help=f"comma list of {', '.join(ENCODERS)}; clip:projected for CLIP's projected "
                   "embedding (default: reference for a built-in REF, whose own reference encoder is used; inception "
                   "for other data)")
    e.add_argument("--train", help="training images, for authpct and ct (e.g. mnist5k:train)")
    e.add_argument("--k", type=positive_int, default=3, help="neighbours for precision/recall (default 3)")
    e.add_argument("--k-dc", type=positive_int, default=5, help="neighbours for density/coverage (default 5)")
    e.add_argument("--kid-subset-size", type=positive_int, default=1000)
    e.add_argument("--reference-sqrtm", action="store_true", help="compute FD with scipy's sqrtm (parity checks)")
    e.add_argument("--no-ref-stats", dest="ref_stats", action="store_false",
                   help="use REF's images even when it holds mu/sigma")
    e.add_argument("--image-size", type=positive_int, help="resize folder images of mixed sizes to this square size")
    e.add_argument("--out", type=Path, help="write the rows (values, params, encoder specs) as JSON")
    e.set_defaults(handler=cmd_eval)

    j = sub.add_parser("judge", help=COMMANDS["judge"][1],
                       formatter_class=FORMATTER,
                       parents=parents(device=False, progress=False, outputs=True),
                       description="The judge's reference encoder is a metric encoder: it always computes in fp32.",
                       epilog=examples("diffrep judge samples.npz", "diffrep judge samples.npz --out judge.json"))
    j.add_argument("samples", help="an .npz (arr_0 [+ arr_1]) or a folder of images")
    j.add_argument("--data", default="mnist5k", choices=("mnist5k", "digits"), help="whose reference encoder and test split")
    j.add_argument("--out", "--json", dest="out", type=Path, help="also write the numbers here as JSON (--json: the "
                   "former name)")
    j.set_defaults(handler=cmd_judge)


def cmd_eval(a) -> int:
    import torch

    from diffrep import __version__, distributed
    from diffrep.evaluation import evaluate, format_table, load_encoders, load_eval_set
    from diffrep.evaluation.registry import get_metric

    check_outputs(a, "out")
    names = [m.strip() for m in a.metrics.split(",") if m.strip()]
    encoder_names = [e.strip() for e in (a.encoders or default_encoder(a.ref)).split(",") if e.strip()]
    if all(get_metric(m).kind == "restoration" for m in names):
        encoder_names = []  # pixel metrics only: no encoder is loaded (nor downloaded)
    encoders = load_encoders(encoder_names, encoder_weights(a.encoder_weights, encoder_names), a.resize, data=a.ref)
    gen, ref = load_eval_set(a.gen, a.image_size), load_eval_set(a.ref, a.image_size)
    train = load_eval_set(a.train, a.image_size) if a.train else None
    precision = encoder_precision(a)
    rows = evaluate(gen, ref, metric_names=names, encoders=encoders, train=train, batch_size=a.batch_size,
                    dtype=precision, device=device_name(a.device), cache=feature_cache(a), progress=not a.no_progress,
                    reference_sqrtm=a.reference_sqrtm, ref_stats=a.ref_stats, k_pr=a.k, k_dc=a.k_dc,
                    kid_subset_size=a.kid_subset_size)
    if not distributed.current().is_main:
        return 0
    print(format_table(rows))
    if a.out:
        write_json(a.out, {"command": "diffrep " + " ".join(sys.argv[1:]), "diffrep": __version__,
                           "torch": torch.__version__, "rows": rows})
        print(f"→ {a.out}")
    return 0


def default_encoder(ref: str) -> str:
    """``reference`` when REF is a built-in split (its own reference encoder), else ``inception`` (any images)."""
    from diffrep.data import BUILTIN

    return "reference" if ref.partition(":")[0] in BUILTIN else "inception"


def judge_table(rows: list[tuple[str, dict]]) -> str:
    """Accuracy, FD_ref and its ratio to the train-vs-test yardstick, one row per named sample set."""
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

    check_outputs(a, "out")
    result = judge(load_dataset(a.samples), a.data).as_dict()
    print(judge_table([(Path(a.samples).name, result)]))
    if a.out:
        write_json(a.out, result)
    return 0
