"""Reduced models of the extreme-token dynamics, their simulators, predicted rates and checks.

theory/README.md indexes the results; each has a `check_*` in `toybb.theory.statements`.
"""

from toybb.theory.dynamics import Optimiser, Trajectory, log_grid, simulate  # noqa: F401
from toybb.theory.models import (  # noqa: F401
    AttentionInstance,
    ResidualInstance,
    make_instance,
    make_residual_instance,
    random_instance,
    relu_loss,
    residual_loss,
    softmax_grads,
    softmax_loss,
    stack,
)
from toybb.theory.rates import fit_rates, predicted_softmax, predicted_softmax_curves  # noqa: F401
from toybb.theory.experiment import fit_table, fit_trajectory, load_trajectory, plot_overlay  # noqa: F401,E402
