"""The ``diffrep`` command line: thin modules that parse, validate and call the library, one per command group.

Each module's ``register(sub)`` adds its sub-commands, each with ``set_defaults(handler=...)``;
:mod:`diffrep.cli.common` holds the parent parsers for the options commands share.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from diffrep.cli import evaluate, reference, represent, restore, sample, train
from diffrep.cli.common import FORMATTER, examples
from diffrep.errors import DiffrepError

GROUPS = (train, sample, restore, evaluate, represent, reference)
"""Command groups, in the order ``diffrep --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffrep", formatter_class=FORMATTER,
                                description="One diffusion model as generator and representation learner.",
                                epilog=examples("diffrep quickstart", "diffrep train --preset quickstart --out runs/qs",
                                                "diffrep sample runs/qs --n 1000 --out samples.npz",
                                                "diffrep judge samples.npz",
                                                "diffrep eval samples.npz mnist5k:test --metrics fd,kid,prdc",
                                                "diffrep probe runs/qs --backbones diffusion,pixels",
                                                "diffrep classify runs/qs --schedule racing --limit 200"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line are one plain line each, not a source excerpt."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from diffrep import distributed
    from diffrep.memory import reuse_freed_memory

    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            distributed.init_from_env(getattr(args, "device", "auto"))
            return args.handler(args)
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
