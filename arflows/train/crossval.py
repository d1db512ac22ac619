r"""How long to train, chosen by K-fold cross-validation: for tables too small to hold out.

On a table of 150 rows a validation split of 10% is 15 rows, and early stopping (or keeping
the data-initialised start) judged on 15 rows follows their noise. :func:`fit_cv` instead
trains one flow per fold, each validated on its fold's rows, averages the validation curves
(the start included, as epoch 0), picks the number of epochs with the best average, and
refits a fresh flow on all the rows for exactly that many epochs (or keeps its fitted start
when no training beat it on average).

Example:
    >>> import torch, arflows
    >>> x = torch.randn(120, 2) @ torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    >>> make = lambda: arflows.MAF(2, transforms=1, hidden_features=(8,), base="gaussian")
    >>> flow, history, cv = fit_cv(make, x, folds=3, epochs=4, progress=False)
    >>> len(cv["curve"]), 0 <= cv["epochs"] <= 4
    (5, True)
"""

from __future__ import annotations

__all__ = ["fit_cv"]

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..data import split_indices
from ..flows import Flow, initialize_
from .history import History
from .loop import fit
from .start import data_initialized


def fit_cv(
    make_flow: Callable[[], Flow],
    x: Tensor,
    context: Tensor | None = None,
    *,
    folds: int = 5,
    epochs: int = 100,
    seed: int = 0,
    rule: str = "best",
    **options: object,
) -> tuple[Flow, History, dict]:
    r"""Chooses the number of epochs by K-fold cross-validation, then refits on all rows.

    Args:
        make_flow: Builds a fresh, untrained flow (called ``folds + 1`` times).
        x: The rows, with shape :math:`(N, D)`, :math:`N \ge` ``folds``.
        context: Their contexts, with shape :math:`(N, C)`, or ``None``.
        folds: The number of folds :math:`K \ge 2`.
        epochs: The most epochs of each fold's fit (and of the refit's schedule).
        seed: Seeds the folds and every fit.
        rule: ``"best"``: the number of epochs of the best mean validation score;
            ``"clear"``: that number only if its gain over the start beats one standard
            error of the folds' gains, else 0 (the start): on small tables the folds' noise
            alone makes some training length look best.
        options: Options of :func:`arflows.fit` (batch size, learning rate, patience, ...)
            for every fit; ``valid`` is not allowed (the folds are the validation).

    Returns:
        The refitted flow, its :class:`History`, and the cross-validation summary:
        ``"curve"`` (the mean validation log-likelihood over folds after each epoch, the
        start first), ``"epochs"`` (the number chosen; 0 keeps the fitted start),
        ``"folds"``, and ``"refit_epochs"`` (the refit's epochs, of as many optimiser steps
        as the chosen epochs of a fold; absent when the start is kept).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"expected an integer `folds >= 2`, got {folds!r}")
    if rule not in ("best", "clear"):
        raise ValueError(f'expected `rule` "best" or "clear", got {rule!r}')
    if "valid" in options:
        raise ValueError("fit_cv validates on its folds: it takes no `valid`")
    n = len(x)
    if n < folds:
        raise ValueError(f"expected at least `folds` ({folds}) rows, got {n}")
    order = split_indices(n, (n,), torch.Generator().manual_seed(seed))[0]
    curves = []
    for k in range(folds):
        held = order[k::folds]
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        flow = make_flow()
        history = fit(
            flow, x[keep], None if context is None else context[keep],
            valid=(x[held], None if context is None else context[held]), epochs=epochs,
            seed=seed, **options,
        )  # fmt: skip
        curves.append(_curve(history, epochs))
    per_fold = torch.tensor(curves, dtype=torch.float64)  # (folds, epochs + 1)
    curve = per_fold.mean(0)
    chosen = int(torch.argmax(torch.nan_to_num(curve, nan=-math.inf)))
    if rule == "clear" and chosen > 0 and bool(per_fold[:, 0].isfinite().all()):
        gains = per_fold[:, chosen] - per_fold[:, 0]
        if not bool(gains.mean() > gains.std() / math.sqrt(folds)):  # NaN: not clear
            chosen = 0
    flow = make_flow()
    summary = {"curve": curve.tolist(), "epochs": chosen, "folds": folds}
    if chosen == 0 and data_initialized(flow):
        history = History()
        history.start = initialize_(flow, x, context, seed=seed)
        history.start.pop("mixture", None)
        return flow, history, summary

    # A fold's fit sees (K - 1) / K of the rows, so fewer steps per epoch than the refit on
    # all of them: the refit counts its epochs so that it takes the same optimiser steps on
    # the same schedule as the chosen training length of the folds.
    batch = options.get("batch_size", inspect.signature(fit).parameters["batch_size"].default)
    ratio = math.ceil((n - n // folds) / batch) / math.ceil(n / batch)
    stop = max(1, round(chosen * ratio))
    summary["refit_epochs"] = stop

    def stop_at_chosen(epoch: int, history: History, flow: Flow) -> bool:
        return epoch + 1 >= stop

    callbacks = (*options.pop("callbacks", ()), stop_at_chosen)
    history = fit(
        flow, x, context, valid=None, epochs=max(stop, round(epochs * ratio)), seed=seed,
        callbacks=callbacks, **options,
    )  # fmt: skip
    return flow, history, summary


def _curve(history: History, epochs: int) -> list[float]:
    """The validation score after each epoch, the start first, carried on past an early stop."""
    start = history.start_valid
    scores = [-math.inf if start is None else start, *history.valid]
    return scores + [scores[-1]] * (epochs + 1 - len(scores))
