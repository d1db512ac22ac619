"""``arflows sample``, ``score`` and ``diagnose``: use a saved model."""

from __future__ import annotations

__all__ = ["add_parsers", "diagnose", "sample", "score"]

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from ..data import (
    ParquetStream,
    Table,
    dequantize,
    floor_to_grid,
    load_dataset,
)
from ..diagnostics import (
    calibration,
    gaussianize,
    gaussianized_figure,
    joint_normality,
    normality,
    pit,
    qq_figure,
)
from ..files import atomic_path, check_new
from ..flows import Flow
from ..io import load
from .common import (
    CHUNK,
    dims,
    fingerprint,
    finite,
    fractions,
    grid,
    model_metadata,
    names,
    output_path,
    read_contexts,
    read_for_model,
    scores,
    split,
    summary_stream,
    write,
)
from .parsing import add_command, force_argument, output_argument, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Adds ``sample``, ``score`` and ``diagnose`` to the subcommands."""
    _add_sample(commands)
    _add_score(commands)
    _add_diagnose(commands)


def _add_sample(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "sample",
        "draw samples from a saved model",
        "Draws N samples from the model in MODEL_DIR and writes them with the model's column "
        "names (.csv, .npy or .parquet by the suffix of -o; CSV to standard output without "
        "-o). A conditional model needs a context: one vector (--context) or a table of "
        "contexts (--context-file, N samples per row; its context columns lead each output "
        "row). Dequantized columns are put back onto their grid (integers, multiples of the "
        "step) unless --continuous.",
        "  arflows sample model -n 1000 -o samples.csv\n"
        "  arflows sample model -n 100 --context 0.5 -o samples.parquet\n"
        "  arflows sample model -n 10 --context-file contexts.csv -o samples.npy\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument(
        "-n", "--samples", type=positive_int, required=True, metavar="N", help="samples to draw"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--context", type=float, nargs="+", metavar="V", help="a context vector")
    group.add_argument("--context-file", type=Path, metavar="FILE", help="a table of contexts")
    p.add_argument("--continuous", action="store_true", help="keep dequantized columns real")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: fresh randomness)")
    output_argument(p)
    p.set_defaults(run=sample)


def _add_score(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "score",
        "write the log-density of each row of a data file (anomaly scores)",
        "Computes log p(x) (natural log) of every row of DATA under the model in MODEL_DIR; "
        "low values flag unusual rows. Columns are picked by the names the model was fit on "
        "(NPY/NPZ by position); row i of the output scores row i of DATA. For columns the "
        "model dequantized (integers, values on a grid of step h), the score uses --draws "
        "seeded noise draws: one draw gives log p(v + h u), as in the fit report; more "
        "estimate the log of the mean density over the cell [v, v + h) (log P(cell) minus "
        "its log-volume: the same density scale).",
        "  arflows score model data.csv -o scores.csv\n"
        "  arflows score model data.parquet --draws 100 > scores.csv\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument("data", type=Path, metavar="DATA", help="the data file")
    p.add_argument(
        "--draws", type=positive_int, default=1, metavar="S", help="noise draws per row (1)"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the dequantization noise (0)"
    )
    output_argument(p)
    p.set_defaults(run=score)


def _add_diagnose(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "diagnose",
        "check a model: map data to the base space and test its normality",
        "The MAF paper's diagnostic: maps DATA to the base space, z = f(x), where a good model "
        "gives standard normal z. Prints per-column KS statistic and p-value, skewness and "
        "excess kurtosis, and joint moment errors; writes normality.csv, diagnostics.json, "
        "qq.png (QQ plots, the least Gaussian columns first) and, for a 2-D unconditional "
        "model, gaussianized.png (data, model density, Gaussianised data). For a conditional "
        "model it also checks calibration, target by target: the PIT u = F(y | context) of "
        "each row (exact for one target, else from --samples draws per row; dequantized "
        "targets with the seeded noise), uniform for a calibrated model; it prints the KS "
        "test of u against U[0, 1] and the coverage of the central 50/80/90/95% prediction "
        "intervals, adds them and the PIT histograms to diagnostics.json, and writes "
        "calibration.csv and calibration.png. Without DATA it uses the fit's held-out test "
        "rows, or draws fresh rows of the built-in dataset the model was fit on (digits: the "
        "same 1797 images).",
        "  arflows diagnose model data.csv -o diagnostics/\n  arflows diagnose model\n",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a saved model directory")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA", help="the data file")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the dequantization noise and the PIT's draws (0)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=1000,
        metavar="N",
        help="draws per row for the PIT of a conditional model of several targets (1000)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="DIR",
        help="output folder (default: MODEL_DIR/diagnostics)",
    )
    force_argument(p, "replace diagnostics files already in the output folder")
    p.set_defaults(run=diagnose)


# --- sample ---------------------------------------------------------------------------------


def sample(args: argparse.Namespace) -> int:
    """Runs ``arflows sample``."""
    output = output_path(args)
    flow = load(args.model)
    features, context = dims(flow)
    columns = names(flow.columns, "x", features)
    context_columns = names(flow.context_columns, "c", context)
    if context == 0 and (args.context is not None or args.context_file is not None):
        raise ValueError(f"the model in {args.model} is unconditional: drop --context")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    with torch.no_grad():
        flow.eval()
        if context == 0:
            values = torch.cat(
                [flow().sample((len(r),)) for r in torch.arange(args.samples).split(CHUNK)]
            )
            header = columns
        else:
            values = _conditional_samples(args, flow, context_columns)
            header = context_columns + columns
    steps, origins = grid(model_metadata(flow))
    if steps and not args.continuous:
        shift = len(header) - features
        values[:, shift:] = floor_to_grid(values[:, shift:], steps, origins)
    write(output, values, header)
    if output is not None:
        print(f"wrote {len(values)} samples to {output}", file=summary_stream(output))
    return 0


def _conditional_samples(
    args: argparse.Namespace, flow: Flow, context_columns: list[str]
) -> Tensor:
    """``--samples`` rows per context, each led by its context: ``(M * n, C + D)``."""
    context = len(context_columns)
    if args.context is not None:
        if len(args.context) != context:
            raise ValueError(
                f"--context has {len(args.context)} values but the model in "
                f"{args.model} takes {context} ({', '.join(context_columns)})"
            )
        contexts = torch.tensor([args.context])
    elif args.context_file is not None:
        contexts = read_contexts(args.context_file, context_columns, args.model)
    else:
        raise ValueError(
            f"the model in {args.model} is conditional on "
            f"{', '.join(context_columns)}: give --context or --context-file"
        )
    n = args.samples
    contexts = contexts.to(next(flow.parameters()).dtype)
    drawn = flow(contexts).sample((n,)).transpose(0, 1)  # (M, n, D): rows by context
    return torch.cat([contexts[:, None, :].expand(-1, n, -1), drawn], dim=-1).reshape(
        -1, context + flow.features
    )


# --- score ----------------------------------------------------------------------------------


def score(args: argparse.Namespace) -> int:
    """Runs ``arflows score``."""
    output = output_path(args)
    flow = load(args.model)
    table = read_for_model(args.data, flow, args.model)
    steps, _ = grid(model_metadata(flow))
    result = scores(flow, table.x, table.c, steps, draws=args.draws, seed=args.seed)
    write(output, result[:, None], ["log_prob"])
    summary = f"scored {len(result)} rows: average log-likelihood {result.mean().item():.4f} nats"
    print(summary + (f", written to {output}" if output else ""), file=summary_stream(output))
    return 0


# --- diagnose -------------------------------------------------------------------------------


def diagnose(args: argparse.Namespace) -> int:
    """Runs ``arflows diagnose``."""
    flow = load(args.model)
    metadata = model_metadata(flow)
    features, context = dims(flow)
    out = args.output if args.output is not None else args.model / "diagnostics"
    two_d = features == 2 and context == 0
    files = ["normality.csv", "diagnostics.json", "qq.png"] + (["gaussianized.png"] * two_d)
    files += ["calibration.csv", "calibration.png"] * (context > 0)
    paths = {name: check_new(out / name, force=args.force) for name in files}
    table, rows = _diagnose_rows(args, flow, metadata)
    columns = names(flow.columns, "x", features)
    x = _dequantized(table.x, grid(metadata)[0], args.seed)
    z = gaussianize(flow, x, table.c)
    result = normality(z, columns)
    joint = joint_normality(z)
    out.mkdir(parents=True, exist_ok=True)
    with _pandas_options():
        print(f"normality of z = f(x) on {len(z)} {rows} (a good model gives N(0, 1)):")
        print(result.to_string(float_format=lambda v: f"{v:.4g}"))
    print("joint: " + ", ".join(f"{k} {v:.4g}" for k, v in joint.items()))
    report = dict(joint)
    if context > 0:
        report["calibration"] = _calibration(args, flow, x, table.c, columns, paths)
    with atomic_path(paths["normality.csv"]) as tmp:
        result.to_csv(tmp)
    with atomic_path(paths["diagnostics.json"]) as tmp:
        tmp.write_text(json.dumps(finite(report), indent=2) + "\n")
    from ..plot import save_figure

    save_figure(qq_figure(z, columns), paths["qq.png"])
    if two_d:
        save_figure(gaussianized_figure(flow, x), paths["gaussianized.png"])
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _calibration(
    args: argparse.Namespace,
    flow: Flow,
    y: Tensor,
    c: Tensor,
    columns: list[str],
    paths: dict[str, Path],
) -> dict:
    """Prints and writes the PIT calibration of each target; returns it for the JSON."""
    from ..plot import calibration_figure, save_figure

    generator = torch.Generator().manual_seed(args.seed)
    result = calibration(pit(flow, y, c, samples=args.samples, generator=generator), columns)
    frame = result.table()
    pairs = zip(result.levels, result.coverage_se, strict=True)
    se = ", ".join(f"{level:g}: {s:.3f}" for level, s in pairs)
    with _pandas_options():
        print(
            f"calibration: PIT u = F(y | context) of {result.rows} rows (uniform, and coverage "
            f"of the central intervals equal to their level, for a calibrated model; "
            f"coverage standard errors {se}):"
        )
        print(frame.to_string(float_format=lambda v: f"{v:.4g}"))
    with atomic_path(paths["calibration.csv"]) as tmp:
        frame.to_csv(tmp)
    save_figure(calibration_figure(result), paths["calibration.png"])
    return result.to_dict()


def _dequantized(x: Tensor, steps: dict[int, float], seed: int) -> Tensor:
    # A fixed draw of the uniform noise the model was trained with, so results are repeatable.
    if not steps:
        return x
    return dequantize(x, steps=steps, generator=torch.Generator().manual_seed(seed))


def _diagnose_rows(args: argparse.Namespace, flow: Flow, metadata: dict) -> tuple[Table, str]:
    """The rows to diagnose: DATA, else the fit's own test rows, else fresh built-in rows."""
    if args.data is not None:
        return read_for_model(args.data, flow, args.model), "rows"
    if metadata.get("dataset"):
        # Fresh rows (a different seed) of the distribution the model was fit to.
        table = load_dataset(metadata["dataset"], seed=int(metadata.get("seed", 0)) + 1)
        if dims(flow) != (table.x.shape[1], 0):
            raise ValueError(
                f"the built-in dataset {metadata['dataset']!r} does not fit the model in "
                f"{args.model}; give DATA"
            )
        return table, f"fresh rows of {metadata['dataset']!r}"
    split_options = metadata.get("split")
    if not isinstance(split_options, dict) or not metadata.get("data_file"):
        raise ValueError(
            f"the model in {args.model} does not record the file it was fit on: give DATA"
        )
    path = Path(metadata["data_file"])
    if not path.is_file():
        raise ValueError(
            f"the model in {args.model} was fit on {path}, which is no longer there: give DATA"
        )
    if fingerprint(path) != metadata.get("data_fingerprint"):
        raise ValueError(
            f"{path} changed since the model in {args.model} was fit on it, so its test rows "
            "are unknown: give DATA"
        )
    return _held_out_rows(args, flow, path, split_options)


def _held_out_rows(
    args: argparse.Namespace, flow: Flow, path: Path, options: dict
) -> tuple[Table, str]:
    """The fit's test rows (its validation rows without a test split), drawn again."""
    part = "test" if options["test_fraction"] > 0 else "valid"
    if options.get("stream"):
        stream = ParquetStream(path, flow.columns, flow.context_columns or None)
        parts = stream.split(fractions(options["valid_fraction"], options["test_fraction"]),
                             seed=options["seed"])  # fmt: skip
        chunks = list(parts[2 if part == "test" else 1].batches(CHUNK))
        x = torch.cat([xb for xb, _ in chunks])
        c = torch.cat([cb for _, cb in chunks]) if flow.context_columns else None
        table = Table(x, c, list(flow.columns), list(flow.context_columns or []))
    else:
        table = read_for_model(path, flow, args.model)
        idx = split(len(table.x), options["valid_fraction"], options["test_fraction"],
                    options["seed"])[2 if part == "test" else 1]  # fmt: skip
        table = Table(table.x[idx], None if table.c is None else table.c[idx],
                      table.columns, table.context_columns)  # fmt: skip
    return table, f"held-out {part} rows of {path}"


def _pandas_options() -> object:
    import pandas

    return pandas.option_context("display.max_rows", 200, "display.width", 120)
