r"""Where :func:`arflows.fit` starts: at the classical answer when the flow can hold one.

A flow with a :class:`~arflows.flows.GaussianMixture` base or
:class:`~arflows.flows.MarginalSpline` layers is first fitted the classical way
(:func:`~arflows.flows.initialize_`: standardisation, marginal maps, a Gaussian mixture by
EM with its size chosen on the validation rows). Its other layers are the identity when
built, so the untrained flow already is that classical density, and training only learns
what is left. The starting point is scored on the validation rows like an epoch, so early
stopping can keep it: a fit never ends below where it started.
"""

from __future__ import annotations

__all__ = ["data_initialized", "start_from_data"]

import copy
import math

import torch

from ..flows import Flow, GaussianMixture, MarginalSpline, initialize_
from .distributed import World
from .history import History
from .rows import TensorRows
from .setup import Prepared
from .validation import Best, average_log_prob


def data_initialized(flow: Flow) -> bool:
    """Whether ``flow`` has parts fitted to data before training (mixture base, marginals)."""
    return any(isinstance(m, GaussianMixture | MarginalSpline) for m in flow.modules())


def start_from_data(
    flow: Flow, rows: Prepared, world: World, history: History, seed: int
) -> Best | None:
    """Fits the flow's classical parts to the training rows and scores the start.

    Args:
        flow: The flow, changed in place (its base may change its number of components:
            build the optimiser afterwards).
        rows: The prepared rows; only in-memory rows are used.
        world: The processes (every one holds the same rows, so all fit the same start).
        history: Receives the summary (:attr:`History.start`) and the starting validation
            score (:attr:`History.start_valid`).
        seed: The seed of the hold-out split and EM.

    Returns:
        The starting weights with their validation score, to compete with the epochs'; or
        ``None`` when the flow has nothing to fit or the rows are streamed (the caller then
        standardises as usual).
    """
    if not (rows.in_memory and isinstance(rows.train, TensorRows) and data_initialized(flow)):
        return None
    train, held = rows.train, rows.held
    x = rows.noise(train.x)  # dequantised like a training batch
    valid = held if isinstance(held, TensorRows) else None
    has_marginals = any(isinstance(m, MarginalSpline) for m in flow.modules())
    built = copy.deepcopy(flow.state_dict())
    best: Best | None = None
    # With validation rows, the marginal maps must earn their place: on few rows they can
    # fit the noise of each column, and the mixture alone may then be the better start.
    for marginals in (True, False) if has_marginals and held is not None else (True,):
        flow.load_state_dict(built)
        summary = initialize_(
            flow,
            x,
            train.c,
            valid=None if valid is None else valid.x,
            valid_c=None if valid is None else valid.c,
            marginals=marginals,
            seed=seed,
        )
        score = -math.inf
        if held is not None:
            with torch.no_grad():
                score = average_log_prob(flow, held, world, rows.held_noise)
        if best is None or score > best.score:
            best = Best(copy.deepcopy(flow.state_dict()), score)
            kept = summary
    flow.load_state_dict(best.state)
    kept.pop("mixture", None)  # the fitted parameters now live in the flow
    history.start = {k: v for k, v in kept.items() if k != "scores"} | {
        "scores": {str(k): v for k, v in kept.get("scores", {}).items()}
    }
    history.start_valid = None if held is None else best.score
    return best
