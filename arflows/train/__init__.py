r"""Maximum-likelihood training: :func:`fit`, its rows, steps, checkpoints and processes.

* :mod:`~arflows.train.loop`: :func:`fit`, read top to bottom.
* :mod:`~arflows.train.setup`: options, rows, validation split, noise, standardisation.
* :mod:`~arflows.train.step`: the optimisation step and the data-parallel (DDP) set-up.
* :mod:`~arflows.train.validation`: scores, best weights and early stopping per epoch.
* :mod:`~arflows.train.rows`: where the rows come from (tensors, Datasets, DataLoaders,
  Parquet streams).
* :mod:`~arflows.train.checkpoint`: atomic checkpoints without pickle, and resuming.
* :mod:`~arflows.train.distributed`: the process group as a fit sees it (torchrun).
* :mod:`~arflows.train.history`: :class:`History`, what a fit did.
* :mod:`~arflows.train.start`: the data-dependent start (the classical fit the flow starts at).
* :mod:`~arflows.train.crossval`: the training length chosen by K-fold cross-validation.
* :mod:`~arflows.train.auto`: model selection within a time budget (``arflows fit --auto``).
* :mod:`~arflows.train.sizing`: training options sized to a table (the command line's
  defaults).
"""

__all__ = [
    "CANDIDATES",
    "Candidate",
    "CheckpointError",
    "History",
    "Sizing",
    "World",
    "current_world",
    "fit",
    "fit_auto",
    "fit_cv",
    "init_from_env",
    "read_checkpoint",
    "shutdown",
    "training_options",
    "write_checkpoint",
]

from .auto import CANDIDATES, Candidate, fit_auto
from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .crossval import fit_cv
from .distributed import World, current_world, init_from_env, shutdown
from .history import History
from .loop import fit
from .sizing import Sizing, training_options
