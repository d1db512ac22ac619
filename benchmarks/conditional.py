r"""Conditional densities: probabilistic regression on real tables, and simulation-based inference.

**Regression.** For each table, each seed draws a random 80/20 train/test split; every model
is fitted on the train rows and scored on the test rows, in the units of the target:

* ``linear``: scikit-learn's ``LinearRegression`` with Gaussian noise whose variance is the
  unbiased residual variance of the train rows, RSS / (n - p - 1);
* ``ngboost``: ``NGBRegressor()`` with its defaults (Normal distribution, 500 trees of depth
  3, learning rate 0.01), seeded;
* ``ngboost-es``: the same with NGBoost's early stopping (``early_stopping_rounds=50`` on its
  ``validation_fraction=0.1`` of the train rows): the defaults overfit tables this small;
* ``arflows``: ``arflows.sklearn.FlowRegressor(seed=seed)``: every option at its default
  but the random seed, which follows the benchmark's.

Scores: the test log-likelihood per row, :math:`\frac1n\sum\log p(y_i \mid x_i)` in nats (the
mean and sd over seeds), and the share of test targets inside the model's central 90%
interval (``linear``: mean ± 1.645 sd; ``ngboost``: the Normal's 5% and 95% quantiles;
``arflows``: ``predict_interval(X, alpha=0.1)``).

The tables (``TABLES``): scikit-learn's diabetes (the raw target given the ten raw features)
and five ``statsmodels.datasets`` tables with a numeric target and numeric predictors and at
least 50 rows, each with the dataset's own ``endog`` and ``exog`` except where noted there.

**Simulation-based inference** (:mod:`sbi_tasks`): two moons and 10-D Gaussian linear, with
reference posteriors computed here (a fine grid for two moons, checked against an exact
inversion sampler; the exact Gaussian for Gaussian linear). Each task's 10,000 simulations
(one seed) train each neural posterior estimator with ``sbi.inference.NPE`` and
``train()``'s defaults (batch 200, learning rate 5e-4, 10% validation, stop after 20 epochs
without improvement):

* ``sbi``: ``NPE(prior)``, sbi's default density estimator (``"maf"``: 5 affine MADE layers,
  each with 3 hidden layers of 50 tanh units (nflows' first layer and 2 blocks), random
  permutations, z-scored parameters and data);
* ``arflows``: ``NPE(prior, density_estimator=arflows.sbi.posterior_nn(support=prior))``
  with its defaults (a spline autoregressive flow, 5 layers, hidden layers (50, 50)), the
  prior's bounds as its support (as the README shows; none for an unbounded prior);
* ``arflows-maf``:
  ``arflows.sbi.posterior_nn("maf", hidden_features=(50, 50, 50), support=prior)``: the
  architecture of sbi's default (5 affine MADE layers, each with 3 hidden layers of 50 units:
  nflows' first layer and its 2 blocks), for the sampling time at the same estimator size.

C2ST: ``sbi.utils.metrics.c2st(reference, samples, classifier="mlp")`` (sbibm's classifier:
z-scored by the reference samples, an MLP with two hidden layers of 10 x dim ReLU units, Adam,
early stopping, accuracy of 5-fold cross-validation) between 10,000 reference samples and
10,000 ``posterior.sample`` draws, for each of the fixed observations (0.5 is the best).
Sampling time: ``posterior.sample_batched((10000,), x=xs)`` for 100 simulated observations
(prior predictive, one seed), after a small warm-up call, timed in one process for every
estimator, interleaved (3 rounds, each calling every estimator once in a rotated order; the
median); every estimator goes through sbi's
rejection of samples outside the prior's support (arflows' samples, kept inside a box prior by
``support=prior``, are never rejected).

Writes ``results/conditional-cpu.md`` and ``.json`` (``conditional-cpu-quick.*`` with
``--quick``), each written to a temporary name and renamed into place.

Usage::

    python benchmarks/conditional.py [--quick] [--tables [NAME ...]] [--tasks [NAME ...]]
                                     [--seeds 5] [--observations 3] [--threads 1] [--out DIR]
"""

from __future__ import annotations

__all__ = ["TABLES", "RegressionTable", "main"]

import argparse
import datetime
import functools
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import cpu_model, run_state  # benchmarks/machine.py (run as a script)
from sbi_tasks import TASKS

TEST_FRACTION = 0.2
LEVEL = 0.9  # the central interval's coverage
COVERAGE_TARGET = (0.85, 0.95)
C2ST_SLACK = 0.02
SPEED_TARGET = 10.0
QUICK_TABLES = ("engel",)
QUICK_TASKS = ("two_moons",)

# --------------------------------------------------------------------------- regression


@dataclass
class RegressionTable:
    """One regression table: predictors X (n, p) and target y (n,), float64."""

    name: str
    source: str
    target: str
    features: list[str]
    X: np.ndarray
    y: np.ndarray

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "rows": len(self.y),
            "target": self.target,
            "features": self.features,
        }


def _diabetes() -> RegressionTable:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    return RegressionTable(
        "diabetes", "scikit-learn (raw)", "disease progression after one year",
        list(data.feature_names), data.data, data.target,
    )  # fmt: skip


def _statsmodels(name: str, target: str | None = None, note: str = "") -> RegressionTable:
    """A statsmodels dataset: its endog given its numeric exog (or ``target`` given the rest)."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas()
    frame = data.data.select_dtypes("number").dropna()
    if target is None:
        target = data.endog_name
        features = [c for c in data.exog.columns if c in frame.columns and c != "year"]
    else:
        features = [c for c in frame.columns if c != target]
    source = "statsmodels" + (f" ({note})" if note else "")
    return RegressionTable(
        name, source, target, features,
        frame[features].to_numpy(np.float64), frame[target].to_numpy(np.float64),
    )  # fmt: skip


def _star98() -> RegressionTable:
    """star98's binomial counts as a proportion: the share of pupils above the median."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from statsmodels.datasets import star98

        data = star98.load_pandas()
    above, below = data.endog["NABOVE"], data.endog["NBELOW"]
    return RegressionTable(
        "star98", "statsmodels (NABOVE / (NABOVE + NBELOW))", "share above the national median",
        list(data.exog.columns), data.exog.to_numpy(np.float64),
        (above / (above + below)).to_numpy(np.float64),
    )  # fmt: skip


TABLES: dict[str, Callable[[], RegressionTable]] = {
    "diabetes": _diabetes,
    # Koenker's Engel curve: food expenditure given income (statsmodels lists them swapped).
    "engel": lambda: _statsmodels("engel", "foodexp", "foodexp given income"),
    "grunfeld": lambda: _statsmodels("grunfeld", note="invest given value, capital"),
    "star98": _star98,
    "ccard": lambda: _statsmodels("ccard"),
    "statecrime": lambda: _statsmodels("statecrime"),
}
SKIPPED_TABLES = {
    "longley, stackloss, scotland, copper, cpunish, committee": "fewer than 50 rows (at most "
    "6 test rows a seed)",
    "fair": "the target (affairs) is 0 in two thirds of the rows: a point mass, where a "
    "continuous density is unbounded",
    "randhie, spector, star98 counts, anes96, modechoice": "count, binary or categorical targets",
}


def split_rows(table: RegressionTable, seed: int) -> tuple[np.ndarray, ...]:
    """The seed's 80/20 split: X_train, y_train, X_test, y_test (independent of other tables)."""
    rng = np.random.default_rng([seed, zlib.crc32(table.name.encode())])
    order = rng.permutation(len(table.y))
    test, train = np.split(order, [round(TEST_FRACTION * len(order))])
    return table.X[train], table.y[train], table.X[test], table.y[test]


def _scores(logp: np.ndarray, interval: np.ndarray, y: np.ndarray) -> dict:
    lo, hi = interval[:, 0], interval[:, 1]
    return {
        "loglik": float(np.mean(logp)),
        "coverage": float(np.mean((y >= lo) & (y <= hi))),
        "width": float(np.mean(hi - lo)),
    }


def linear(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int):  # noqa: ANN201
    from scipy.stats import norm
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(X, y)
    residual = y - model.predict(X)
    sd = math.sqrt(float(residual @ residual) / (len(y) - X.shape[1] - 1))
    mean = model.predict(X_test)
    z = norm.ppf(0.5 + LEVEL / 2)
    interval = np.stack([mean - z * sd, mean + z * sd], 1)
    return _scores(norm.logpdf(y_test, mean, sd), interval, y_test)


def ngboost(  # noqa: ANN201
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int,
    **options: object,
):
    from ngboost import NGBRegressor

    model = NGBRegressor(random_state=seed, verbose=False, **options).fit(X, y)
    dist = model.pred_dist(X_test)
    tail = (1 - LEVEL) / 2
    interval = np.stack([dist.dist.ppf(tail), dist.dist.ppf(1 - tail)], 1)
    return _scores(dist.logpdf(y_test), interval, y_test)


def flow_regressor(  # noqa: ANN201
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int
):
    import torch

    from arflows.sklearn import FlowRegressor

    torch.manual_seed(seed)
    # Every option at its default; only the random seed follows the benchmark's seed.
    seeded = "seed" in inspect.signature(FlowRegressor).parameters
    model = FlowRegressor(**({"seed": seed} if seeded else {}))
    model.fit(X, y)
    interval = np.asarray(model.predict_interval(X_test, alpha=1 - LEVEL)).reshape(-1, 2)
    record = _scores(np.asarray(model.score_samples(X_test, y_test)), interval, y_test)
    history = getattr(model, "history_", None)
    if history is not None and getattr(history, "valid", None) is not None:
        record["epochs"] = len(history.valid)
    return record


REGRESSORS: dict[str, Callable] = {
    "linear": linear,
    "ngboost": ngboost,
    # NGBoost's own early stopping: its defaults' 500 trees overfit small tables.
    "ngboost-es": functools.partial(ngboost, validation_fraction=0.1, early_stopping_rounds=50),
    "arflows": flow_regressor,
}
BASELINES = ("linear", "ngboost", "ngboost-es")


def run_regression(
    tables: list[RegressionTable],
    seeds: int,
    models: list[str],
    runs: list,
    say: Callable,
    save: Callable[[], None],
) -> None:
    """Each model on every seed's split of every table: one record per fit, added to ``runs``
    (``save()`` after each table)."""
    for table in tables:
        for seed in range(seeds):
            X, y, X_test, y_test = split_rows(table, seed)
            for name in models:
                model = REGRESSORS[name]
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        record = model(X, y, X_test, y_test, seed)
                except Exception as error:  # noqa: BLE001 (recorded; the run goes on)
                    record = {"error": f"{type(error).__name__}: {error}"}
                record["seconds"] = time.perf_counter() - start
                runs.append({"table": table.name, "seed": seed, "model": name, **record})
                shown = record.get("error") or (
                    f"loglik {record['loglik']:10.3f}  coverage {record['coverage']:.2f}"
                )
                say(f"{table.name} seed {seed} {name:8s} {shown}  {record['seconds']:6.1f} s")
        save()


def _mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarise_regression(tables: list[RegressionTable], runs: list[dict]) -> list[dict]:
    """Per table: each model's mean ± sd log-likelihood and coverage, margins and targets."""
    out = []
    for table in tables:
        row: dict = {"table": table.name, "rows": len(table.y), "features": table.X.shape[1]}
        for name in REGRESSORS:
            mine = [r for r in runs if r["table"] == table.name and r["model"] == name]
            done = [r for r in mine if "loglik" in r]
            if not done:
                row[name] = {"error": next((r["error"] for r in mine if "error" in r), "n/a")}
                continue
            row[name] = {
                "loglik": _mean_sd([r["loglik"] for r in done]),
                "coverage": _mean_sd([r["coverage"] for r in done]),
                "width": statistics.fmean(r["width"] for r in done),
                "seconds": statistics.fmean(r["seconds"] for r in done),
                "seeds": len(done),
            }
        base = [b for b in BASELINES if "loglik" in row[b]]
        flow = row["arflows"]
        if base:
            best = max(base, key=lambda b: row[b]["loglik"]["mean"])
            row["best baseline"] = best
        if base and "loglik" in flow:
            flow["margin"] = flow["loglik"]["mean"] - row[best]["loglik"]["mean"]
            flow["at least every baseline"] = flow["margin"] >= 0
        if "coverage" in flow:
            lo, hi = COVERAGE_TARGET
            flow["coverage in range"] = lo <= flow["coverage"]["mean"] <= hi
        out.append(row)
    return out


# --------------------------------------------------------------------------- sbi


@dataclass
class SbiSettings:
    """Sizes of the simulation-based inference part (the full run's, or --quick's)."""

    simulations: int = 10_000
    samples: int = 10_000  # posterior and reference samples per observation
    observations: int = 3  # fixed observations scored by C2ST
    timing_observations: int = 100
    max_epochs: int | None = None  # None: train()'s default (no cap)
    checked: int = 1  # observations whose grid reference is compared with exact samples
    rounds: int = 3  # interleaved sampling rounds (the median is reported)


def _posterior_nn(*args, **options):  # noqa: ANN002, ANN003, ANN202
    from arflows.sbi import posterior_nn

    return posterior_nn(*args, **options)


SBI_HIDDEN = (50, 50, 50)  # nflows' MADE(hidden 50, num_blocks=2): first layer + 2 blocks
# name -> NPE's density_estimator argument, given the prior; None: NPE's default. arflows'
# estimators get `support=prior`, as the README shows: a box prior's bounds hold every sample
# (sbi's leakage rejection then never redraws); an unbounded prior changes nothing.
ESTIMATORS: dict[str, Callable[[object], object] | None] = {
    "sbi": None,
    "arflows": lambda prior: _posterior_nn(support=prior),
    # sbi's default's architecture: 5 affine layers, MADEs with 3 hidden layers of 50.
    "arflows-maf": lambda prior: _posterior_nn("maf", hidden_features=SBI_HIDDEN, support=prior),
}
DEFAULT_ESTIMATORS = ("sbi", "arflows", "arflows-maf")


class NoTracker:
    """sbi's tracker protocol, logging nothing (its default writes a folder ./sbi-logs)."""

    log_dir = None

    def log_metric(self, name, value, step=None) -> None:  # noqa: ANN001, D102
        pass

    def log_metrics(self, metrics, step=None) -> None:  # noqa: ANN001, D102
        pass

    def log_params(self, params) -> None:  # noqa: ANN001, D102
        pass

    def add_figure(self, name, figure, step=None) -> None:  # noqa: ANN001, D102
        pass

    def flush(self) -> None:  # noqa: D102
        pass


def _describe(estimator) -> str:  # noqa: ANN001
    """The estimator's architecture in a line: flow family, layers and widths."""
    from collections import Counter

    flow = getattr(estimator, "flow", None)
    if flow is not None and getattr(flow, "config", None):
        options = ", ".join(f"{k}={v}" for k, v in flow.config["arguments"].items())
        return f"arflows {flow.config['flow']}({options}), other options at their defaults"
    layers = getattr(getattr(estimator.net, "_transform", None), "_transforms", [])
    counts = Counter(type(layer).__name__ for layer in layers)
    made = next((layer for layer in layers if hasattr(layer, "autoregressive_net")), None)
    widths = [] if made is None else [
        m.out_features for m in made.modules() if type(m).__name__ == "MaskedLinear"
    ]  # fmt: skip
    parts = ", ".join(f"{n} x {k}" for k, n in counts.items())
    return f"nflows Flow: {parts}; each MADE's hidden widths {widths[:-1]}, tanh"


def _free_parameters(module) -> int:  # noqa: ANN001
    """Parameter entries, less the weights a mask holds at zero (nflows stores them, arflows
    does not)."""
    total = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        mask, weight = getattr(m, "mask", None), getattr(m, "weight", None)
        if mask is not None and weight is not None and mask.shape == weight.shape:
            total -= int((mask == 0).sum())
    return total


def train_posterior(task, name: str, theta, x, seed: int, settings: SbiSettings):  # noqa: ANN001, ANN201
    """``NPE(prior, ...)`` trained with ``train()``'s defaults: (posterior, record)."""
    import torch
    from sbi.inference import NPE

    make, prior = ESTIMATORS[name], task.prior()
    options = {} if make is None else {"density_estimator": make(prior)}
    inference = NPE(prior, show_progress_bars=False, tracker=NoTracker(), **options)
    train = {} if settings.max_epochs is None else {"max_num_epochs": settings.max_epochs}
    torch.manual_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = inference.append_simulations(theta, x).train(**train)
    seconds = time.perf_counter() - start
    summary = inference.summary
    record = {
        "train seconds": seconds,
        "epochs": summary["epochs_trained"][-1],
        "best validation loss": float(summary["best_validation_loss"][-1]),
        "parameters": _free_parameters(estimator),
        "estimator": _describe(estimator),
    }
    return inference.build_posterior(estimator), record


def c2st(reference: np.ndarray, samples: np.ndarray, seed: int = 0) -> float:
    """sbi's C2ST with sbibm's MLP classifier: 0.5 when the two sets cannot be told apart."""
    import torch
    from sbi.utils.metrics import c2st as sbi_c2st

    score = sbi_c2st(
        torch.as_tensor(reference, dtype=torch.float32),
        torch.as_tensor(samples, dtype=torch.float32),
        seed=seed,
        classifier="mlp",
    )
    return float(score)


def time_sampling(posterior, xs, n: int) -> float:  # noqa: ANN001
    """Seconds of one ``posterior.sample_batched((n,), x=xs)`` call."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sbi warns about the size of the batch
        samples = posterior.sample_batched((n,), x=xs, show_progress_bars=False)
    seconds = time.perf_counter() - start
    if tuple(samples.shape[:2]) != (n, len(xs)):
        raise RuntimeError(f"sample_batched returned shape {tuple(samples.shape)}")
    return seconds


def time_interleaved(posteriors: dict, xs, settings: SbiSettings, say: Callable) -> dict:  # noqa: ANN001
    """Every posterior's sampling time, interleaved: ``settings.rounds`` rounds, each calling
    every posterior once in a rotated order, after a small warm-up call each; name -> the
    times, so that a slow period of the machine hits every estimator alike."""
    names = list(posteriors)
    for name in names:
        posteriors[name].sample_batched((10,), x=xs[:2], show_progress_bars=False)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(time_sampling(posteriors[name], xs, settings.samples))
            say(f"sampling round {r + 1}: {name} {times[name][-1]:.1f} s")
    return times


def run_task(  # noqa: ANN201
    task,
    estimators: list[str],
    settings: SbiSettings,
    out: dict,
    say: Callable,  # noqa: ANN001
    save: Callable[[], None],
):
    """One task: training data, observations and references; every estimator trained; their
    sampling timed interleaved; then each one's C2STs. Put into ``out`` (``save()`` after each
    step)."""
    import torch

    seed = zlib.crc32(task.name.encode()) % 2**31
    rng = np.random.default_rng(seed)
    # The prior draws use torch's global stream, the simulator's noise this one: a different
    # seed, or the noise would repeat the normal or uniform draws that made theta.
    generator = torch.Generator().manual_seed(seed + 1)
    prior = task.prior()
    torch.manual_seed(seed)
    theta = prior.sample((settings.simulations,))
    x = task.simulate(theta, generator)
    theta_o = prior.sample((settings.observations,))
    x_o = task.simulate(theta_o, generator)
    xs = task.simulate(prior.sample((settings.timing_observations,)), generator)
    out |= {
        "task": task.name,
        "parameters": task.parameters,
        "data": task.data,
        "simulations": settings.simulations,
        "observations": x_o.tolist(),
        "true parameters": theta_o.tolist(),
        "estimators": {},
    }
    start = time.perf_counter()
    references = [task.reference(xo.double().numpy(), settings.samples, rng) for xo in x_o]
    seconds = time.perf_counter() - start
    say(f"{task.name}: {len(references)} reference posteriors, {seconds:.1f} s")
    if hasattr(task, "exact_sample"):
        check = task.check_likelihood(rng)
        check["c2st(grid reference, exact inversion)"] = [
            c2st(ref, task.exact_sample(xo.double().numpy(), settings.samples, rng))
            for ref, xo in zip(references[: settings.checked], x_o, strict=False)
        ]
        out["reference check"] = check
        say(f"{task.name}: reference check {check}")
    posteriors = {}
    for name in estimators:
        out["estimators"][name] = record = {}
        try:
            posteriors[name], trained = train_posterior(task, name, theta, x, 0, settings)
            record.update(trained)
            say(f"{task.name} {name}: trained {record['epochs']} epochs, "
                f"{record['train seconds']:.0f} s, {record['parameters']} parameters")  # fmt: skip
        except Exception as error:  # noqa: BLE001 (recorded; the run goes on)
            record["error"] = f"{type(error).__name__}: {error}"
            say(f"{task.name} {name}: {record['error']}")
        save()
    for name, times in time_interleaved(posteriors, xs, settings, say).items():
        out["estimators"][name] |= {"sample seconds": statistics.median(times),
                                    "sample seconds, each round": times}  # fmt: skip
    save()
    for name, posterior in posteriors.items():
        record = out["estimators"][name]
        record["c2st"] = []
        try:
            for ref, xo in zip(references, x_o, strict=True):
                torch.manual_seed(seed)
                draws = posterior.sample((settings.samples,), x=xo, show_progress_bars=False)
                record["c2st"].append(c2st(ref, draws.double().numpy()))
                save()
            say(f"{task.name} {name}: C2ST {[round(c, 3) for c in record['c2st']]}")
        except Exception as error:  # noqa: BLE001 (recorded; the run goes on)
            record["error"] = f"{type(error).__name__}: {error}"
            say(f"{task.name} {name}: {record['error']}")
            save()


def summarise_sbi(results: list[dict]) -> list[dict]:
    """Per task and arflows estimator: C2ST and sampling time against sbi's default."""
    rows = []
    for result in results:
        runs = result.get("estimators", {})
        sbi = runs.get("sbi", {})
        for name, record in runs.items():
            if name == "sbi" or not ("c2st" in record or "sample seconds" in record):
                continue
            row = {"task": result["task"], "estimator": name}
            if record.get("c2st"):
                row["c2st"] = statistics.fmean(record["c2st"])
            if record.get("c2st") and sbi.get("c2st"):
                row["sbi c2st"] = statistics.fmean(sbi["c2st"])
                row["c2st difference"] = row["c2st"] - row["sbi c2st"]
                row["c2st within slack"] = row["c2st difference"] <= C2ST_SLACK
            if "sample seconds" in sbi and "sample seconds" in record:
                row["speed-up"] = sbi["sample seconds"] / record["sample seconds"]
                row["speed target met"] = row["speed-up"] >= SPEED_TARGET
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def targets(regression: list[dict], sbi: list[dict]) -> list[tuple[str, str]]:
    """The issue's targets: (statement with figures, "holds" / "missed" / "n/a")."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("holds" if ok else "missed")

    out = []
    scored = [r for r in regression if "at least every baseline" in r["arflows"]]
    if regression:
        k = sum(r["arflows"]["at least every baseline"] for r in scored)
        missed = [r["table"] for r in scored if not r["arflows"]["at least every baseline"]]
        out.append((
            f"regression: arflows' mean test log-likelihood at least every baseline's "
            f"({', '.join(BASELINES)}) on every table: {k}/{len(scored)}"
            + (f" (not on {', '.join(missed)})" if missed else ""),
            verdict(k == len(scored) == len(regression) if scored else None),
        ))  # fmt: skip
        covered = [r for r in regression if "coverage in range" in r["arflows"]]
        k = sum(r["arflows"]["coverage in range"] for r in covered)
        lo, hi = COVERAGE_TARGET
        out.append((
            f"regression: arflows' 90% intervals cover {lo:.0%}-{hi:.0%} of the test targets "
            f"(mean over seeds) on every table: {k}/{len(covered)}",
            verdict(k == len(covered) == len(regression) if covered else None),
        ))  # fmt: skip
    for name in ("arflows", "arflows-maf"):
        rows = [r for r in sbi if r["estimator"] == name]
        if not rows:
            continue
        paired = [r for r in rows if "c2st within slack" in r]
        figures = ", ".join(f"{r['task']} {r['c2st']:.3f} vs {r['sbi c2st']:.3f}" for r in paired)
        out.append((
            f"sbi: {name} C2ST no worse than sbi's default + {C2ST_SLACK} on every task "
            f"({figures})",
            verdict(all(r["c2st within slack"] for r in paired) if paired else None),
        ))  # fmt: skip
        timed = [r for r in rows if "speed-up" in r]
        figures = ", ".join(f"{r['task']} {r['speed-up']:.1f}x" for r in timed)
        out.append((
            f"sbi: {name} posterior sampling at least {SPEED_TARGET:.0f}x faster than sbi's "
            f"default on every task ({figures})",
            verdict(all(r["speed target met"] for r in timed) if timed else None),
        ))  # fmt: skip
    return out


def _ms(entry: dict, key: str, digits: int = 2) -> str:
    if key not in entry:
        return "n/a"
    return f"{entry[key]['mean']:.{digits}f} ± {entry[key]['sd']:.{digits}f}"


def _yes(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def regression_markdown(tables: list[RegressionTable], summary: list[dict]) -> list[str]:
    models = list(REGRESSORS)
    lines = ["## Regression: test log-likelihood per row", ""]
    head = ["table", "rows x features", *models, "best baseline", "arflows margin",
            "≥ every baseline", "fit s (" + " / ".join(models) + ")"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for row in summary:
        flow = row["arflows"]
        cells = [row["table"], f"{row['rows']} x {row['features']}"]
        cells += [_ms(row[m], "loglik") for m in models]
        cells += [
            row.get("best baseline", "–"),
            f"{flow['margin']:+.2f}" if "margin" in flow else "–",
            _yes(flow.get("at least every baseline")),
            " / ".join(f"{row[m]['seconds']:.1f}" if "seconds" in row[m] else "n/a"
                       for m in models),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Regression: coverage of the central 90% intervals", ""]
    head = ["table", *models, "arflows in 85-95%", "mean width (" + " / ".join(models) + ")"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in summary:
        cells = [row["table"], *(_ms(row[m], "coverage", 3) for m in models)]
        cells.append(_yes(row["arflows"].get("coverage in range")))
        cells.append(" / ".join(f"{row[m]['width']:.3g}" if "width" in row[m] else "n/a"
                                for m in models))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    errors = [(r["table"], m, r[m]["error"]) for r in summary for m in models if "error" in r[m]]
    lines += [""] + [f"- {t} {m}: {e}" for t, m, e in errors]
    lines += ["", "| table | source | rows | target | predictors |", "|---|---|---:|---|---|"]
    for t in tables:
        lines.append(
            f"| {t.name} | {t.source} | {len(t.y)} | {t.target} | {', '.join(t.features)} |"
        )
    lines += ["", "Not used: " + "; ".join(f"{k} ({v})" for k, v in SKIPPED_TABLES.items()) + "."]
    return lines + [""]


def sbi_markdown(results: list[dict], summary: list[dict], settings: dict) -> list[str]:
    n, m = settings["samples"], settings["timing_observations"]
    lines = ["## Simulation-based inference", ""]
    head = ["task", "estimator", "parameters", "epochs", "train s", "C2ST per observation",
            "C2ST mean", f"sample_batched s ({m} obs x {n:,})"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for result in results:
        for name, r in result.get("estimators", {}).items():
            if "error" in r:
                lines.append(f"| {result['task']} | {name} | {r['error']} |" + " |" * 5)
                continue
            if "parameters" not in r:
                continue
            scores = r.get("c2st") or []
            lines.append(
                f"| {result['task']} | {name} | {r['parameters']:,} | {r['epochs']} | "
                f"{r['train seconds']:.0f} | {', '.join(f'{c:.3f}' for c in scores) or 'n/a'} | "
                + (f"{statistics.fmean(scores):.3f}" if scores else "n/a")
                + " | "
                + (f"{r['sample seconds']:.1f}" if "sample seconds" in r else "n/a")
                + " |"
            )
    lines += ["", "| task | arflows estimator | C2ST − sbi's | within 0.02 | sampling speed-up "
              "over sbi | ≥ 10x |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in summary:
        diff = f"{r['c2st difference']:+.3f}" if "c2st difference" in r else "n/a"
        speed = f"{r['speed-up']:.1f}x" if "speed-up" in r else "n/a"
        lines.append(
            f"| {r['task']} | {r['estimator']} | {diff} | {_yes(r.get('c2st within slack'))} | "
            f"{speed} | {_yes(r.get('speed target met'))} |"
        )
    lines += ["", "Estimators:", ""]
    seen = {}
    for result in results:
        for name, r in result.get("estimators", {}).items():
            if "estimator" in r:
                seen.setdefault(name, set()).add(r["estimator"])
    lines += [f"- `{k}`: {'; '.join(sorted(v))}" for k, v in seen.items()]
    for result in results:
        check = result.get("reference check")
        if check:
            lines += ["", f"Reference check ({result['task']}):", ""]
            for key, value in check.items():
                shown = ", ".join(f"{v:.3f}" for v in value) if key.startswith("c2st") else value
                lines.append(f"- {key}: {shown}")
    return lines + [""]


REGRESSION_LEGEND = """\
Regression: each seed draws a random 80/20 train/test split of the table; every model is fitted
on the train rows and scored on the test rows. Log-likelihoods are per test row, in nats, of
the target in its own units (mean ± sd over seeds; higher is better). `linear`: least squares
with Gaussian noise of the unbiased residual variance. `ngboost`: `NGBRegressor()` defaults
(Normal); `ngboost-es`: the same, stopped early (`early_stopping_rounds=50` on its
`validation_fraction=0.1`). `arflows`: `arflows.sklearn.FlowRegressor(seed=seed)`, every
option at its default. *margin*: arflows' mean minus the best baseline's. Coverage: the share
of test targets inside each model's central 90% interval (mean ± sd over seeds). *fit s*: mean
seconds per fit and test scoring."""

SBI_LEGEND = """\
SBI: each task's simulations train every estimator with `NPE(...).train()` defaults. C2ST:
`sbi.utils.metrics.c2st(reference, samples, classifier="mlp")` (sbibm's MLP classifier,
5-fold cross-validated accuracy; 0.5 is indistinguishable), for each fixed observation
(drawn from the prior predictive with a fixed seed). Sampling: one
`posterior.sample_batched((10000,), x=xs)` call for 100 observations (the median of 3 rounds
timed interleaved with the other estimators in one process), samples outside the
prior's support rejected and redrawn (sbi's default, the same path for every estimator;
arflows' estimators are built with `support=prior`, so a box prior's bounds hold all their
samples). *parameters*: free weights (entries a mask holds at zero not counted)."""


def markdown(meta: dict, checks: list, regression: tuple | None, sbi: tuple | None) -> str:
    lines = ["# Conditional densities: regression and simulation-based inference (cpu)", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "## Targets", ""]
    lines += [f"- **{v}**: {text}" for text, v in checks]
    lines.append("")
    if regression:
        lines += regression_markdown(*regression)
    if sbi:
        lines += sbi_markdown(*sbi)
    legends = [REGRESSION_LEGEND] * bool(regression) + [SBI_LEGEND] * bool(sbi)
    return "\n".join(lines + ["\n\n".join(legends)]) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 2 seeds of {', '.join(QUICK_TABLES)}; "
                   f"{', '.join(QUICK_TASKS)} with 1,000 simulations, 20 epochs at most, "
                   "1 observation, 1,000 samples")  # fmt: skip
    p.add_argument("--tables", nargs="*", choices=list(TABLES), metavar="NAME",
                   help=f"regression tables ({', '.join(TABLES)}; all by default; "
                   "none with an empty list)")  # fmt: skip
    p.add_argument("--tasks", nargs="*", choices=list(TASKS), metavar="NAME",
                   help=f"sbi tasks ({', '.join(TASKS)}; all by default; none with an empty "
                   "list)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=5, help="seeds per table (5)")
    p.add_argument("--models", nargs="+", choices=list(REGRESSORS), default=list(REGRESSORS),
                   help=f"regression models ({' '.join(REGRESSORS)})")  # fmt: skip
    p.add_argument("--observations", type=int, default=3,
                   help="fixed observations per task scored by C2ST (3)")  # fmt: skip
    p.add_argument("--estimators", nargs="+", choices=list(ESTIMATORS),
                   default=list(DEFAULT_ESTIMATORS),
                   help=f"NPE estimators ({' '.join(DEFAULT_ESTIMATORS)})")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="conditional-cpu", help="file stem (conditional-cpu)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="no fitting: write one result from these result files (parts of one "
                   "benchmark run in separate processes, e.g. --tasks and --tables)")  # fmt: skip
    args = p.parse_args(argv)
    args.settings = SbiSettings(observations=args.observations)
    if args.quick:
        args.seeds = min(args.seeds, 2)
        args.tables = list(QUICK_TABLES) if args.tables is None else args.tables
        args.tasks = list(QUICK_TASKS) if args.tasks is None else args.tasks
        args.settings = SbiSettings(1_000, 1_000, 1, 10, 20, 1, 1)
    args.tables = list(TABLES) if args.tables is None else args.tables
    args.tasks = list(TASKS) if args.tasks is None else args.tasks
    return args


def command_line(argv: list[str] | None) -> str:
    """The command as run, with paths relative to the working folder (no machine's folders)."""
    args = sys.argv[1:] if argv is None else argv
    script = os.path.relpath(Path(__file__).resolve())
    shown = [a if not os.path.isabs(a) else os.path.relpath(a) for a in args]
    return " ".join(["python", script, *shown])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("arflows", "torch", "sbi", "nflows", "ngboost", "scikit-learn",
                    "statsmodels"):  # fmt: skip
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def metadata(args: argparse.Namespace, argv: list[str] | None) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "versions": versions(),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
    }
    meta.update(run_state())
    return meta


def _clean(value: object) -> object:
    """JSON without NaN or infinities (they become null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_results(stem: Path, payload: dict, tables: list[RegressionTable]) -> str:
    """Writes STEM.md and STEM.json, each to a temporary name renamed into place."""
    from arflows.files import atomic_path

    regression = sbi = None
    if payload.get("regression"):
        regression = (tables, payload["regression"]["summary"])
    if payload.get("sbi"):
        sbi = (payload["sbi"]["tasks"], payload["sbi"]["summary"], payload["sbi"]["settings"])
    checks = [(t["target"], t["verdict"]) for t in payload["targets"]]
    report = markdown(payload["meta"], checks, regression, sbi)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(stem.with_suffix(".md")) as path:
        path.write_text(report)
    with atomic_path(stem.with_suffix(".json")) as path:
        path.write_text(json.dumps(_clean(payload), indent=2) + "\n")
    return report


def finish(payload: dict, tables: list[RegressionTable]) -> list[RegressionTable]:
    """Summaries and targets of the collected runs, into ``payload``; the tables with runs."""
    if payload.get("regression"):
        names = {r["table"] for r in payload["regression"]["runs"]}
        tables = [t for t in tables if t.name in names]
        payload["regression"]["summary"] = summarise_regression(
            tables, payload["regression"]["runs"]
        )
    if payload.get("sbi"):
        payload["sbi"]["summary"] = summarise_sbi(payload["sbi"]["tasks"])
    checks = targets(
        payload["regression"]["summary"] if payload.get("regression") else [],
        payload["sbi"]["summary"] if payload.get("sbi") else [],
    )
    payload["targets"] = [{"target": text, "verdict": v} for text, v in checks]
    return tables


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {text}", flush=True)

    payload: dict = {"meta": metadata(args, argv)}
    stem = args.out / f"{args.name}{'-quick' if args.quick and not args.merge else ''}"
    tables: list[RegressionTable] = []

    def save(payload: dict, done: bool = False) -> str:
        """The results so far, written (a run cut short keeps what it finished)."""
        payload["meta"]["finished"] = done
        payload["meta"]["load average at end"] = [round(v, 2) for v in os.getloadavg()]
        payload["meta"]["elapsed seconds"] = round(time.perf_counter() - start, 1)
        return write_results(stem, payload, finish(payload, tables))

    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        payload["meta"]["parts"] = [part["meta"] for part in parts]
        runs = [r for part in parts if part.get("regression") for r in part["regression"]["runs"]]
        tasks: dict[str, dict] = {}  # parts may hold different estimators of one task
        for t in (t for part in parts if part.get("sbi") for t in part["sbi"]["tasks"]):
            if t["task"] in tasks:
                tasks[t["task"]]["estimators"].update(t["estimators"])
                tasks[t["task"]].setdefault("reference check", t.get("reference check"))
            else:
                tasks[t["task"]] = t
        tasks = list(tasks.values())
        if runs:
            payload["regression"] = {"runs": runs}
        if tasks:
            settings = next(p["sbi"]["settings"] for p in parts if p.get("sbi"))
            payload["sbi"] = {"settings": settings, "tasks": tasks}
        tables += [TABLES[name]() for name in dict.fromkeys(r["table"] for r in runs)]
    else:
        tables += [TABLES[name]() for name in args.tables]
        if tables:
            say(f"regression: {', '.join(f'{t.name} {t.X.shape}' for t in tables)}")
            payload["regression"] = {
                "tables": [t.describe() for t in tables],
                "seeds": list(range(args.seeds)),
                "runs": [],
            }
            runs = payload["regression"]["runs"]
            run_regression(tables, args.seeds, args.models, runs, say, lambda: save(payload))
        if args.tasks:
            payload["sbi"] = {"settings": args.settings.__dict__, "tasks": []}
            for name in args.tasks:
                out: dict = {}
                payload["sbi"]["tasks"].append(out)
                run_task(TASKS[name](), args.estimators, args.settings, out, say,
                         lambda: save(payload))  # fmt: skip
    print(save(payload, done=True))
    say(f"wrote {os.path.relpath(stem)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
