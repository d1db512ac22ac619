"""``arflows fit``: fit a flow to a data file or a built-in dataset, save it with a report."""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data import (
    ParquetStream,
    Table,
    check_rows,
    describe_ties,
    grid_columns,
    grid_origins,
    load_dataset,
    read_table,
)
from ..files import FileExists
from ..flows import Flow, build, flow_classes, flow_options
from ..io import is_model_dir, save
from ..train import (
    CANDIDATES,
    History,
    Sizing,
    World,
    fit,
    fit_auto,
    init_from_env,
    shutdown,
    training_options,
)
from ..train.sizing import model_warning
from .common import (
    CHUNK,
    fingerprint,
    finite,
    fmt,
    fractions,
    scores,
    short,
    split,
)
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
from .report import candidate_line, write_candidates, write_report

# The most mixture components the default gmm base tries (chosen on the validation rows).
DEFAULT_COMPONENTS = 8

_DESCRIPTION = (
    "Fits a normalizing flow by maximum likelihood to the rows of DATA (CSV with a header, "
    "NPY, NPZ or Parquet), holding out a validation split for early stopping and a test "
    "split for an honest score. Prints the train/valid/test average log-likelihood in "
    "nats per row, and writes the model directory (model.safetensors, config.json) with "
    "report.json, report.md and loss.png. Without DATA it fits the built-in figure-1 "
    "density of the MAF paper (or --dataset NAME). Data and context are standardised "
    "inside the model; integer-valued columns are dequantized (uniform noise) unless "
    "--dequantize none. With --stream a Parquet file is read in batches, never whole. "
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``fit`` to the subcommands."""
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
    _output_arguments(p)
    p.set_defaults(run=run)


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
        help="auto: add U[0,1) noise to integer-valued columns (default); none: never",
    )
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


# --- the data -------------------------------------------------------------------------------


@dataclass
class _Splits:
    """What a fit draws on: the rows of each split and how to score them."""

    source: str
    dataset: str | None
    rows: int
    columns: list[str]
    context_columns: list[str]
    dequantize: dict[int, float] | list[int]  # {column: grid step}, or integer columns
    train: object  # (x, c) tensors, or a ParquetStream part
    valid: object | None
    test: object | None
    counts: dict[str, int]
    score: Callable[[Flow, object, int], float]
    notes: list[str]
    origins: dict[int, float]


def _load_data(args: argparse.Namespace) -> tuple[Table, str, str | None]:
    if args.data is not None:
        if args.dataset is not None or args.points is not None:
            raise ValueError("give either DATA or --dataset/--points, not both")
        table = read_table(args.data, columns=args.columns, context_columns=args.context_columns)
        return table, str(args.data), None
    if args.columns or args.context_columns:
        raise ValueError("--columns and --context-columns select columns of a DATA file")
    name = args.dataset or "figure1"
    table = load_dataset(name, args.points, seed=args.seed)
    return table, f"built-in dataset {name!r}", name


def _in_memory(args: argparse.Namespace) -> _Splits:
    table, source, dataset = _load_data(args)
    x, c = table.x, table.c
    # Integer columns and other columns on a grid (multiples of 1000, of 0.5, ...) get noise
    # of their grid's step, so their cells are spread over, not spikes.
    cols = grid_columns(x) if args.dequantize == "auto" else {}
    ties = describe_ties(x, table.columns, dequantized=cols)
    notes = table.notes + check_rows(x, table.columns, dequantized=list(cols))
    notes += [f"column {t['column']!r}: {t['action']}" for t in ties]
    origins = grid_origins(x, cols)
    train, valid, test = split(len(x), args.valid_fraction, args.test_fraction, args.seed)

    def rows(idx: Tensor) -> tuple[Tensor, Tensor | None] | None:
        return (x[idx], None if c is None else c[idx]) if len(idx) else None

    def score(flow: Flow, part: tuple[Tensor, Tensor | None], seed: int) -> float:
        return scores(flow, *part, cols, draws=1, seed=seed).mean().item()

    counts = {"train": len(train), "valid": len(valid), "test": len(test)}
    return _Splits(
        source, dataset, len(x), table.columns, table.context_columns, cols,
        rows(train), rows(valid), rows(test), counts, score, notes, origins,
    )  # fmt: skip


def _streamed(args: argparse.Namespace) -> _Splits:
    if args.data is None or args.data.suffix.lower() != ".parquet":
        raise ValueError(
            "--stream reads a Parquet file in batches: give a .parquet DATA file (without "
            f"--stream, other formats are read into memory), got {args.data or 'none'}"
        )
    stream = ParquetStream(args.data, args.columns, args.context_columns)
    cols = list(stream.integer_columns) if args.dequantize == "auto" else []
    parts = stream.split(fractions(args.valid_fraction, args.test_fraction), seed=args.seed)
    counts = dict(zip(("train", "valid", "test"), (p.rows for p in parts), strict=True))
    if counts["train"] < 2:
        raise ValueError(
            f"too few rows ({stream.rows}) for --valid-fraction {args.valid_fraction} and "
            f"--test-fraction {args.test_fraction}"
        )

    def score(flow: Flow, part: ParquetStream, seed: int) -> float:
        total, n = 0.0, 0
        for i, (x, c) in enumerate(part.batches(CHUNK)):
            lp = scores(flow, x, c, cols, draws=1, seed=(seed * 1_000_003 + i) % 2**62)
            total, n = total + lp.double().sum().item(), n + len(x)
        return total / n

    valid, test = (p if p.rows else None for p in parts[1:])
    return _Splits(
        f"{args.data} (streamed)", None, stream.rows, stream.columns, stream.context_columns,
        cols, parts[0], valid, test, counts, score, [], {},
    )  # fmt: skip


# --- the flow -------------------------------------------------------------------------------


def _build_flow(args: argparse.Namespace, data: _Splits) -> Flow:
    if args.flow.lower() not in flow_classes():
        available = ", ".join(sorted(flow_classes()))
        raise ValueError(f"unknown --flow {args.flow!r}; available: {available}")
    hidden = args.hidden or _sizing(data).hidden_features
    options: dict = dict(transforms=args.transforms, hidden_features=tuple(hidden))
    if args.bins is not None:
        options["bins"] = args.bins
    options.update(_base_options(args, data))
    if args.bounds:
        options["support"] = _support(args.bounds, data)
    accepted = flow_options(args.flow)
    missing = [name for name in options if name not in accepted]
    if missing:
        raise ValueError(
            f"--flow {args.flow} takes no {', '.join(missing)} argument "
            f"({'--bins is for spline flows' if 'bins' in missing else 'not a CLI flow'})"
        )
    return build(args.flow, len(data.columns), len(data.context_columns), **options)


def _sizing(data: _Splits) -> Sizing:
    return training_options(data.counts["train"], len(data.columns))


def _base_options(args: argparse.Namespace, data: _Splits) -> dict:
    """The base and marginal options: a fitted mixture start where the family takes one."""
    accepted = flow_options(args.flow)
    explicit = {
        "base": args.base,
        "components": args.components,
        "marginals": args.marginals,
    }
    for name, value in explicit.items():
        if value is not None and name not in accepted:
            raise ValueError(f"--flow {args.flow} takes no --{name} option")
    if "base" not in accepted:
        return {}
    base = args.base or "gmm"
    options: dict = {"base": base}
    if base == "gmm" or (base == "mog" and args.components is not None):
        options["components"] = args.components or DEFAULT_COMPONENTS
    marginals = args.marginals
    if marginals is None:  # Gaussianised columns help the fitted Gaussian or mixture
        marginals = base in ("gmm", "gaussian") and not args.stream and "marginals" in accepted
    if marginals:
        options["marginals"] = True
    return options


def _support(bounds: Sequence[tuple], data: _Splits) -> list[tuple | None]:
    """``support=`` of the flow from ``--bounds``, refusing rows on or outside a bound."""
    support: list[tuple | None] = [None] * len(data.columns)
    for name, lower, upper in bounds:
        if name not in data.columns:
            raise ValueError(
                f"--bounds names {name!r}, which is not a data column (data columns: "
                f"{short(data.columns)})"
            )
        j = data.columns.index(name)
        if support[j] is not None:
            raise ValueError(f"--bounds gives column {name!r} twice")
        support[j] = (lower, upper)
        _check_inside(name, j, lower, upper, data)
    return support


def _check_inside(
    name: str, j: int, lower: float | None, upper: float | None, data: _Splits
) -> None:
    # Streamed rows are checked by the fit itself (their log-density would be -inf).
    parts = [p for p in (data.train, data.valid, data.test) if isinstance(p, tuple)]
    if not parts:
        return
    x = torch.cat([p[0][:, j] for p in parts])
    # A dequantized integer k becomes k + u, u in [0, 1): it must fit in [k, k + 1).
    top = x + 1 if j in data.dequantize else x
    low = lower is not None and ((x < lower) if j in data.dequantize else (x <= lower))
    high = upper is not None and ((top > upper) if j in data.dequantize else (x >= upper))
    outside = torch.as_tensor(low) | torch.as_tensor(high)
    if bool(outside.any()):
        interval = f"({'-inf' if lower is None else f'{lower:g}'}, "
        interval += f"{'inf' if upper is None else f'{upper:g}'})"
        raise ValueError(
            f"--bounds {name}: {int(outside.sum())} of {len(x)} rows of column {name!r} "
            f"lie on or outside the open interval {interval} (values from "
            f"{x.min().item():g} to {x.max().item():g}); widen the bound"
        )


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available")
    return device


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Runs ``arflows fit``; under torchrun every process runs it, and rank 0 writes."""
    world, device = init_from_env(_device(args.device))
    try:
        code = _fit_in(world, device, args)
    except BaseException:
        shutdown(wait=False)  # the other processes may be anywhere: no barrier
        raise
    shutdown()
    return code


def _quiet(*args: object, **kwargs: object) -> None:
    pass


def _fit_in(world: World, device: torch.device, args: argparse.Namespace) -> int:
    say = print if world.main else _quiet
    target, checkpoint = _fit_target(args)  # before any work: refuse to replace a model
    data = _streamed(args) if args.stream else _in_memory(args)
    if args.auto:
        return _fit_auto(args, data, target)
    torch.manual_seed(args.seed)
    flow = _build_flow(args, data).to(device)
    _say_plan(say, args, data, flow)
    if world.active:
        say(f"processes: {world.size} (data-parallel, {device.type})")
    if args.resume:
        say(
            f"resuming from {checkpoint}"
            if checkpoint.is_file()
            else f"no checkpoint at {checkpoint}: starting afresh"
        )
    history = _train(args, flow, data, checkpoint, device)
    if not world.main:
        return 0  # rank 0 scores and writes
    if history.stopped_nonfinite:
        print(f"warning: {history.stopped_nonfinite}", file=sys.stderr)
    _save(args, data, flow, history, target)
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return 0


def _save(
    args: argparse.Namespace,
    data: _Splits,
    flow: Flow,
    history: History,
    target: Path,
    candidates: list[dict] | None = None,
) -> None:
    """Scores the splits, then writes the model directory with its report, in one rename."""
    metadata = _fit_metadata(args, data, _split_scores(args, flow, data))
    if candidates is not None:
        metadata["candidates"] = candidates

    def extras(folder: Path) -> None:
        write_report(folder, flow, history, metadata)
        if candidates is not None:
            write_candidates(folder / "candidates.csv", candidates)

    # The model and its report are assembled beside MODEL_DIR and renamed into place
    # together, so MODEL_DIR is never half-written, even when the process is killed.
    save(
        flow.cpu(),
        target,
        columns=data.columns,
        context_columns=data.context_columns or None,
        metadata=finite(metadata),
        extras=extras,
        overwrite=True,  # refused up front (_fit_target) unless --force or --resume
    )
    print(f"model: {target}")


def _fit_auto(args: argparse.Namespace, data: _Splits, target: Path) -> int:
    """``--auto``: the candidates within the budget, the best on validation saved."""
    if args.stream or args.resume or not isinstance(data.train, tuple) or data.valid is None:
        raise ValueError(
            "--auto needs rows in memory and validation rows: drop --stream and --resume, "
            "and keep --valid-fraction above 0"
        )
    _say_plan(print, args, data, None)
    print(f"auto: {len(CANDIDATES)} candidates within {args.budget:g} s, chosen on validation")
    x, c = data.train
    support = _support(args.bounds, data) if args.bounds else None
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    try:
        flow, history, table = fit_auto(
            x, c, valid=data.valid, budget=args.budget, seed=args.seed,
            dequantize=data.dequantize or None, support=support,
            progress=not args.no_progress, report=lambda row: print(candidate_line(row)),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    print(f"selected: {next(row['candidate'] for row in table if row['selected'])}")
    _save(args, data, flow, history, target, candidates=table)
    return 0


def _say_plan(
    say: Callable[..., None], args: argparse.Namespace, data: _Splits, flow: Flow | None
) -> None:
    cols = data.dequantize
    say(
        f"data: {data.source}, {data.rows} rows, columns {short(data.columns)}"
        + (f", context {short(data.context_columns)}" if data.context_columns else "")
        + (f", dequantized {len(cols)} integer column(s)" if cols else "")
    )
    for note in data.notes:  # columns left out, index columns, point masses, ...
        say(f"note: {note}")
    say("split: " + ", ".join(f"{n} {name}" for name, n in data.counts.items()) + " rows")
    if flow is None:
        return
    say(f"flow: {type(flow).__name__} {flow.config['arguments']}")
    sized = training_options_for(args, data)
    say(
        f"training: batch {sized['batch_size']}, up to {sized['epochs']} epochs, patience "
        f"{sized['patience']}, weight decay {sized['weight_decay']:g}"
    )
    parameters = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    warning = model_warning(parameters, data.counts["train"], len(data.columns))
    if warning:
        say(f"warning: {warning}", file=sys.stderr)


def _train(
    args: argparse.Namespace, flow: Flow, data: _Splits, checkpoint: Path, device: torch.device
) -> History:
    if isinstance(data.train, tuple):
        x_train, c_train = data.train
        valid = data.valid if data.valid is None or data.valid[1] is not None else data.valid[0]
    else:
        x_train, c_train, valid = data.train, None, data.valid
    sized = training_options_for(args, data)
    threads = torch.get_num_threads()
    if args.threads is not None or (sized["batch_size"] < 256 and device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)
    try:
        return _fit_sized(args, flow, data, checkpoint, sized, x_train, c_train, valid)
    finally:
        torch.set_num_threads(threads)  # main() may run in a user's process: leave it as found


def _fit_sized(
    args: argparse.Namespace,
    flow: Flow,
    data: _Splits,
    checkpoint: Path,
    sized: dict,
    x_train: object,
    c_train: Tensor | None,
    valid: object,
) -> History:
    options: dict = {}
    if data.dequantize:
        options["dequantize"] = data.dequantize
    if args.schedule is not None:
        options["schedule"] = None if args.schedule == "none" else args.schedule
    return fit(
        flow,
        x_train,
        c_train,
        valid=valid,
        epochs=sized["epochs"],
        batch_size=sized["batch_size"],
        lr=args.lr,
        patience=sized["patience"],
        weight_decay=sized["weight_decay"],
        warmup=sized["warmup"],
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        **options,
    )


def training_options_for(args: argparse.Namespace, data: _Splits) -> dict:
    """The training options: those given on the command line, the rest sized to the data."""
    sized = _sizing(data).as_dict()
    for name in ("epochs", "batch_size", "patience", "weight_decay", "warmup"):
        if getattr(args, name) is not None:
            sized[name] = getattr(args, name)
    return sized


def _split_scores(args: argparse.Namespace, flow: Flow, data: _Splits) -> dict:
    """The average log-likelihood of each split, printed."""
    result: dict[str, float | None] = {}
    for i, name in enumerate(("train", "valid", "test")):
        part = getattr(data, name)
        # Fixed, split-specific noise: the scores are repeatable and independent of training.
        result[name] = None if part is None else data.score(flow, part, args.seed + 1 + i)
    print(
        "average log-likelihood (nats per row): "
        + ", ".join(f"{name} {fmt(value)}" for name, value in result.items())
    )
    return result


def _fit_metadata(args: argparse.Namespace, data: _Splits, split_scores: dict) -> dict:
    metadata = {
        "data": data.source,
        "dataset": data.dataset,
        "dequantized_columns": sorted(data.dequantize),
        "grid_steps": {str(j): h for j, h in _steps(data).items()},
        "grid_origins": {str(j): v for j, v in data.origins.items()},
        "scores": split_scores,
        "rows": data.counts,
        "seed": args.seed,
        "command": "arflows " + shlex.join(args.argv),
        "notes": data.notes,
        "training": training_options_for(args, data),
    }
    if args.data is not None:  # diagnose finds the held-out rows again from these
        metadata["data_file"] = str(args.data.resolve())
        metadata["data_fingerprint"] = fingerprint(args.data)
        metadata["split"] = {
            "valid_fraction": args.valid_fraction,
            "test_fraction": args.test_fraction,
            "seed": args.seed,
            "stream": bool(args.stream),
        }
    return metadata


def _steps(data: _Splits) -> dict[int, float]:
    cols = data.dequantize
    return dict(cols) if isinstance(cols, dict) else dict.fromkeys(cols, 1.0)


def _fit_target(args: argparse.Namespace) -> tuple[Path, Path]:
    """The model directory and checkpoint of a fit, refused before training if taken."""
    target = Path(args.output)
    checkpoint = target.with_name(target.name + ".partial") / "checkpoint.safetensors"
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot write the model to {target}: it is a file; choose another -o")
    if target.is_dir() and any(target.iterdir()):
        if not is_model_dir(target):
            raise ValueError(
                f"cannot write the model to {target}: it exists and is not an arflows model "
                "directory; choose another -o"
            )
        if not (args.force or args.resume):
            raise FileExists(
                f"a model is already in {target}; add --force to replace it (or choose another -o)"
            )
    if checkpoint.is_file() and not (args.force or args.resume):
        raise FileExists(
            f"{checkpoint} holds an interrupted fit; add --resume to continue it or --force "
            "to start afresh"
        )
    return target, checkpoint
