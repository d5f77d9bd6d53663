"""The ``diffrep`` command line: thin modules that parse, validate and call the library, one per command group.

Each module's ``register(sub)`` adds its sub-commands, each with ``set_defaults(handler=...)``;
:mod:`diffrep.cli.common` holds the command table and the parent parsers for the options commands share.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Collection

from diffrep import __version__
from diffrep.cli.common import COMMANDS, FORMATTER, examples
from diffrep.errors import DiffrepError


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``diffrep`` parser.  ``full``: the sub-commands whose modules register their full parsers (importing
    torch); every other command is listed by name and help only.  ``None`` builds them all."""
    p = argparse.ArgumentParser(prog="diffrep", formatter_class=FORMATTER,
                                description="One diffusion model as generator and representation learner.",
                                epilog=examples("diffrep quickstart", "diffrep train --preset quickstart --out runs/qs",
                                                "diffrep sample runs/qs --n 1000 --out samples.npz",
                                                "diffrep judge samples.npz",
                                                "diffrep eval samples.npz mnist5k:test --metrics fd,kid,prdc",
                                                "diffrep probe runs/qs --backbones diffusion,pixels",
                                                "diffrep classify runs/qs --schedule racing --limit 200"))
    p.add_argument("--version", action="version", version=f"diffrep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in dict.fromkeys(m for name, (m, _) in COMMANDS.items() if full is None or name in full):
        importlib.import_module(f"diffrep.cli.{module}").register(sub)
    for name, (_, help_line) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_line)
    return p


def _command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line are one plain line each, not a source excerpt."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(word) for word in argv]
    args = build_parser([_command(argv)]).parse_args(argv)
    from diffrep import distributed  # torch: after parsing, so that --help, --version and typos are fast
    from diffrep.memory import reuse_freed_memory

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
