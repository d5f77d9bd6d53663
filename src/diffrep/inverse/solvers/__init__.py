"""Inverse-problem solvers over any run's denoiser, one module per method.

A solver is a dataclass of its paper's defaults with ``solve(prior, op, y, sigma_y, generator) -> x``
(``prior``: :class:`~diffrep.inverse.prior.Prior`, ``None`` for the baselines) and ``nfe()``, the net
calls per image.  ``needs_svd`` solvers refuse operators without an SVD; ``uses_prior`` is false for the
baselines.  ``--solver-opt key=value`` overrides a field, typed like its default.
"""

from __future__ import annotations

from dataclasses import fields

from diffrep.errors import DiffrepError
from diffrep.inverse.solvers.baselines import PseudoInverse, TotalVariation
from diffrep.inverse.solvers.daps import DAPS
from diffrep.inverse.solvers.ddrm import DDRM
from diffrep.inverse.solvers.dps import DPS
from diffrep.inverse.solvers.pigdm import PiGDM
from diffrep.inverse.solvers.reddiff import RedDiff

SOLVERS = {"reddiff": RedDiff, "dps": DPS, "pigdm": PiGDM, "ddrm": DDRM, "daps": DAPS, "pinv": PseudoInverse,
           "tv": TotalVariation}


def get_solver(name: str, options: dict[str, str] | None = None):
    """Solver ``name`` with its defaults overridden by ``options`` (``--solver-opt`` strings)."""
    if name not in SOLVERS:
        raise DiffrepError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}")
    cls = SOLVERS[name]
    known = {f.name: f for f in fields(cls)}
    typed = {}
    for key, text in (options or {}).items():
        if key not in known:
            raise DiffrepError(f"--solver-opt {key}={text}: {name} has no option {key!r} "
                               f"(its options: {', '.join(known) or 'none'})")
        kind = type(known[key].default)
        try:
            typed[key] = kind(text)
        except ValueError:
            raise DiffrepError(f"--solver-opt {key}={text}: expected a {kind.__name__}") from None
        if (kind is int and typed[key] < 1) or (kind is float and typed[key] < 0):
            raise DiffrepError(f"--solver-opt {key}={text}: must be {'at least 1' if kind is int else 'non-negative'}")
    return cls(**typed)


__all__ = ["SOLVERS", "get_solver", "DAPS", "DDRM", "DPS", "PiGDM", "PseudoInverse", "RedDiff", "TotalVariation"]
