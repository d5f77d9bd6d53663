"""Inverse problems with a trained run as the prior: operators, solvers, restoration and translation.

- :mod:`~diffrep.inverse.operators` / :mod:`~diffrep.inverse.tasks` — measurement models ``A`` and the named tasks.
- :mod:`~diffrep.inverse.prior` — any run's denoiser in variance-exploding coordinates.
- :mod:`~diffrep.inverse.solvers` — RED-diff, DPS, ΠGDM, DDRM, DAPS and two baselines.
- :mod:`~diffrep.inverse.restore` / :mod:`~diffrep.inverse.run` — measure, solve ``K`` draws, score, save.
"""

from diffrep.inverse.operators import Convolution, Kronecker, Mask, Operator, SVDOperator
from diffrep.inverse.prior import Prior
from diffrep.inverse.restore import measure, score, solve_all
from diffrep.inverse.run import restore_run
from diffrep.inverse.solvers import SOLVERS, get_solver
from diffrep.inverse.tasks import TASKS, make_operator, task_options

__all__ = ["Convolution", "Kronecker", "Mask", "Operator", "SVDOperator", "Prior", "measure", "score", "solve_all",
           "restore_run", "SOLVERS", "get_solver", "TASKS", "make_operator", "task_options"]
