r"""What :func:`arflows.fit` did, epoch by epoch."""

from __future__ import annotations

__all__ = ["History"]

from dataclasses import dataclass, field


@dataclass
class History:
    r"""What :func:`~arflows.fit` did: average log-likelihoods (nats per data row) per epoch.

    The log-likelihoods are those of the data as given (the flow's stored standardisation
    is part of the density), of the dequantised data where columns are dequantised.

    Attributes:
        train: The training average log-likelihood of each epoch (running, over batches).
        valid: The validation average log-likelihood after each epoch (empty without
            validation).
        lr: The learning rate at the start of each epoch.
        best_epoch: The epoch whose weights were kept: the best validation score, or the
            last completed epoch without validation; -1 for the initial weights.
        stopped_early: Whether training ended before ``epochs`` because the patience ran
            out or a callback asked to stop.
        stopped_nonfinite: ``None``, or the message saying where the loss (or gradient)
            became NaN or infinite; training stopped there and the weights of
            ``best_epoch`` were kept.
        seconds: The wall-clock duration of the whole fit, in seconds.
        start: What the data-dependent start fitted (see :func:`arflows.flows.initialize_`:
            the base, the number of mixture components chosen and the validation score of
            each size tried), or ``None`` when the flow had nothing to fit before training.
        start_valid: The validation average log-likelihood of the starting point (after the
            data-dependent start), which the epochs must beat to be kept; ``None`` without
            a data-dependent start or without validation.
    """

    train: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    stopped_nonfinite: str | None = None
    seconds: float = 0.0
    start: dict | None = None
    start_valid: float | None = None
