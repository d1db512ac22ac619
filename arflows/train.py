r"""Maximum-likelihood training of a flow, with validation and early stopping.

Example:
    >>> import arflows
    >>> flow = arflows.MAF(2, transforms=2, hidden_features=(16, 16))
    >>> history = fit(flow, torch.randn(200, 2), epochs=3, progress=False)
    >>> len(history.train), history.best_epoch in range(3)
    (3, True)
"""

from __future__ import annotations

__all__ = ["History", "fit"]

import copy
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .flows import Flow


@dataclass
class History:
    r"""What :func:`fit` did: average log-likelihoods (nats per point) per epoch.

    Attributes:
        train: The training average log-likelihood of each epoch (running, over batches).
        valid: The validation average log-likelihood after each epoch.
        best_epoch: The epoch whose weights were kept (the best validation score).
        stopped_early: Whether the patience ran out before the last epoch.
    """

    train: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def _check_data(name: str, x: Tensor, rows: int | None = None) -> Tensor:
    x = torch.as_tensor(x)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"expected `{name}` to hold numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"expected `{name}` with shape (rows, columns), got {tuple(x.shape)}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"expected `{name}` with {rows} rows (as x), got {x.shape[0]}")
    bad = ~torch.isfinite(x.double())
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"`{name}` holds NaN or inf, first at row {row}, column {col}")
    return x


def _split(
    x: Tensor, c: Tensor | None, valid: float, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
    if not 0 < valid < 1:
        raise ValueError(f"expected a validation fraction `valid` in (0, 1), got {valid}")
    n_valid = max(1, round(valid * len(x)))
    if n_valid >= len(x):
        raise ValueError(f"too few rows ({len(x)}) to hold out a validation fraction {valid}")
    perm = torch.randperm(len(x), generator=generator)
    tr, va = perm[n_valid:], perm[:n_valid]
    return (x[tr], None if c is None else c[tr]), (x[va], None if c is None else c[va])


@torch.no_grad()
def _average_log_prob(flow: Flow, x: Tensor, c: Tensor | None, batch_size: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(x), batch_size):
        cb = None if c is None else c[i : i + batch_size]
        total += flow(cb).log_prob(x[i : i + batch_size]).sum().item()
    return total / len(x)


def fit(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    *,
    valid: float = 0.1,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int | None = 10,
    seed: int | None = None,
    progress: bool = True,
) -> History:
    r"""Fits a flow by maximum likelihood with Adam; keeps the best validation weights.

    Minimises :math:`-\frac{1}{N} \sum_n \log p(x_n \mid c_n)` over mini-batches. After each
    epoch the held-out average log-likelihood is measured; the best weights are restored at
    the end, and training stops after ``patience`` epochs without improvement.

    Args:
        flow: The flow to fit, in place.
        x: The data, with shape :math:`(N, D)`.
        context: The contexts, with shape :math:`(N, C)`, for conditional flows.
        valid: The fraction of rows held out for validation.
        epochs: The maximum number of passes over the training rows.
        batch_size: The mini-batch size.
        lr: The Adam learning rate.
        patience: Epochs without validation improvement before stopping (``None``: never).
        seed: Seeds the split and the batch order.
        progress: Whether to show a tqdm progress bar (only on a terminal).

    Returns:
        The :class:`History` of the fit.

    Raises:
        FloatingPointError: If the loss becomes NaN or infinite; the best weights so far are
            restored first.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"expected `epochs >= 1`, `batch_size >= 1` and `lr > 0`, got {epochs}, "
            f"{batch_size} and {lr}"
        )
    dtype = next(flow.parameters()).dtype
    x = _check_data("x", x).to(dtype)
    c = None if context is None else _check_data("context", context, len(x)).to(dtype)
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    (x_tr, c_tr), (x_va, c_va) = _split(x, c, valid, generator)
    device = next(flow.parameters()).device
    x_tr, x_va = x_tr.to(device), x_va.to(device)
    c_tr = None if c_tr is None else c_tr.to(device)
    c_va = None if c_va is None else c_va.to(device)

    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    history, best = History(), (-math.inf, copy.deepcopy(flow.state_dict()))
    bar = _progress(epochs, progress)
    try:
        for epoch in range(epochs):
            flow.train()
            order = torch.randperm(len(x_tr), generator=generator).to(device)
            total = 0.0
            for step, i in enumerate(range(0, len(x_tr), batch_size)):
                idx = order[i : i + batch_size]
                loss = -flow(None if c_tr is None else c_tr[idx]).log_prob(x_tr[idx]).mean()
                if not torch.isfinite(loss):
                    flow.load_state_dict(best[1])
                    raise FloatingPointError(
                        f"the loss became {loss.item()} at epoch {epoch}, step {step}; the "
                        f"best weights so far (epoch {history.best_epoch}) were restored"
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total -= loss.item() * len(idx)
            flow.eval()
            history.train.append(total / len(x_tr))
            history.valid.append(_average_log_prob(flow, x_va, c_va))
            if history.valid[-1] > best[0]:
                best = (history.valid[-1], copy.deepcopy(flow.state_dict()))
                history.best_epoch = epoch
            if bar is not None:
                bar.set_postfix(train=f"{history.train[-1]:.3f}", valid=f"{history.valid[-1]:.3f}")
                bar.update()
            if patience is not None and epoch - history.best_epoch >= patience:
                history.stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    flow.load_state_dict(best[1])
    return history


def _progress(total: int, enabled: bool) -> object | None:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch")
