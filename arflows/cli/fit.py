"""``arflows fit``: fit a flow to a data file or a built-in dataset, save it with a report.

The options are in :mod:`~arflows.cli.fit_arguments`, the rows and the flow in
:mod:`~arflows.cli.fit_data`, the report in :mod:`~arflows.cli.report`.
"""

from __future__ import annotations

__all__ = ["add_parser", "run"]

import argparse
import contextlib
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..files import FileExists
from ..flows import Flow
from ..io import is_model_dir, save
from ..train import (
    CANDIDATES,
    History,
    World,
    fit,
    fit_auto,
    fit_cv,
    init_from_env,
    shutdown,
)
from ..train.sizing import model_warning
from .common import fingerprint, finite, fmt, short
from .fit_arguments import fit_parser
from .fit_data import (
    Splits,
    build_flow,
    grid_steps,
    in_memory,
    streamed,
    support_of,
    training_options_for,
)
from .report import candidate_line, write_candidates, write_report


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``fit`` to the subcommands."""
    fit_parser(commands).set_defaults(run=run)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: there is no such GPU ({torch.cuda.device_count()} visible: "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
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
    data = streamed(args) if args.stream else in_memory(args)
    if args.auto:
        return _fit_auto(args, data, target, device)
    if args.folds:
        return _fit_folds(args, data, target, device)
    torch.manual_seed(args.seed)
    flow = build_flow(args, data).to(device)
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


def _fit_folds(args: argparse.Namespace, data: Splits, target: Path, device: torch.device) -> int:
    """``--folds K``: the training length chosen by K-fold cross-validation on the train rows."""
    if args.stream or args.resume or not isinstance(data.train, tuple):
        raise ValueError("--folds needs rows in memory: drop --stream and --resume")

    def make_flow() -> Flow:
        torch.manual_seed(args.seed)
        return build_flow(args, data).to(device)

    _say_plan(print, args, data, make_flow())
    x, c = data.train
    with _threads(args, data, device):
        flow, history, cv = fit_cv(make_flow, x, c, folds=args.folds, **_fit_options(args, data))
    kept = "the fitted start" if cv["epochs"] == 0 else f"{cv['epochs']} epochs"
    print(f"cross-validation ({args.folds} folds): {kept}, then refitted on the train rows")
    _save(args, data, flow, history, target, cross_validation=cv)
    return 0


def _save(
    args: argparse.Namespace,
    data: Splits,
    flow: Flow,
    history: History,
    target: Path,
    candidates: list[dict] | None = None,
    cross_validation: dict | None = None,
) -> None:
    """Scores the splits, then writes the model directory with its report, in one rename."""
    metadata = _fit_metadata(args, data, _split_scores(args, flow, data))
    if candidates is not None:
        metadata["candidates"] = candidates
    if cross_validation is not None:
        metadata["cross_validation"] = cross_validation

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


def _fit_auto(args: argparse.Namespace, data: Splits, target: Path, device: torch.device) -> int:
    """``--auto``: the candidates within the budget, the best on validation saved."""
    if args.stream or args.resume or not isinstance(data.train, tuple) or data.valid is None:
        raise ValueError(
            "--auto needs rows in memory and validation rows: drop --stream and --resume, "
            "and keep --valid-fraction above 0"
        )
    _say_plan(print, args, data, None)
    print(f"auto: {len(CANDIDATES)} candidates within {args.budget:g} s, chosen on validation")
    x, c = data.train
    support = support_of(args.bounds, data) if args.bounds else None
    with _threads(args, data, device):
        flow, history, table = fit_auto(
            x, c, valid=data.valid, budget=args.budget, seed=args.seed,
            dequantize=data.dequantize or None, support=support,
            progress=not args.no_progress, report=lambda row: print(candidate_line(row)),
            device=device,
        )  # fmt: skip
    print(f"selected: {next(row['candidate'] for row in table if row['selected'])}")
    _save(args, data, flow, history, target, candidates=table)
    return 0


def _say_plan(
    say: Callable[..., None], args: argparse.Namespace, data: Splits, flow: Flow | None
) -> None:
    cols = data.dequantize
    say(
        f"data: {data.source}, {data.rows} rows, columns {short(data.columns)}"
        + (f", context {short(data.context_columns)}" if data.context_columns else "")
        + (f", dequantized {len(cols)} {_kind(cols)} column(s)" if cols else "")
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


def _kind(cols: dict | list) -> str:
    # In memory: {column: step} of every column on a grid; streamed: integer-typed columns.
    return "grid" if isinstance(cols, dict) else "integer"


def _train(
    args: argparse.Namespace, flow: Flow, data: Splits, checkpoint: Path, device: torch.device
) -> History:
    x_train, c_train = data.train if isinstance(data.train, tuple) else (data.train, None)
    with _threads(args, data, device):
        return fit(
            flow, x_train, c_train, valid=data.valid, checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every, resume=args.resume,
            **_fit_options(args, data),
        )  # fmt: skip


def _fit_options(args: argparse.Namespace, data: Splits) -> dict:
    """The options of :func:`arflows.fit` every way of fitting shares: given, else sized."""
    sized = training_options_for(args, data)
    options = {name: sized[name] for name in ("epochs", "batch_size", "patience")}
    options |= {"weight_decay": sized["weight_decay"], "warmup": sized["warmup"]}
    options |= {"lr": args.lr, "seed": args.seed, "progress": not args.no_progress}
    if data.dequantize:
        options["dequantize"] = data.dequantize
    if args.schedule is not None:
        options["schedule"] = None if args.schedule == "none" else args.schedule
    return options


@contextlib.contextmanager
def _threads(args: argparse.Namespace, data: Splits, device: torch.device) -> Iterator[None]:
    """``--threads``, else one thread for small batches on the CPU; restored afterwards."""
    # Small products only lose time to threading; main() may run in a user's process, so
    # the setting is put back as found.
    threads = torch.get_num_threads()
    small = training_options_for(args, data)["batch_size"] < 256 and device.type == "cpu"
    if args.threads is not None or small:
        torch.set_num_threads(args.threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _split_scores(args: argparse.Namespace, flow: Flow, data: Splits) -> dict:
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


def _fit_metadata(args: argparse.Namespace, data: Splits, split_scores: dict) -> dict:
    metadata = {
        "data": data.source,
        "dataset": data.dataset,
        "dequantized_columns": sorted(data.dequantize),
        "grid_steps": {str(j): h for j, h in grid_steps(data).items()},
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
