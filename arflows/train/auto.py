r"""Model selection: fit a few flow families and sizes within a time budget, keep the best.

:func:`fit_auto` is ``arflows fit --auto`` as a function. Every candidate is built by name
(:func:`arflows.flows.build`), trained with the options :func:`~arflows.train.training_options`
sizes to the rows, for at most its share of the budget, and scored on the validation rows;
the best validation score wins. Every candidate starts at its data-initialised classical fit
(a Gaussian mixture base) and keeps it unless training beats it, so the winner is never
below the best classical start.

Example:
    >>> import torch
    >>> x = torch.randn(300, 2) @ torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    >>> flow, history, table = fit_auto(x, valid=x[:60], budget=5, candidates=CANDIDATES[:2])
    >>> [row["candidate"] for row in table], flow.features
    (['maf', 'nsf'], 2)
"""

from __future__ import annotations

__all__ = ["CANDIDATES", "Candidate", "fit_auto"]

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..flows import Flow, build
from .history import History
from .loop import fit
from .sizing import training_options


@dataclass(frozen=True)
class Candidate:
    """A flow family and its options, tried by :func:`fit_auto`.

    Attributes:
        name: The name in the candidates table.
        family: The flow family for :func:`arflows.flows.build` (``"maf"``, ``"nsf"``, ...).
        options: Builder options; ``hidden_features`` defaults to the sized width, scaled
            by ``width``.
        width: A factor on the sized hidden width.
    """

    name: str
    family: str
    options: dict = field(default_factory=dict)
    width: float = 1.0


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("maf", "maf", {"transforms": 5, "base": "gmm", "components": 8, "marginals": True}),
    Candidate(
        "nsf", "nsf", {"transforms": 3, "base": "gmm", "components": 8, "marginals": True}
    ),
    Candidate(
        "maf-small", "maf", {"transforms": 2, "base": "gmm", "components": 8, "marginals": True},
        width=0.5,
    ),
    Candidate(
        "maf-wide", "maf", {"transforms": 5, "base": "gmm", "components": 12, "marginals": True},
        width=2.0,
    ),
    Candidate(
        "nsf-deep", "nsf", {"transforms": 6, "base": "gmm", "components": 8, "marginals": True}
    ),
)  # fmt: skip


def fit_auto(
    x: Tensor,
    context: Tensor | None = None,
    *,
    valid: Tensor | tuple[Tensor, Tensor | None],
    budget: float = 300.0,
    candidates: Sequence[Candidate] = CANDIDATES,
    seed: int = 0,
    dequantize: Sequence[int] | None = None,
    support: Sequence | None = None,
    progress: bool = False,
    report: Callable[[dict], None] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Flow, History, list[dict]]:
    r"""Fits each candidate within its share of ``budget`` and returns the best on ``valid``.

    Args:
        x: The training rows, with shape :math:`(N, D)`.
        context: Their contexts, with shape :math:`(N, C)`, or ``None``.
        valid: The validation rows (with shape :math:`(M, D)`), or ``(x_valid, c_valid)``.
        budget: Seconds for all candidates together (each gets an equal share; a fit stops
            after the epoch that passes its share).
        candidates: The :class:`Candidate` s to try.
        seed: Seeds every candidate's initialisation and training.
        dequantize: Column indices of integer-valued data (see :func:`arflows.fit`).
        support: Bounded columns (see :class:`arflows.Flow`), for every candidate.
        progress: Whether to show each fit's progress bar.
        report: Called with each candidate's row of the table as soon as it is fitted.
        device: Where the candidates are built and trained (the rows follow them).

    Returns:
        The fitted best flow, its :class:`History`, and the table of candidates: one dict
        per candidate with ``candidate``, ``flow``, ``options``, ``valid`` (the validation average
        log-likelihood of its kept weights), ``epochs``, ``seconds``, ``kept`` (``"start"``
        or the epoch) and ``selected``.
    """
    if not (isinstance(budget, int | float) and budget > 0 and math.isfinite(budget)):
        raise ValueError(f"expected a positive `budget` in seconds, got {budget!r}")
    if not candidates:
        raise ValueError("expected at least one candidate")
    features, ctx = x.shape[-1], 0 if context is None else context.shape[-1]
    sized = training_options(len(x), features)
    share = budget / len(candidates)
    table, best, best_score = [], None, -math.inf
    for candidate in candidates:
        options = dict(candidate.options)
        hidden = max(8, round(sized.hidden_features[0] * candidate.width))
        options.setdefault("hidden_features", (hidden,) * len(sized.hidden_features))
        if support is not None:
            options["support"] = support
        torch.manual_seed(seed)
        flow = build(candidate.family, features, ctx, **options).to(device)
        history = _fit_for(flow, x, context, valid, sized, share, seed, dequantize, progress)
        score = _kept_score(history)
        row = {
            "candidate": candidate.name,
            "flow": type(flow).__name__,
            "options": {k: v for k, v in options.items() if k != "support"},
            "valid": score,
            "epochs": len(history.train),
            "seconds": history.seconds,
            "kept": "start" if history.best_epoch < 0 else history.best_epoch,
            "selected": False,
        }
        table.append(row)
        if report is not None:
            report(row)
        if best is None or score > best_score:
            best, best_score = (flow, history, row), score
    best[2]["selected"] = True
    return best[0], best[1], table


def _fit_for(
    flow: Flow,
    x: Tensor,
    context: Tensor | None,
    valid: object,
    sized: object,
    seconds: float,
    seed: int,
    dequantize: Sequence[int] | None,
    progress: bool,
) -> History:
    deadline = time.perf_counter() + seconds

    def out_of_time(epoch: int, history: History, flow: Flow) -> bool:
        return time.perf_counter() > deadline

    return fit(
        flow,
        x,
        context,
        valid=valid,
        epochs=sized.epochs,
        batch_size=sized.batch_size,
        patience=sized.patience,
        weight_decay=sized.weight_decay,
        warmup=sized.warmup,
        dequantize=dequantize,
        seed=seed,
        progress=progress,
        callbacks=[out_of_time],
    )


def _kept_score(history: History) -> float:
    """The validation score of the weights the fit kept."""
    if history.best_epoch < 0:
        return -math.inf if history.start_valid is None else history.start_valid
    return history.valid[history.best_epoch]
