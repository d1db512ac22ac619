r"""Training options sized to the data: the defaults of ``arflows fit``.

A table of 150 rows and one of 100,000 need different training: with a fixed batch of 256 the
small one gets one optimiser step an epoch, and a patience of 10 epochs is then 10 steps judged
on 15 validation rows. Here the budget and the patience are counted in **optimiser steps** and
converted to the epochs :func:`arflows.fit` counts, the batch is a share of the rows, and the
network and weight decay shrink with the rows per column.

Example:
    >>> sized = training_options(142, 13)
    >>> sized.batch_size, sized.steps_per_epoch, sized.hidden_features
    (16, 9, (32, 32))
"""

from __future__ import annotations

__all__ = ["Sizing", "training_options", "model_warning"]

import math
from dataclasses import asdict, dataclass

# Aimed-for totals, in optimiser steps; an epoch count follows from the rows.
STEPS = 4000
PATIENCE_STEPS = 400
MAX_EPOCHS = 2000


@dataclass(frozen=True)
class Sizing:
    """Training options for a table (see :func:`training_options`).

    Attributes:
        batch_size: Rows per optimiser step.
        steps_per_epoch: Optimiser steps in one pass over the training rows.
        epochs: The most passes (about ``STEPS`` steps in all).
        patience: Epochs without a better validation score before stopping (about
            ``PATIENCE_STEPS`` steps).
        weight_decay: AdamW's decoupled weight decay: larger for fewer rows per column, so
            small tables stay close to the (data-initialised) start.
        hidden_features: Hidden widths of each layer's network.
        warmup: Optimiser steps of linear learning-rate warm-up.
    """

    batch_size: int
    steps_per_epoch: int
    epochs: int
    patience: int
    weight_decay: float
    hidden_features: tuple[int, ...]
    warmup: int

    def as_dict(self) -> dict:
        """The options as a plain dict (for reports)."""
        return asdict(self)


def training_options(rows: int, features: int, context: int = 0) -> Sizing:
    r"""Training options sized to a table of ``rows`` training rows and ``features`` columns.

    Args:
        rows: Training rows :math:`N` (without the validation rows).
        features: Data columns :math:`D`.
        context: Context columns :math:`C` of a conditional model: they count as columns for
            the weight decay and widths (the networks read them all), not for the steps.

    Returns:
        The options: batch :math:`\mathrm{clip}(N / 10, 16, 256)`; epochs for about 4,000
        steps (at most 2,000 epochs); patience of about 400 steps (at least 5 epochs);
        weight decay from :math:`10^{-2}` (under 20 rows per column, :math:`N / (D + C)`) down
        to :math:`10^{-4}`;
        hidden widths 32, 64 or 128 by rows per column; 100 warm-up steps, at most a tenth of
        the budget.
    """
    if rows < 1 or features < 1:
        raise ValueError(f"expected at least one row and column, got {rows} x {features}")
    if context < 0:
        raise ValueError(f"expected `context >= 0` columns, got {context}")
    batch = int(min(256, max(16, round(rows / 10))))
    steps = max(1, math.ceil(rows / batch))
    epochs = int(min(MAX_EPOCHS, max(20, math.ceil(STEPS / steps))))
    patience = int(max(5, math.ceil(PATIENCE_STEPS / steps)))
    per_column = rows / (features + context)
    if per_column < 20:
        decay, hidden = 1e-2, (32, 32)
    elif per_column < 200:
        decay, hidden = 1e-3, (64, 64)
    else:
        decay, hidden = 1e-4, (128, 128)
    if rows < 1000:
        hidden = (32, 32)
    warmup = int(min(100, epochs * steps // 10))
    return Sizing(batch, steps, epochs, patience, decay, hidden, warmup)


def model_warning(parameters: int, rows: int, features: int) -> str | None:
    """A warning when a table is very small for the model asked for, else ``None``.

    Args:
        parameters: The model's trainable parameters.
        rows: Training rows.
        features: Data columns.
    """
    if rows < 5 * features:
        return (
            f"only {rows} training rows for {features} columns: any density of that many "
            "columns is poorly determined by so few rows; expect the classical start "
            "(a Gaussian or mixture) to be kept"
        )
    if parameters > 50 * rows * features:
        return (
            f"the flow has {parameters:,} parameters for {rows} training rows of {features} "
            "columns: it can memorise them; early stopping and weight decay guard against "
            "it, but a smaller model (--hidden, --transforms) is likely better"
        )
    return None
