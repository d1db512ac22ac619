r"""Several mask sets in one MADE, for order-agnostic training.

A :class:`~arflows.nn.MADE` built with ``orders=K > 1`` holds :math:`K` mask sets (the paper's
section 4): set 0 uses its ``order``, the others random orders, each with its own hidden
degrees. One set is active: the network's degree buffers and masks hold it, and everything
that reads them (the forward pass, its block plans, the connectivity, the one-sweep inverse)
uses it. The network never switches by itself: a transform built for one minibatch calls it
several times (value, log-determinant, inverse passes), and all those calls must see the same
masks.

References:
    MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
    https://arxiv.org/abs/1502.03509
"""

from __future__ import annotations

__all__ = ["MaskSets"]

import torch
from torch import LongTensor

from ..checks import is_int

DegreeSet = tuple[LongTensor, list[LongTensor]]
"""The input degrees :math:`(D,)` and the hidden degrees :math:`(H_k,)` of one mask set."""


class MaskSets:
    """The mask sets of a MADE and the switch between them (a base class of the module).

    All sets and the active index are buffers of the module (``input_degrees_sets`` with shape
    :math:`(K, D)`, ``degrees_{j}_sets`` with shape :math:`(K, H_j)`, ``mask_sets_index``), so
    the state dict saves them and ``.to`` moves them; with one set there are none. They are
    the module's own buffers, not a submodule's, so that the state-dict keys stay those of
    saved models.

    The module holds the active set in its buffers ``input_degrees`` and ``degrees_{j}``, and
    provides ``hidden_features``, ``order`` and ``_use_degrees(in_deg, degrees)``, which writes
    a set into those buffers and its layers' masks.
    """

    def _hold_sets(self, sets: list[DegreeSet]) -> None:
        """Keeps ``sets`` as buffers; set 0 is the active one (already in the module)."""
        self.orders, self._mask_index = len(sets), 0
        if self.orders == 1:
            return
        self.register_buffer("input_degrees_sets", torch.stack([s[0] for s in sets]))
        for j in range(len(self.hidden_features)):
            self.register_buffer(f"degrees_{j}_sets", torch.stack([s[1][j] for s in sets]))
        self.register_buffer("mask_sets_index", torch.tensor(0))
        self.register_load_state_dict_post_hook(_restore_mask_set)

    @property
    def mask_index(self) -> int:
        """The index of the active mask set, in :math:`0..K-1` (always 0 with one order)."""
        return self._mask_index

    @property
    def all_orders(self) -> LongTensor:
        """The rank of each feature in each mask set's order, with shape :math:`(K, D)`."""
        if self.orders == 1:
            return self.order[None]
        return self.input_degrees_sets - 1

    def select(self, index: int) -> None:
        """Makes mask set ``index`` the active one.

        Args:
            index: The mask set, in :math:`0..K-1`.
        """
        if not is_int(index) or not 0 <= index < self.orders:
            raise ValueError(
                f"expected a mask set index in 0..{self.orders - 1} (orders={self.orders}), "
                f"got {index!r}"
            )
        if index != self._mask_index:
            self._activate_set(index)

    def cycle(self) -> int:
        """Makes the next mask set (cyclically) the active one, and returns its index."""
        self.select((self._mask_index + 1) % self.orders)
        return self._mask_index

    def _activate_set(self, index: int) -> None:
        if self.orders == 1:
            return
        in_deg = self.input_degrees_sets[index].clone()
        degrees = [
            getattr(self, f"degrees_{j}_sets")[index].clone()
            for j in range(len(self.hidden_features))
        ]
        self._use_degrees(in_deg, degrees)
        self.mask_sets_index.fill_(index)
        self._mask_index = index

    def _degree_sets(self) -> list[DegreeSet]:
        """Every mask set's degrees, as stored (the active set's with one order)."""
        if self.orders == 1:
            return [(self.input_degrees, self.degrees)]
        hidden = [getattr(self, f"degrees_{j}_sets") for j in range(len(self.hidden_features))]
        return [(self.input_degrees_sets[k], [h[k] for h in hidden]) for k in range(self.orders)]

    def _check_index(self) -> None:
        """Refuses a stored active index out of range (from a foreign or edited state dict)."""
        if self.orders == 1:
            return
        index = int(self.mask_sets_index)
        if not 0 <= index < self.orders:
            raise ValueError(f"the active mask set index {index} is not in 0..{self.orders - 1}")


def _restore_mask_set(module: MaskSets, incompatible_keys: object) -> None:
    # The loaded active masks match the loaded index; rebuilding them from the loaded sets
    # also keeps the Python-side index in step.
    module._activate_set(int(module.mask_sets_index))
