r"""Data: built-in datasets, tables and readers, Parquet streaming, dequantization.

* :mod:`~arflows.data.datasets`: figure 1 of the MAF paper, the 2-D toys, digits.
* :mod:`~arflows.data.tables`: :class:`Table`, :func:`read_table` and :func:`write_table`
  (CSV, NPY/NPZ, Parquet, read into memory).
* :mod:`~arflows.data.parquet`: :class:`ParquetStream`, a Parquet file read in batches.
* :mod:`~arflows.data.columns`: :class:`DataError` and the column checks the readers share,
  :func:`check_rows` (columns without a density).
* :mod:`~arflows.data.dequantization`: :func:`dequantize`, :func:`discrete_log_prob`, and
  columns on a grid (ties): :func:`grid_step`, :func:`grid_columns`, :func:`grid_origins`,
  :func:`floor_to_grid`, :func:`describe_ties`.
* :mod:`~arflows.data.splits`: :func:`split_indices`, the one random split of rows.
"""

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT",
    "DataError",
    "ParquetStream",
    "Table",
    "check_rows",
    "checkerboard",
    "describe_ties",
    "digits",
    "digits_splits",
    "dequantize",
    "discrete_log_prob",
    "eight_gaussians",
    "figure1",
    "figure1_log_prob",
    "floor_to_grid",
    "grid_columns",
    "grid_origins",
    "grid_step",
    "integer_columns",
    "load_dataset",
    "moons",
    "pinwheel",
    "read_table",
    "rings",
    "spirals",
    "split_indices",
    "write_table",
]

from .columns import DataError, check_rows
from .datasets import (
    DATASETS,
    DIGITS_SPLIT,
    checkerboard,
    digits,
    digits_splits,
    eight_gaussians,
    figure1,
    figure1_log_prob,
    load_dataset,
    moons,
    pinwheel,
    rings,
    spirals,
)
from .dequantization import (
    dequantize,
    describe_ties,
    discrete_log_prob,
    floor_to_grid,
    grid_columns,
    grid_origins,
    grid_step,
    integer_columns,
)
from .parquet import ParquetStream
from .splits import split_indices
from .tables import Table, read_table, write_table
