r"""Density estimation on real tables: ``arflows fit`` against classical baselines.

Every table is split at random 80/10/10 (train/valid/test) for each seed; its integer-valued
columns get U[0, 1) dequantization noise drawn once per seed and shared by every model, so all
models see the same continuous values, and the score is the test average log-likelihood of
those values in nats per row (higher is better).

**Models**, all fitted on the same train + valid rows of a seed:

* ``gaussian``: the maximum-likelihood full-covariance Gaussian of the train rows.
* ``gmm``: scikit-learn's ``GaussianMixture`` (full covariances, default ``reg_covar``) on
  standardised train rows, with K = 1..10 components chosen on the valid rows.
* ``kde``: scikit-learn's ``KernelDensity`` (Gaussian kernel) on standardised train rows, with
  the bandwidth chosen on the valid rows from a log grid.
* ``arflows``: what ``arflows fit data.csv`` does with its defaults, run through the real
  command line in this process (``arflows.cli.main``) on a CSV of the train + valid rows, with
  ``--test-fraction 0`` and the valid fraction that gives it as many valid rows as the
  baselines had. The command draws its own train/valid split of that pool (from ``--seed``),
  so every model is fitted on the same pool of rows and sees no test row; the baselines
  select on the benchmark's valid rows, arflows stops early on its own. The saved model
  (``arflows.load``) then scores the test rows.
* ``arflows-auto``: the same with ``--auto`` ("n/a" while the command has no such option).

More arflows configurations can be added to ``MODELS`` (a name and the extra CLI arguments).

**Tables.** The scikit-learn tables as the issue lists them: iris (4 columns), wine (13),
diabetes (raw, unscaled, 10 columns plus the target: 11), breast cancer (30 columns, log1p)
and digits (64 integer pixels, dequantized). Then every dataset of ``statsmodels.datasets``
whose ``load_pandas()`` works, and ``palmerpenguins.load_penguins()``, reduced to the columns
to model by these rules, in order:

1. numeric columns only;
2. constant columns are dropped;
3. design labels are dropped: columns named like a row index, an identifier or a calendar
   index (``id``, ``*_id``, ``index``, ``individual``, ``obs``, ``year``, ``quarter``,
   ``month``, ``day``, ``date``, ``period``). They say which unit or period a row belongs to,
   as fixed by how the table was assembled (each year of a panel occurs once per firm), and are
   not measurements whose distribution one would model;
4. rows with a missing value are dropped;
5. non-integer columns with fewer than 20 distinct values are dropped: a continuous density
   of a handful of repeated real values is unbounded, so every model's score would be decided
   by how narrow a spike it fits on them (integer columns are dequantized instead);
6. derived columns are dropped: a non-integer column with values repeated on average at least
   twice that is a one-to-one function of another column (the same partition of the rows, as
   anes96's ``logpopul``, the log of ``popul``), and a column equal to the product of two or
   three others to 1e-6 of its scale (star98's interaction terms). They repeat information
   the table already holds, and put the rows on a curve or a lower-dimensional surface, where
   the density is unbounded too;
7. the table is kept when at least 200 complete rows and at least 3 columns with 20 or more
   distinct values remain.

Point masses inside otherwise continuous columns (zeros in randhie's ``lpi`` and ``fmde``)
stay: they are part of the data, and they favour models that can fit narrow spikes.

A synthetic 10,000 x 20 table (a correlated, skewed mixture) is fitted once with the defaults
(``arflows fit data.csv``) for the fit-time target.

Writes ``results/tables-cpu.md``, ``.json`` and ``.png`` (``tables-cpu-quick.*`` with
``--quick``).

Usage::

    python benchmarks/tables.py [--quick] [--tables NAME ...] [--seeds 5]
                                [--models NAME ...] [--threads 1] [--out DIR]
"""

from __future__ import annotations

__all__ = ["MODELS", "Table", "discover_tables", "main", "split"]

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import io
import json
import math
import os
import pkgutil
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from machine import cpu_model, run_state  # benchmarks/machine.py (run as a script)

SPLIT = (0.8, 0.1, 0.1)
MIN_ROWS = 200
MIN_DISTINCT = 20
MIN_RICH_COLUMNS = 3
DESIGN_LABEL = re.compile(
    r"^(id|.*_id|index|individual|obs|year|quarter|month|day|date|period)$", re.IGNORECASE
)
GMM_COMPONENTS = range(1, 11)
KDE_BANDWIDTHS = np.geomspace(0.02, 2.0, 25)  # in standard deviations of each column
KDE_RTOL = 1e-4
QUICK_TABLES = ("iris", "wine", "diabetes", "penguins")
TIME_TARGET_S = 120.0
TIME_ROWS, TIME_COLUMNS = 10_000, 20
# The peers on digits (benchmarks/quality.py, the same pixel space [0, 17)^64).
DIGITS_PEERS = {"MAF": -95.6, "NSF": -88.7}


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One table: its complete rows (float64) and what was done to get them."""

    name: str
    source: str
    x: np.ndarray
    columns: list[str]
    integer: list[bool]  # dequantized columns
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "rows": self.shape[0],
            "columns": self.shape[1],
            "column names": self.columns,
            "dequantized columns": [
                c for c, i in zip(self.columns, self.integer, strict=True) if i
            ],
            "dropped columns": self.dropped,
        }


def _integer(x: np.ndarray) -> list[bool]:
    return [bool(np.all(col == np.round(col))) for col in x.T]


def _from_array(name: str, source: str, x: np.ndarray, columns: list[str]) -> Table:
    x = np.asarray(x, dtype=np.float64)
    return Table(name, source, x, list(columns), _integer(x))


def sklearn_tables() -> list[Table]:
    """The bundled scikit-learn tables, as the issue lists them (no column is dropped)."""
    from sklearn import datasets

    iris, wine = datasets.load_iris(), datasets.load_wine()
    diabetes = datasets.load_diabetes(scaled=False)
    cancer, digits = datasets.load_breast_cancer(), datasets.load_digits()
    return [
        _from_array("iris", "sklearn", iris.data, iris.feature_names),
        _from_array("wine", "sklearn", wine.data, wine.feature_names),
        _from_array(
            "diabetes",
            "sklearn (raw, with the target)",
            np.column_stack([diabetes.data, diabetes.target]),
            [*diabetes.feature_names, "target"],
        ),
        _from_array(
            "breast-cancer-log1p",
            "sklearn (log1p)",
            np.log1p(cancer.data),
            list(cancer.feature_names),
        ),
        _from_array("digits", "sklearn", digits.data, [f"pixel{j}" for j in range(64)]),
    ]


def _product_of(rows, column: object, others: list) -> tuple | None:  # noqa: ANN001
    """Two or three of ``others`` whose product is ``column`` to 1e-6 of its scale, or None."""
    from itertools import combinations

    target = rows[column].to_numpy()
    values = rows[others].to_numpy()
    tolerance = 1e-6 * np.abs(target).max()
    for size in (2, 3):
        for group in combinations(range(len(others)), size):
            if np.abs(values[:, group].prod(axis=1) - target).max() <= tolerance:
                return tuple(others[k] for k in group)
    return None


def reduce_frame(name: str, source: str, frame) -> Table | None:  # noqa: ANN001 (a DataFrame)
    """The columns and rows to model of a discovered table (module docstring), or None."""
    dropped: dict[str, str] = {}
    numeric = frame.select_dtypes("number")
    for column in frame.columns:
        if column not in numeric.columns:
            dropped[str(column)] = "not numeric"
    keep = []
    for column in numeric.columns:
        if numeric[column].nunique(dropna=True) <= 1:
            dropped[str(column)] = "constant"
        elif DESIGN_LABEL.match(str(column)):
            dropped[str(column)] = "row index, identifier or calendar label"
        else:
            keep.append(column)
    rows = numeric[keep].dropna().astype(np.float64)
    for column in list(keep):
        values = rows[column].to_numpy()
        if not np.all(values == np.round(values)) and len(np.unique(values)) < MIN_DISTINCT:
            dropped[str(column)] = f"non-integer with fewer than {MIN_DISTINCT} distinct values"
            keep.remove(column)
    for column in list(keep):
        values = rows[column].to_numpy()
        distinct = len(np.unique(values))
        if np.all(values == np.round(values)) or 2 * distinct > len(values):
            continue
        for other in keep:
            if other != column and distinct == rows[other].nunique() == len(
                rows[[column, other]].drop_duplicates()
            ):
                dropped[str(column)] = f"a one-to-one function of {other}"
                keep.remove(column)
                break
    for column in list(keep):
        product = _product_of(rows, column, [c for c in keep if c != column])
        if product:
            dropped[str(column)] = f"the product {' * '.join(map(str, product))}"
            keep.remove(column)
    rows = rows[keep]
    rich = int((rows.nunique() >= MIN_DISTINCT).sum())
    if len(rows) < MIN_ROWS or rich < MIN_RICH_COLUMNS:
        return None
    table = _from_array(name, source, rows.to_numpy(), [str(c) for c in keep])
    table.dropped = dropped
    return table


def statsmodels_tables() -> list[Table]:
    """Every ``statsmodels.datasets`` table that passes the rules (failing loaders skipped)."""
    import statsmodels.datasets

    found = []
    for module in pkgutil.iter_modules(statsmodels.datasets.__path__):
        if not module.ispkg:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = importlib.import_module(f"statsmodels.datasets.{module.name}")
                frame = loaded.load_pandas().data
        except Exception:  # noqa: BLE001 (a package without a loader, a file it cannot read)
            continue
        table = reduce_frame(module.name, "statsmodels", frame)
        if table is not None:
            found.append(table)
    return found


def penguin_tables() -> list[Table]:
    from palmerpenguins import load_penguins

    table = reduce_frame("penguins", "palmerpenguins", load_penguins())
    return [] if table is None else [table]


def discover_tables(notes: list[str]) -> list[Table]:
    """The scikit-learn tables, then those of statsmodels and palmerpenguins (if installed)."""
    tables = sklearn_tables()
    for finder in (statsmodels_tables, penguin_tables):
        try:
            tables += finder()
        except ImportError as error:
            notes.append(f"{finder.__name__} skipped: {error}")
    return tables


def synthetic_table(rows: int = TIME_ROWS, columns: int = TIME_COLUMNS) -> np.ndarray:
    """A correlated, skewed 4-component mixture: the fit-time table."""
    rng = np.random.default_rng(20)
    means = rng.normal(0.0, 3.0, (4, columns))
    mixing = rng.normal(0.0, 1.0, (4, columns, columns)) / math.sqrt(columns)
    k = rng.integers(0, 4, rows)
    z = means[k] + np.einsum("nij,nj->ni", mixing[k], rng.standard_normal((rows, columns)))
    z[:, ::2] = np.exp(0.4 * z[:, ::2])  # skew every other column
    return z


# --------------------------------------------------------------------------- split


@dataclass
class Split:
    """One seed's rows of one table, dequantized."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split(table: Table, seed: int) -> Split:
    """The seed's 80/10/10 split and dequantization noise (independent of other tables)."""
    rng = np.random.default_rng([seed, zlib.crc32(table.name.encode())])
    n = table.shape[0]
    n_test, n_valid = round(SPLIT[2] * n), round(SPLIT[1] * n)
    order = rng.permutation(n)
    x = table.x.copy()
    mask = np.array(table.integer)
    x[:, mask] += rng.random((n, int(mask.sum())))
    test, valid, train = np.split(order, [n_test, n_test + n_valid])
    return Split(x[train], x[valid], x[test])


# --------------------------------------------------------------------------- baselines


def _standardise(data: Split) -> tuple[Split, float]:
    """Rows in train standard units, and the log-determinant that takes scores back."""
    mean, sd = data.train.mean(0), data.train.std(0)
    scaled = Split(*((part - mean) / sd for part in (data.train, data.valid, data.test)))
    return scaled, -float(np.log(sd).sum())


def gaussian(data: Split, seed: int) -> dict:
    from scipy.stats import multivariate_normal

    z, logdet = _standardise(data)
    cov = np.cov(z.train.T, bias=True)
    ridge = 0.0
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:  # a singular covariance: the smallest ridge that helps
        ridge = 1e-9
        while True:
            try:
                np.linalg.cholesky(cov + ridge * np.eye(len(cov)))
                break
            except np.linalg.LinAlgError:
                ridge *= 10
    dist = multivariate_normal(np.zeros(len(cov)), cov + ridge * np.eye(len(cov)))
    return {
        "valid": float(dist.logpdf(z.valid).mean()) + logdet,
        "test": float(dist.logpdf(z.test).mean()) + logdet,
        "choice": {"ridge": ridge},
    }


def gmm(data: Split, seed: int) -> dict:
    from sklearn.mixture import GaussianMixture

    z, logdet = _standardise(data)
    best = None
    for k in GMM_COMPONENTS:
        if k > len(z.train):
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: the valid score judges it
            model = GaussianMixture(k, covariance_type="full", random_state=seed).fit(z.train)
        valid = float(model.score(z.valid))
        if best is None or valid > best[0]:
            best = (valid, k, model)
    valid, k, model = best
    return {
        "valid": valid + logdet,
        "test": float(model.score(z.test)) + logdet,
        "choice": {"components": k},
    }


def kde(data: Split, seed: int) -> dict:
    from sklearn.neighbors import KernelDensity

    z, logdet = _standardise(data)
    best = None
    for h in KDE_BANDWIDTHS:
        # rtol: each density to 1e-4 of itself (1e-4 nats), twice as fast on large tables.
        model = KernelDensity(bandwidth=float(h), rtol=KDE_RTOL).fit(z.train)
        valid = float(model.score_samples(z.valid).mean())
        if best is None or valid > best[0]:
            best = (valid, float(h), model)
    valid, h, model = best
    return {
        "valid": valid + logdet,
        "test": float(model.score_samples(z.test).mean()) + logdet,
        "choice": {"bandwidth": h},
    }


BASELINES: dict[str, Callable[[Split, int], dict]] = {
    "gaussian": gaussian,
    "gmm": gmm,
    "kde": kde,
}


# --------------------------------------------------------------------------- arflows


# name -> the arguments added to `arflows fit data.csv`; None where the command lacks one.
MODELS: dict[str, list[str]] = {
    "arflows": [],
    "arflows-auto": ["--auto"],
}


def _cli():  # noqa: ANN202 (arflows.cli.main)
    import arflows.cli

    return arflows.cli.main


def _quiet_cli(argv: list[str]) -> tuple[int, str]:
    """``arflows`` with these arguments in this process: exit code and printed text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = _cli()(argv)
        except SystemExit as stop:  # argparse's --help and usage errors
            code = stop.code if isinstance(stop.code, int) else 1
    return code or 0, out.getvalue()


def cli_options() -> set[str]:
    """The long options ``arflows fit`` accepts."""
    _, text = _quiet_cli(["fit", "--help"])
    return set(re.findall(r"(--[a-z][a-z-]*)", text))


def _write_csv(path: Path, x: np.ndarray) -> None:
    import pandas as pd

    # repr-exact floats: the command reads back the very values the baselines saw.
    pd.DataFrame(x, columns=[f"x{j}" for j in range(x.shape[1])]).to_csv(path, index=False)


def arflows_fit(
    rows: np.ndarray, extra: list[str], seed: int, tmp: Path, valid_fraction: float, test: float
) -> tuple[dict, object]:
    """``arflows fit`` on ``rows``: wall time, the report's figures and the loaded flow."""
    import arflows

    data, model = tmp / "data.csv", tmp / f"model-{seed}"
    _write_csv(data, rows)
    argv = [
        "fit", str(data), "--valid-fraction", f"{valid_fraction:.12g}",
        "--test-fraction", f"{test:g}", "--no-progress", "--seed", str(seed),
        "-o", str(model), "--force", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    code, text = _quiet_cli(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"arflows {' '.join(argv)} failed ({code}): {text.strip()[-500:]}")
    report = json.loads((model / "report.json").read_text())
    history = report.get("history", {})
    record = {
        "seconds": seconds,
        "train_seconds": history.get("seconds"),
        "epochs": len(history.get("valid", [])),
        "best_epoch": history.get("best_epoch"),
        "scores": report.get("scores"),
        "rows": report.get("rows"),
        "dequantized_by_cli": report.get("dequantized_columns", []),
        "flow": report.get("flow"),
    }
    return record, arflows.load(model)


def arflows_model(extra: list[str]) -> Callable[[Split, int, Path], dict]:
    def run(data: Split, seed: int, tmp: Path) -> dict:
        import torch

        pool = np.concatenate([data.train, data.valid])
        record, flow = arflows_fit(pool, extra, seed, tmp, len(data.valid) / len(pool), 0.0)
        dtype = next(flow.parameters()).dtype
        with torch.no_grad():
            test = flow().log_prob(torch.as_tensor(data.test, dtype=dtype)).double()
        record["test"] = test.mean().item()
        record["valid"] = (record["scores"] or {}).get("valid")
        return record

    return run


# --------------------------------------------------------------------------- running


def warm_up(tmp: Path) -> None:
    """One tiny fit, so that one-off start-up costs are not in the first timed fit."""
    x = np.random.default_rng(0).standard_normal((200, 3))
    arflows_fit(x, ["--epochs", "2"], 0, tmp, 0.1, 0.0)


def time_default_fit(tmp: Path) -> dict:
    """``arflows fit data.csv`` with every default on the synthetic 10,000 x 20 table."""
    record, _ = arflows_fit(synthetic_table(), [], 0, tmp, 0.1, 0.1)
    record["rows x columns"] = [TIME_ROWS, TIME_COLUMNS]
    record["target_s"] = TIME_TARGET_S
    return record


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summarise(tables: list[Table], runs: list[dict], models: list[str]) -> list[dict]:
    """Per table: mean and sd of each model, wins, margins and the targets."""
    out = []
    for table in tables:
        mine = [r for r in runs if r["table"] == table.name]
        row: dict = {"table": table.name, "rows": table.shape[0], "columns": table.shape[1]}
        per: dict[str, dict[int, float]] = {}
        for name in models:
            scores = {r["seed"]: r["test"] for r in mine if r["model"] == name and "test" in r}
            if not scores:
                continue
            values = list(scores.values())
            per[name] = scores
            seconds = [r["seconds"] for r in mine if r["model"] == name and "test" in r]
            row[name] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seconds": statistics.fmean(seconds),
                "seeds": len(values),
            }
        baselines = [b for b in BASELINES if b in row]
        if baselines:
            best = max(baselines, key=lambda b: row[b]["mean"])
            row["best baseline"] = best
        for name in (m for m in MODELS if m in row):
            wins = {}
            for b in baselines:
                common = per[name].keys() & per[b].keys()
                wins[b] = [sum(per[name][s] > per[b][s] for s in common), len(common)]
            row[name]["wins"] = wins
            if baselines:
                row[name]["margin"] = row[name]["mean"] - row[best]["mean"]
            if "gaussian" in row:
                row[name]["at least gaussian"] = row[name]["mean"] >= row["gaussian"]["mean"]
            if baselines:
                row[name]["at least best baseline"] = row[name]["mean"] >= row[best]["mean"]
        if "arflows" in row and "arflows-auto" in row:
            row["auto at least defaults"] = row["arflows-auto"]["mean"] >= row["arflows"]["mean"]
        out.append(row)
    return out


def targets(summary: list[dict], timing: dict | None, auto: bool) -> list[tuple[str, str]]:
    """The issue's targets: (statement with figures, "holds" / "missed" / "n/a")."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("holds" if ok else "missed")

    rows = [r for r in summary if "arflows" in r]
    out = []
    if rows:
        gauss = [r for r in rows if "at least gaussian" in r["arflows"]]
        k = sum(r["arflows"]["at least gaussian"] for r in gauss)
        out.append(
            (
                f"defaults at least the Gaussian's mean on every table: {k}/{len(gauss)}",
                verdict(k == len(gauss) if gauss else None),
            )
        )
        best = [r for r in rows if "at least best baseline" in r["arflows"]]
        k = sum(r["arflows"]["at least best baseline"] for r in best)
        share = k / len(best) if best else 0.0
        out.append(
            (
                f"defaults at least the best baseline's mean on 90% of the tables: {k}/"
                f"{len(best)} ({share:.0%})",
                verdict(share >= 0.9 if best else None),
            )
        )
        margins = [r["arflows"]["margin"] for r in rows if "margin" in r["arflows"]]
        median = statistics.median(margins) if margins else None
        out.append(
            (
                "median margin over the best baseline at least +1 nat per row: "
                + ("n/a" if median is None else f"{median:+.2f}"),
                verdict(None if median is None else median >= 1.0),
            )
        )
    paired = [r for r in summary if "auto at least defaults" in r]
    k = sum(r["auto at least defaults"] for r in paired)
    out.append(
        (
            "--auto at least the defaults on every table: "
            + (f"{k}/{len(paired)}" if auto and paired else "n/a (no --auto option)"),
            verdict(k == len(paired) if auto and paired else None),
        )
    )
    digits = next((r for r in summary if r["table"] == "digits"), None)
    for name in ("arflows", "arflows-auto"):
        if digits and name in digits:
            value = digits[name]["mean"]
            for peer, figure in DIGITS_PEERS.items():
                out.append(
                    (
                        f"digits, {name} {value:.2f} at or above the peers' {peer} {figure}",
                        verdict(value >= figure),
                    )
                )
    if timing is not None:
        out.append(
            (
                f"default fit of a {TIME_ROWS:,} x {TIME_COLUMNS} table in under "
                f"{TIME_TARGET_S:.0f} s: {timing['seconds']:.1f} s (of which training "
                f"{timing['train_seconds']:.1f} s, {timing['epochs']} epochs)",
                verdict(timing["seconds"] < TIME_TARGET_S),
            )
        )
    return out


# --------------------------------------------------------------------------- report


def _cell(row: dict, name: str) -> str:
    if name not in row:
        return "n/a"
    return f"{row[name]['mean']:.2f} ± {row[name]['sd']:.2f}"


def _yes(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def markdown(
    meta: dict, tables: list[Table], summary: list[dict], checks: list, models: list[str],
    notes: list[str], png: str,
) -> str:  # fmt: skip
    flows = [m for m in MODELS if m in models]
    base = [b for b in BASELINES if b in models]
    lines = ["# Density estimation on real tables (cpu)", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", f"![margin over the best baseline]({png})", "", "## Test log-likelihood", ""]
    head = ["table", "rows x cols", *base, *flows, "best baseline"]
    for name in flows:
        head += [f"{name} wins over {', '.join(base)}", f"{name} margin"]
    head += ["≥ gaussian", "≥ best", "auto ≥ defaults", "fit s (" + "/".join(base + flows) + ")"]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for row in summary:
        cells = [row["table"], f"{row['rows']} x {row['columns']}"]
        cells += [_cell(row, m) for m in base + flows]
        cells.append(row.get("best baseline", "–"))
        for name in flows:
            r = row.get(name)
            if r is None:
                cells += ["n/a", "n/a"]
                continue
            cells.append(", ".join(f"{w}/{n}" for w, n in r["wins"].values()))
            cells.append(f"{r['margin']:+.2f}" if "margin" in r else "–")
        ours = row.get("arflows", {})
        cells += [
            _yes(ours.get("at least gaussian")),
            _yes(ours.get("at least best baseline")),
            _yes(row.get("auto at least defaults")),
            " / ".join(f"{row[m]['seconds']:.1f}" if m in row else "n/a" for m in base + flows),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets", ""]
    lines += [f"- **{v}**: {text}" for text, v in checks]
    lines += ["", "## Tables", ""]
    lines += ["| table | source | rows | columns | dequantized | dropped columns |"]
    lines += ["|---|---|---:|---:|---:|---|"]
    for t in tables:
        d = t.describe()
        dropped = "; ".join(f"{c} ({why})" for c, why in t.dropped.items()) or "–"
        lines.append(
            f"| {t.name} | {t.source} | {d['rows']} | {d['columns']} | "
            f"{len(d['dequantized columns'])} | {dropped} |"
        )
    lines += ["", LEGEND]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


LEGEND = """\
Test average log-likelihood in nats per row (higher is better): the mean ± standard deviation
over seeds. Each seed draws a random 80/10/10 train/valid/test split of the table and U[0, 1)
noise for its integer-valued columns, shared by every model. `gaussian`: maximum-likelihood
full-covariance Gaussian of the train rows. `gmm`: `GaussianMixture` (full covariances) with
1-10 components chosen on the valid rows. `kde`: `KernelDensity` (Gaussian kernel) on
standardised rows with the bandwidth chosen on the valid rows (25 values, 0.02-2 standard
deviations; densities to a relative 1e-4). `arflows`: `arflows fit pool.csv --test-fraction 0
--valid-fraction F --seed S` with every other option at its default, on the seed's train +
valid rows (F gives it as many valid rows as the baselines; it draws its own train/valid split
of that pool), scored on the test rows by the saved model. *wins*: seeds on which the arflows
model beats each baseline. *margin*: its mean minus the best baseline's mean. *fit s*: mean
wall-clock seconds per fit (baselines: all fits of the selection; arflows: the whole command,
reading the CSV and writing the model and report included)."""


def plot(summary: list[dict], path: Path) -> None:
    """Horizontal bars: margin of each arflows model over the best baseline per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    rows = [r for r in summary if "margin" in r.get("arflows", {})]
    names = [m for m in MODELS if any(m in r for r in rows)]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(rows), 3) + 1.2))
    height = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ys = [k + i * height for k in range(len(rows))]
        xs = [r[name]["margin"] if name in r else 0.0 for r in rows]
        ax.barh(ys, xs, height=height, label=name)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(rows))])
    ax.set_yticklabels([f"{r['table']} ({r['best baseline']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="k", lw=0.8)
    ax.axvline(1.0, color="k", lw=0.8, ls=":", label="+1 nat (target median)")
    spread = max((abs(r[m]["margin"]) for r in rows for m in names if m in r), default=0.0)
    if spread > 20:  # one extreme table would flatten the others
        ax.set_xscale("symlog", linthresh=2.0)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("test log-likelihood minus the best baseline's (nats per row, mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    all_models = [*BASELINES, *MODELS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"2 seeds, {', '.join(QUICK_TABLES)}")
    p.add_argument("--tables", nargs="+", metavar="NAME", help="only these tables")
    p.add_argument("--seeds", type=int, default=5, help="seeds per table (5)")
    p.add_argument("--models", nargs="+", default=all_models, choices=all_models)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1)")
    p.add_argument("--no-timing", action="store_true", help="skip the 10,000 x 20 fit")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument(
        "--budget", type=float, default=30.0, help="seconds of each `arflows fit --auto` (30)"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="no fitting: summarise the runs of these result files together (parts of one "
        "benchmark run in separate processes, e.g. one per core, with --tables)",
    )
    p.add_argument("--name", default="tables-cpu", help="the results' file stem (tables-cpu)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = min(args.seeds, 2)
        args.tables = args.tables or list(QUICK_TABLES)
    return args


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("arflows", "torch", "scikit-learn", "scipy", "statsmodels", "palmerpenguins"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def metadata(args: argparse.Namespace) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "versions": versions(),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "seeds": list(range(args.seeds)),
        "split": "/".join(f"{f:.0%}" for f in SPLIT),
    }
    meta.update(run_state())
    return meta


def _clean(value: object) -> object:
    """JSON without NaN or infinities (they become null)."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {text}", flush=True)

    meta = metadata(args)
    notes: list[str] = []
    MODELS["arflows-auto"] = ["--auto", "--budget", f"{args.budget:g}"]
    meta["auto budget seconds"] = args.budget
    tables = discover_tables(notes)
    if args.merge:
        return merge(args, meta, tables, say)
    if args.tables:
        unknown = set(args.tables) - {t.name for t in tables}
        if unknown:
            raise SystemExit(f"unknown tables {sorted(unknown)}; found {[t.name for t in tables]}")
        tables = [t for t in tables if t.name in args.tables]
    say(f"{len(tables)} tables:")
    for t in tables:
        deq = sum(t.integer)
        print(f"    {t.name:22s} {t.source:30s} {t.shape[0]:6d} rows x {t.shape[1]:3d} columns"
              f"{f', {deq} dequantized' if deq else ''}", flush=True)  # fmt: skip

    options = cli_options()
    runners: dict[str, Callable] = {}
    for name in args.models:
        if name in BASELINES:
            runners[name] = BASELINES[name]
        elif all(a in options for a in MODELS[name] if a.startswith("--")):
            runners[name] = arflows_model(MODELS[name])
        else:
            notes.append(f"{name}: n/a, `arflows fit` has no {' '.join(MODELS[name])} option")
            say(notes[-1])
    auto = "arflows-auto" in runners

    runs: list[dict] = []
    timing = None
    with tempfile.TemporaryDirectory(prefix="arflows-tables-") as tmp:
        tmp = Path(tmp)
        if any(name in MODELS for name in runners):
            warm_up(tmp)
        for table in tables:
            for seed in range(args.seeds):
                data = split(table, seed)
                for name, run in runners.items():
                    t = time.perf_counter()
                    try:
                        record = run(data, seed, tmp) if name in MODELS else run(data, seed)
                    except Exception as error:  # noqa: BLE001 (recorded; the run goes on)
                        record = {"error": f"{type(error).__name__}: {error}"}
                    if name not in MODELS:
                        record["seconds"] = time.perf_counter() - t
                    runs.append({"table": table.name, "seed": seed, "model": name, **record})
                    shown = record.get("error") or (
                        f"test {record['test']:9.3f}  {record['seconds']:6.1f} s"
                        + (f"  {record['choice']}" if "choice" in record else "")
                        + (f"  epochs {record['epochs']}" if "epochs" in record else "")
                    )
                    say(f"{table.name} seed {seed} {name:13s} {shown}")
                    if record.get("dequantized_by_cli"):
                        notes.append(
                            f"{table.name} seed {seed} {name}: the command dequantized columns "
                            f"{record['dequantized_by_cli']} of the already dequantized rows"
                        )
        if not args.no_timing and "arflows" in runners:
            say(f"timing a default fit of a {TIME_ROWS:,} x {TIME_COLUMNS} table ...")
            timing = time_default_fit(tmp)
            say(f"default fit: {timing['seconds']:.1f} s, test {timing['scores']['test']:.3f}")

    summary = summarise(tables, runs, list(runners))
    checks = targets(summary, timing, auto)
    meta["load average at end"] = [round(v, 2) for v in os.getloadavg()]
    meta["elapsed seconds"] = round(time.perf_counter() - start, 1)
    stem = args.out / f"{args.name}{'-quick' if args.quick else ''}"
    write_results(stem, meta, tables, summary, checks, list(runners), notes, timing, runs)
    say(f"wrote {stem}.md, .json and .png")
    return 0


def merge(args: argparse.Namespace, meta: dict, tables: list, say: Callable) -> int:
    """Summarises the runs of several result files (parts of one run) as one result."""
    parts = [json.loads(path.read_text()) for path in args.merge]
    runs = [run for part in parts for run in part["runs"]]
    names = {run["table"] for run in runs}
    tables = [t for t in tables if t.name in names]
    models = list(dict.fromkeys(run["model"] for run in runs))
    timing = next((part["timing"] for part in parts if part.get("timing")), None)
    notes = [note for part in parts for note in part["notes"]]
    meta["parts"] = [part["meta"] for part in parts]
    summary = summarise(tables, runs, models)
    checks = targets(summary, timing, "arflows-auto" in models)
    stem = args.out / args.name
    write_results(stem, meta, tables, summary, checks, models, notes, timing, runs)
    say(f"wrote {stem}.md, .json and .png")
    return 0


def write_results(stem, meta, tables, summary, checks, models, notes, timing, runs) -> None:
    """Writes STEM.md, .json and .png and prints the report."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    plot(summary, stem.with_suffix(".png"))
    report = markdown(meta, tables, summary, checks, models, notes, stem.name + ".png")
    stem.with_suffix(".md").write_text(report)
    payload = {
        "meta": meta,
        "tables": [t.describe() for t in tables],
        "summary": summary,
        "targets": [{"target": text, "verdict": v} for text, v in checks],
        "timing": timing,
        "notes": notes,
        "runs": runs,
    }
    stem.with_suffix(".json").write_text(json.dumps(_clean(payload), indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    sys.exit(main())
