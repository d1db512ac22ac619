"""The fit report: ``report.json``, ``report.md`` and ``loss.png`` in the model directory."""

from __future__ import annotations

__all__ = ["candidate_line", "write_candidates", "write_report"]

import json
import sys
from pathlib import Path

from .._version import __version__
from ..flows import Flow
from ..train import History
from .common import finite, fmt

_FIELDS = ("best_epoch", "stopped_early", "stopped_nonfinite", "seconds", "lr", "start_valid")


def write_report(out: Path, flow: Flow, history: History, metadata: dict) -> None:
    """Writes the report files into ``out`` (the model directory being assembled).

    Args:
        out: The folder.
        flow: The fitted flow.
        history: What the fit did.
        metadata: The fit's metadata (command, data, rows, scores, notes, training options).
    """
    report = {
        "arflows_version": __version__,
        "command": metadata["command"],
        "flow": flow.config,
        **metadata,
        "history": {"train": history.train, "valid": history.valid, "start": history.start}
        | {name: getattr(history, name) for name in _FIELDS},
    }
    (out / "report.json").write_text(json.dumps(finite(report), indent=2) + "\n")
    lines = _lines(flow, history, metadata)
    try:
        from ..plot import loss_figure, save_figure

        figure = loss_figure(history.train, history.valid, best_epoch=history.best_epoch)
        save_figure(figure, out / "loss.png")
        lines += ["![training curves](loss.png)", ""]
    except ImportError as error:
        print(f"warning: no loss.png: {error}", file=sys.stderr)
    (out / "report.md").write_text("\n".join(lines))


def _lines(flow: Flow, history: History, metadata: dict) -> list[str]:
    rows = metadata["rows"]
    best = history.best_epoch
    kept = "the data-initialised start" if best < 0 else f"epoch {best + 1}"
    lines = [
        "# arflows fit report",
        "",
        f"Command: `{metadata['command']}` (arflows {__version__})",
        "",
        f"Data: {metadata['data']}",
        "",
        "| split | rows | average log-likelihood (nats per row) |",
        "|---|---:|---:|",
        *(
            f"| {name} | {rows[name]} | {fmt(value)} |"
            for name, value in metadata["scores"].items()
        ),
        "",
        f"Flow: `{flow.config['flow']}` with `{json.dumps(flow.config['arguments'])}`",
        "",
        f"Training: {len(history.train)} epochs, kept {kept}"
        + (", stopped early" if history.stopped_early else "")
        + f", {history.seconds:.1f} s",
        "",
    ]
    if history.start is not None:
        start, valid = history.start, history.start_valid
        lines += [
            f"Start: {start.get('base')} fitted to the training rows"
            + (f" with {start['components']} component(s)" if start.get("components") else "")
            + (f", {start['marginals']} marginal map(s)" if start.get("marginals") else "")
            + (f"; validation {fmt(valid)}" if valid is not None else ""),
            "",
        ]
    if metadata.get("candidates"):
        lines += [
            "## Candidates (--auto)",
            "",
            "| candidate | flow | valid | epochs | seconds | kept | selected |",
            "|---|---|---:|---:|---:|---|---|",
            *(
                f"| {r['candidate']} | {r['flow']} | {fmt(r['valid'])} | {r['epochs']} | "
                f"{r['seconds']:.1f} | {r['kept']} | {'yes' if r['selected'] else ''} |"
                for r in metadata["candidates"]
            ),
            "",
        ]
    if metadata.get("notes"):
        lines += ["## Notes on the data", "", *(f"- {note}" for note in metadata["notes"]), ""]
    return lines


def candidate_line(row: dict) -> str:
    """One line of the ``--auto`` candidates table, as printed while fitting."""
    return (
        f"  {row['candidate']:<10} {row['flow']:<4} valid {fmt(row['valid'])}  "
        f"{row['epochs']} epochs, {row['seconds']:.1f} s, kept {row['kept']}"
    )


def write_candidates(path: Path, table: list[dict]) -> None:
    """Writes the ``--auto`` candidates table as CSV."""
    import pandas

    frame = pandas.DataFrame(table)
    frame["options"] = [json.dumps(o) for o in frame["options"]]
    frame.to_csv(path, index=False)
