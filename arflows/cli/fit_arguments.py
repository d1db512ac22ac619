"""The options of ``arflows fit``: data, flow, training and output arguments."""

from __future__ import annotations

__all__ = ["fit_parser"]

import argparse
from pathlib import Path

from ..flows import flow_classes
from .parsing import (
    add_command,
    bound,
    force_argument,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

_DESCRIPTION = (
    "Fits a normalizing flow by maximum likelihood to the rows of DATA (CSV with a header, "
    "NPY, NPZ or Parquet), holding out a validation split for early stopping and a test "
    "split for an honest score. Prints the train/valid/test average log-likelihood in "
    "nats per row, and writes the model directory (model.safetensors, config.json) with "
    "report.json, report.md and loss.png. Without DATA it fits the built-in figure-1 "
    "density of the MAF paper (or --dataset NAME). Data and context are standardised "
    "inside the model; integer columns and columns on a grid are dequantized (uniform "
    "noise of the grid's step) unless --dequantize none. With --stream a Parquet file "
    "is read in batches, never whole. "
    "Launched by torchrun, the processes train data-parallel (gloo on CPU, NCCL on GPUs) "
    "with --batch-size rows per step in all, and only rank 0 prints and writes."
)
_EXAMPLES = (
    "  arflows fit                                  # built-in figure-1 data -> model/\n"
    "  arflows fit data.csv --flow nsf -o model\n"
    "  arflows fit data.csv --columns x y --context-columns t --epochs 200 -o model\n"
    "  arflows fit big.parquet --stream --batch-size 4096 -o model\n"
    "  torchrun --nproc_per_node 4 -m arflows fit data.csv -o model   # data-parallel\n"
)


def fit_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``fit`` with its options to the subcommands, and returns its parser."""
    p = add_command(
        commands,
        "fit",
        "fit a flow to a data file (or a built-in dataset) and save it",
        _DESCRIPTION,
        _EXAMPLES,
    )
    _data_arguments(p)
    _flow_arguments(p)
    _training_arguments(p)
    _run_arguments(p)
    _output_arguments(p)
    return p


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", type=Path, metavar="DATA", help="the data file")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="a built-in dataset instead of DATA: figure1 (default), moons, 8gaussians, "
        "checkerboard, pinwheel, spirals, rings, digits",
    )
    p.add_argument(
        "--points", type=positive_int, metavar="N", help="rows drawn from a built-in dataset"
    )
    p.add_argument("--columns", nargs="+", metavar="NAME", help="data columns (default: all)")
    p.add_argument("--context-columns", nargs="+", metavar="NAME", help="columns to condition on")


def _flow_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flow",
        default="maf",
        metavar="NAME",
        help=f"the flow family: {', '.join(sorted(flow_classes()))} (maf)",
    )
    p.add_argument(
        "--transforms", type=positive_int, default=5, metavar="K", help="flow layers (5)"
    )
    p.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        metavar="H",
        help="hidden widths of each layer's network (default: by rows per column, 32 to 128)",
    )
    p.add_argument(
        "--base",
        choices=("gmm", "gaussian", "normal", "mog"),
        help="the base distribution: gmm (default where the family takes one: a "
        "full-covariance Gaussian mixture fitted by EM before training, its size chosen on "
        "the validation rows), gaussian (one component), normal (N(0, I), no start fit), "
        "mog (MADE mixture of Gaussians)",
    )
    p.add_argument(
        "--components",
        type=positive_int,
        metavar="K",
        help="the most mixture components of the gmm base (8), or of the mog base (10)",
    )
    p.add_argument(
        "--marginals",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a monotone spline per column, first fitted to Gaussianise each column's "
        "distribution (default: on with a gmm or gaussian base)",
    )
    p.add_argument(
        "--bins", type=positive_int, metavar="K", help="spline bins (nsf only; default 8)"
    )


def _training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="maximum epochs (default: about 4,000 optimiser steps' worth)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="mini-batch rows (default: a tenth of the training rows, 16 to 256)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=1e-3, metavar="LR", help="learning rate (1e-3)"
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        metavar="N",
        help="epochs without progress (default: about 400 optimiser steps' worth)",
    )
    p.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        metavar="W",
        help="AdamW weight decay (default: 1e-2 to 1e-4, less with more rows per column)",
    )
    p.add_argument(
        "--warmup",
        type=nonnegative_int,
        metavar="STEPS",
        help="optimiser steps of learning-rate warm-up (default: 100, at most a tenth)",
    )
    p.add_argument(
        "--schedule", choices=("cosine", "plateau", "none"), help="learning-rate schedule"
    )
    p.add_argument(
        "--valid-fraction", type=fraction, default=0.1, metavar="F", help="validation rows (0.1)"
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=0.1,
        metavar="F",
        help="held-out test rows (0.1; 0: none)",
    )
    p.add_argument(
        "--dequantize",
        choices=("auto", "none"),
        default="auto",
        help="auto: add uniform noise of their grid's step to integer columns and columns on "
        "a grid (default); none: never",
    )


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the split, init and noise (0)"
    )
    p.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="torch device, e.g. cuda (cpu)"
    )
    p.add_argument(
        "--auto",
        action="store_true",
        help="try several flow families and sizes within --budget seconds, keep the best on "
        "the validation rows; prints the candidates and writes MODEL_DIR/candidates.csv",
    )
    p.add_argument(
        "--folds",
        type=positive_int,
        metavar="K",
        help="choose how long to train (or to keep the fitted start) by K-fold "
        "cross-validation on the train rows, then refit on all of them: for small tables, "
        "where the validation split is a handful of rows (costs K + 1 fits)",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="the time for all --auto candidates together (300)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads (default: 1 for batches under 256 rows, whose small products only "
        "lose time to threading; else torch's default)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--stream",
        action="store_true",
        help="read a Parquet DATA file in batches instead of into memory (for more rows than "
        "fit in RAM); splits are drawn row by row, integer-typed columns are dequantized",
    )


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("model"),
        metavar="MODEL_DIR",
        help="the model directory to write (model); checkpoints go to MODEL_DIR.partial/ "
        "until it is written",
    )
    p.add_argument(
        "--bounds",
        nargs="+",
        type=bound,
        metavar="COL=LOW:HIGH",
        help="bounded columns, e.g. income=0: share=0:1 (an empty side is unbounded); the "
        "model's support, so samples stay inside; data on or outside a bound is refused",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the fit from MODEL_DIR.partial/checkpoint.safetensors (same command "
        "otherwise); starts afresh without one",
    )
    force_argument(p, "replace an existing model directory MODEL_DIR")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        metavar="N",
        help="write the checkpoint every N steps (default: after each epoch)",
    )
