"""``diffrep reference``: train the reference encoder (the offline judge) of a built-in dataset."""

from __future__ import annotations

from pathlib import Path

from diffrep.cli.common import COMMANDS, FORMATTER, check_outputs, examples, parents, positive_int
from diffrep.errors import DiffrepError


def register(sub) -> None:
    r = sub.add_parser("reference", help=COMMANDS["reference"][1], formatter_class=FORMATTER,
                       parents=parents(device=False, outputs=True),
                       description="Writes the weights to --out (.safetensors) and a JSON card beside them (.json). "
                                   "The reference encoder trains and runs on the CPU: it is a metric, kept "
                                   "reproducible.",
                       epilog=examples("diffrep reference --data digits --out reference-digits.safetensors"))
    r.add_argument("--data", default="mnist5k", choices=("mnist5k", "digits"))
    r.add_argument("--out", type=Path, required=True, help="the weights file, ending in .safetensors")
    r.add_argument("--epochs", type=positive_int, default=30)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(handler=cmd_reference)


def cmd_reference(a) -> int:
    from diffrep.io import check_output_path
    from diffrep.reference import save_reference, train_reference

    if a.out.suffix != ".safetensors":
        raise DiffrepError(f"--out {a.out}: give a .safetensors path (the JSON card is written beside it, "
                           f"{a.out.with_suffix('.json').name})")
    check_outputs(a, "out")
    check_output_path(a.out.with_suffix(".json"), a.overwrite, "the card of --out")
    net, card = train_reference(a.data, epochs=a.epochs, seed=a.seed, progress=not a.no_progress)
    card["command"] = f"diffrep reference --data {a.data} --out {a.out} --epochs {a.epochs} --seed {a.seed}"
    save_reference(net, card, a.out)
    print(f"reference encoder for {a.data}: test accuracy {100 * card['test_accuracy']:.2f}% → {a.out}")
    return 0
