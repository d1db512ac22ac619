r"""Sampling, density and training speed of affine MAFs: arflows against zuko, nflows and Pyro.

Every library builds the same flow: 5 affine autoregressive layers, each conditioned by a
MADE with two hidden layers (D -> H -> H -> 2D, ReLU), on a standard normal base. For each
size (D, H) the script times, on N points,

* ``log_prob``: the parallel (data -> noise) direction, one network pass per layer;
* ``sample``: the sequential direction. arflows uses its default inverse (the one-sweep exact
  MADE inverse) and, as ``arflows-passes``, the naive fixed-point inverse (D network passes
  per layer), which is what the peers do;
* ``train``: one maximum-likelihood step on a batch (log_prob, backward, Adam step);

and a dense reference: 5 plain ``nn.Sequential`` MLPs of the same shape on the same points,
the ceiling that a masked network can at best match.

Usage::

    python benchmarks/sampling.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Peers whose import fails are skipped with a note. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/machine.py (run as a script)
from torch import Tensor, nn

TRANSFORMS = 5
N_POINTS = 10_000
BATCH = 512
LR = 1e-3
SIZES = ((8, 128), (64, 512), (256, 1024))
QUICK_SIZES = SIZES[:2]
BINS = 8
SPLINE_SIZES = {(8, 128)}  # the spline rows (names ending in -nsf) run at these sizes only
PILOT_SECONDS = 0.5  # the pilot grows its batch until one call takes this long
MIN_TIMED = 1_000  # a scaled measurement still times at least this many points


# --------------------------------------------------------------------------- models


class Model(nn.Module):
    """A built flow with the common interface: ``log_prob(x)``, ``sample(n)``, ``train_step(x)``.

    Subclasses define ``log_prob`` and ``sample``; ``train_step`` is the same for all: the
    negative mean log-likelihood, its gradient and one Adam step.
    """

    can_sample = True
    optimizer: torch.optim.Optimizer | None = None

    def prepare(self, device: torch.device) -> Model:
        """Moves the model to ``device``, then makes its optimizer (on the moved parameters)."""
        self.to(device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=LR)
        return self

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def diagnostics(self) -> str:
        """A note on how this model computed its results (empty by default)."""
        return ""

    def loss(self, x: Tensor) -> Tensor:
        return -self.log_prob(x).mean()

    def train_step(self, x: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class LazyFlowModel(Model):
    """arflows and zuko: a lazy flow module; ``flow()`` returns a torch distribution."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.flow().sample((n,))


class ArflowsModel(LazyFlowModel):
    """arflows: a lazy flow, plus the fixed-point passes its inverses use (a diagnostic)."""

    def diagnostics(self) -> str:
        used = []
        with torch.no_grad():
            z = self.flow().base.sample((64,))
            for lazy in reversed(self.flow.transforms):
                transform = lazy()
                z = transform.inv(z)
                used.append(getattr(transform, "passes_used", None))
        if all(u is None for u in used):
            return ""
        return "fixed-point passes used per layer: " + ", ".join(map(str, used))


class NflowsModel(Model):
    """nflows: ``Flow.log_prob(inputs)`` and ``Flow.sample(num_samples)``."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.flow.sample(n)


class PyroModel(Model):
    """Pyro: a ``TransformedDistribution`` rebuilt around the layers on every call."""

    def __init__(self, layers: list[nn.Module], features: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("loc", torch.zeros(features))

    def dist(self):  # noqa: ANN201
        import pyro.distributions as pdist

        base = pdist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)
        # Pyro's AffineAutoregressive maps x -> y = mu(x) + sigma(x) * x: its forward is the
        # parallel direction and its inverse the sequential one (D passes). A Pyro
        # TransformedDistribution samples with the forward maps and scores with the inverses,
        # so using the layers as given would be an IAF (fast sample, slow log_prob). For the
        # MAF direction (fast log_prob, as in every other library here) we hand it the
        # inverses `.inv`, last layer first: log_prob(x) then runs each layer forward on x
        # (data -> noise, one pass) and sample runs each layer's D-pass inverse.
        return pdist.TransformedDistribution(base, [t.inv for t in reversed(self.layers)])

    def log_prob(self, x: Tensor) -> Tensor:
        return self.dist().log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.dist().sample((n,))


class DenseModel(Model):
    """Reference: 5 unmasked MLPs D -> H -> H -> P D applied to the points (no sampling)."""

    can_sample = False

    def __init__(self, features: int, hidden: int, params: int = 2):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(features, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, params * features),
            )
            for _ in range(TRANSFORMS)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        return sum(mlp(x).sum(-1) for mlp in self.mlps)

    def loss(self, x: Tensor) -> Tensor:
        return sum(mlp(x).square().mean() for mlp in self.mlps)


# --------------------------------------------------------------------------- adapters


class Unsupported(Exception):
    """A library or option is not available in this environment."""


def build_arflows(features: int, hidden: int) -> Model:
    import arflows

    return ArflowsModel(
        arflows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    )


def build_arflows_passes(features: int, hidden: int) -> Model:
    import arflows

    try:
        flow = arflows.MAF(
            features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, inverse="passes"
        )
    except TypeError as error:
        raise Unsupported(
            f"arflows.MAF(..., inverse='passes') is not available ({error}); "
            "the default inverse is timed as `arflows`"
        ) from error
    return ArflowsModel(flow)


def build_arflows_dense(features: int, hidden: int) -> Model:
    import arflows
    from arflows.nn import MADE

    flow = arflows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    for module in flow.modules():
        if isinstance(module, MADE):
            module.blocks = None  # always the dense masked products, never the block path
    return ArflowsModel(flow)


def build_zuko(features: int, hidden: int) -> Model:
    import zuko

    return LazyFlowModel(
        zuko.flows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    )


def build_nflows(features: int, hidden: int) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    layers = []
    for i in range(TRANSFORMS):
        if i > 0:
            layers.append(ReversePermutation(features))
        # num_blocks=1 without residual blocks is D -> H -> H -> 2D with two ReLUs, the same
        # network as the others (nflows' default, 2 residual blocks, has 5 linear layers).
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features, hidden, num_blocks=1, use_residual_blocks=False
            )
        )
    return NflowsModel(Flow(CompositeTransform(layers), StandardNormal([features])))


def build_pyro(features: int, hidden: int) -> Model:
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    # Alternating natural and reversed orders, as the other libraries, not Pyro's random ones.
    orders = [torch.arange(features), torch.arange(features - 1, -1, -1)]
    layers = [
        AffineAutoregressive(
            AutoRegressiveNN(features, [hidden, hidden], permutation=orders[i % 2])
        )
        for i in range(TRANSFORMS)
    ]
    return PyroModel(layers, features)


def build_dense(features: int, hidden: int) -> Model:
    return DenseModel(features, hidden)


def build_arflows_nsf(features: int, hidden: int) -> Model:
    import arflows

    return ArflowsModel(
        arflows.NSF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, bins=BINS)
    )


def build_zuko_nsf(features: int, hidden: int) -> Model:
    import zuko

    return LazyFlowModel(
        zuko.flows.NSF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, bins=BINS)
    )


def build_dense_nsf(features: int, hidden: int) -> Model:
    # A spline of K bins has 3K - 1 parameters per feature (widths, heights, inner slopes).
    return DenseModel(features, hidden, params=3 * BINS - 1)


ADAPTERS: dict[str, Callable[[int, int], Model]] = {
    "arflows": build_arflows,
    "arflows-passes": build_arflows_passes,
    "arflows-dense": build_arflows_dense,
    "zuko": build_zuko,
    "nflows": build_nflows,
    "pyro": build_pyro,
    "dense": build_dense,
    "arflows-nsf": build_arflows_nsf,
    "zuko-nsf": build_zuko_nsf,
    "dense-nsf": build_dense_nsf,
}
PEER_MODULES = {"zuko": "zuko", "nflows": "nflows", "pyro": "pyro", "zuko-nsf": "zuko"}


def available_adapters(names: list[str]) -> tuple[list[str], list[str]]:
    """The adapters whose library imports, and a note for each one that does not."""
    keep, notes = [], []
    for name in names:
        module = PEER_MODULES.get(name)
        if module is None:
            keep.append(name)
            continue
        try:
            __import__(module)
        except Exception as error:  # any import failure (not only ImportError) means skip
            notes.append(f"{name}: skipped, `import {module}` failed ({error!r})")
            continue
        keep.append(name)
    return keep, notes


def reinitialize(model: nn.Module) -> None:
    """Gives every linear layer (masked ones included) PyTorch's default initialisation.

    Libraries initialise differently: arflows zero-initialises each MADE's last layer, so its
    flows start at the identity, where the fixed-point inverse stops after two passes. Timing
    a non-identity flow, initialised the same way in every library, keeps the comparison fair.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


# --------------------------------------------------------------------------- timing


@dataclass
class Budget:
    """How long to spend: per measurement, per case and in total (seconds)."""

    max_repeats: int
    case_seconds: float  # aim for all repeats of one case to take about this long
    max_seconds: float  # a call predicted slower is timed on fewer points, scaled linearly
    total_seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed() > self.total_seconds


@dataclass
class Measurement:
    """Median time of ``repeats`` calls on ``n_timed`` points, scaled to ``n`` points."""

    seconds: float
    n: int
    n_timed: int
    repeats: int
    times: list[float]

    @property
    def min_seconds(self) -> float:
        """The fastest repeat, scaled to ``n`` points: less sensitive to other processes."""
        return min(self.times) * self.n / self.n_timed

    @property
    def scaled(self) -> bool:
        return self.n_timed != self.n


def time_call(fn: Callable[[int], object], n: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn(n)
    sync()
    return time.perf_counter() - start


def round_down(n: int) -> int:
    """``n`` rounded down to two significant digits (1234 -> 1200)."""
    unit = 10 ** max(0, int(math.log10(n)) - 1)
    return n // unit * unit


def pilot(fn: Callable[[int], object], n: int, sync: Callable[[], None]) -> tuple[int, float]:
    """Warms up on a growing batch until one call takes ``PILOT_SECONDS`` or ``n`` is reached.

    Returns:
        The last pilot size and its time, from which the full time is extrapolated.
    """
    m = min(n, 16)
    while True:
        seconds = time_call(fn, m, sync)
        if m == n:
            return m, seconds
        if seconds > PILOT_SECONDS:
            # The extrapolation decides how many points to time: take the faster of two calls,
            # so that one call slowed by another process does not shrink the measurement.
            return m, min(seconds, time_call(fn, m, sync))
        m = min(n, 4 * m)


def measure(
    fn: Callable[[int], object], n: int, budget: Budget, sync: Callable[[], None]
) -> Measurement:
    """Times ``fn(n)``: pilot and warm-up, then the median of a few repeats.

    A call predicted to take longer than ``budget.max_seconds`` is timed on fewer points (at
    least ``MIN_TIMED``) and scaled linearly to ``n``: every operation here costs a fixed
    overhead plus a part linear in the points, and from ``MIN_TIMED`` points on the linear
    part dominates.
    """
    m, seconds = pilot(fn, n, sync)
    predicted = seconds * n / m
    max_seconds = budget.max_seconds / (4 if budget.over() else 1)
    n_timed = n
    if predicted > max_seconds:
        n_timed = max(min(n, MIN_TIMED), round_down(int(n * max_seconds / predicted)))
    expected = seconds * n_timed / m
    repeats = max(1, min(budget.max_repeats, int(budget.case_seconds / max(expected, 1e-9))))
    if budget.over():
        repeats = 1
    if m < n_timed and expected * (repeats + 1) <= budget.case_seconds:
        time_call(fn, n_timed, sync)  # a full-size warm-up only where it is cheap
    times = [time_call(fn, n_timed, sync) for _ in range(repeats)]
    return Measurement(statistics.median(times) * n / n_timed, n, n_timed, repeats, times)


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    """The measurements of one library at one size."""

    library: str
    features: int
    hidden: int
    log_prob: Measurement | None = None
    sample: Measurement | None = None
    train: Measurement | None = None
    note: str = ""


def benchmark_model(
    model: Model, x: Tensor, batch: Tensor, budget: Budget, sync: Callable[[], None]
) -> dict[str, Measurement]:
    def log_prob(m: int) -> Tensor:
        with torch.no_grad():
            return model.log_prob(x[:m])

    def sample(m: int) -> Tensor:
        with torch.no_grad():
            return model.sample(m)

    def train(m: int) -> Tensor:
        return model.train_step(batch[:m])

    out = {"log_prob": measure(log_prob, len(x), budget, sync)}
    if model.can_sample:
        out["sample"] = measure(sample, len(x), budget, sync)
    out["train"] = measure(train, len(batch), budget, sync)
    return out


def check(model: Model, features: int) -> str:
    """Notes on the model: non-finite samples or log-densities (a broken adapter), diagnostics."""
    notes = [model.diagnostics()]
    if model.can_sample:
        with torch.no_grad():
            x = model.sample(64)
            ok = x.shape == (64, features) and bool(torch.isfinite(model.log_prob(x)).all())
        notes.append("" if ok else "non-finite samples or log-densities")
    return "; ".join(note for note in notes if note)


def run_size(
    names: list[str],
    features: int,
    hidden: int,
    budget: Budget,
    device: torch.device,
    sync: Callable[[], None],
) -> list[Result]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_POINTS, features, generator=generator).to(device)
    batch = torch.randn(BATCH, features, generator=generator).to(device)
    results = []
    for name in names:
        if name.endswith("-nsf") and (features, hidden) not in SPLINE_SIZES:
            continue
        torch.manual_seed(0)
        result = Result(name, features, hidden)
        try:
            model = ADAPTERS[name](features, hidden)
        except Unsupported as error:
            print(f"  {name}: skipped: {error}", flush=True)
            continue
        reinitialize(model)
        model.prepare(device)
        result.note = check(model, features)
        for op, measurement in benchmark_model(model, x, batch, budget, sync).items():
            setattr(result, op, measurement)
        print(f"  {name:15s} {summary(result)}  [{budget.elapsed():.0f} s]", flush=True)
        results.append(result)
    return results


def summary(result: Result) -> str:
    parts = []
    for op in ("log_prob", "sample", "train"):
        m = getattr(result, op)
        if m is not None:
            mark = f" (n={m.n_timed}, scaled)" if m.scaled else ""
            parts.append(f"{op} {m.seconds:.4g} s{mark}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- reporting

COLUMNS = (
    "D",
    "H",
    "library",
    "log_prob (s)",
    "sample (s)",
    "train step (ms)",
    "sample / log_prob",
    "log_prob / dense",
    "log_prob / arflows",
    "sample / arflows",
    "sample / arflows-passes",
    "train / arflows",
)


def ratio(a: Measurement | None, b: Measurement | None) -> str:
    if a is None or b is None or b.seconds == 0:
        return "–"
    return f"{a.seconds / b.seconds:.3g}"


def cell(m: Measurement | None, scale: float = 1.0) -> str:
    if m is None:
        return "–"
    return f"{m.seconds * scale:.3g}" + (" †" if m.scaled else "")


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    by_key = {(r.features, r.hidden, r.library): r for r in results}
    for r in results:
        size = (r.features, r.hidden)
        ref = by_key.get((*size, "arflows"))
        passes = by_key.get((*size, "arflows-passes"))
        dense = by_key.get((*size, "dense-nsf" if r.library.endswith("-nsf") else "dense"))
        rows.append(
            [
                str(r.features),
                str(r.hidden),
                r.library + (" *" if r.note else ""),
                cell(r.log_prob),
                cell(r.sample),
                cell(r.train, 1e3),
                ratio(r.sample, r.log_prob),
                ratio(r.log_prob, dense and dense.log_prob),
                ratio(r.log_prob, ref and ref.log_prob),
                ratio(r.sample, ref and ref.sample),
                ratio(r.sample, passes and passes.sample),
                ratio(r.train, ref and ref.train),
            ]
        )
    return rows


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def model_notes(results: list[Result]) -> list[str]:
    """The notes of the rows marked ``*``."""
    return [f"D={r.features} {r.library}: {r.note}" for r in results if r.note]


def headline(results: list[Result]) -> list[str]:
    """One line per size: arflows' naive/sweep sampling ratio and its lead over each peer."""
    lines = []
    for size in dict.fromkeys((r.features, r.hidden) for r in results):
        rows = {r.library: r for r in results if (r.features, r.hidden) == size}
        ref = rows.get("arflows")
        if ref is None or ref.sample is None:
            continue
        parts = [
            f"{name} {ratio(rows[name].sample, ref.sample)}x"
            for name in ("arflows-passes", "zuko", "nflows", "pyro")
            if name in rows
        ]
        if parts:
            lines.append(
                f"- D={size[0]}, H={size[1]}: sampling time vs arflows: " + ", ".join(parts)
            )
        dense = rows.get("dense-nsf")
        splines = [
            f"{name} {ratio(rows[name].log_prob, dense.log_prob)}x"
            for name in ("arflows-nsf", "zuko-nsf")
            if name in rows and dense is not None
        ]
        if splines:
            lines.append(
                f"- D={size[0]}, H={size[1]}: spline log_prob vs a dense MLP of the same shape: "
                + ", ".join(splines)
            )
    return lines


def metadata(args: argparse.Namespace, device: torch.device) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "quick": args.quick,
        "n_points": N_POINTS,
        "train_batch": BATCH,
        "transforms": TRANSFORMS,
        "initialisation": "torch default for every (masked) linear layer",
    }
    if hasattr(os, "getloadavg"):
        meta["load average (1, 5, 15 min)"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    for name in ("arflows", "zuko", "nflows", "pyro-ppl"):
        try:
            meta[f"{name} version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            meta[f"{name} version"] = None
    return meta


LEGEND = """\
Times are medians over repeats (after a warm-up) under `torch.no_grad()` for `log_prob` and
`sample` on N = {n} points; `train step` is one Adam step on a batch of {batch} (forward
`log_prob`, backward, update). `†`: measured on fewer points (see the JSON's `n_timed`) and
scaled linearly to N, because one call would have taken too long. Ratios divide this row's
time by the named one at the same size: `arflows` is the default (one-sweep) inverse,
`arflows-passes` the naive fixed-point inverse (D network passes per layer), `dense` 5 plain
MLPs of the same shape (the ceiling for `log_prob`). Above 1 means slower than the reference.
"""


def write_outputs(
    results: list[Result], notes: list[str], meta: dict, out: Path, device: torch.device
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sampling-{device.type}"
    header = [f"# arflows sampling benchmark ({device.type})", ""]
    header += [f"- {key}: `{value}`" for key, value in meta.items()]
    body = [
        "",
        markdown_table(results),
        "",
        LEGEND.format(n=N_POINTS, batch=BATCH),
        *headline(results),
    ]
    all_notes = model_notes(results) + notes
    if all_notes:
        body += ["", "Notes (`*` rows and skips):", *[f"- {note}" for note in all_notes]]
    stem.with_suffix(".md").write_text("\n".join(header + body) + "\n")
    records = [
        {
            **{k: v for k, v in asdict(r).items() if k not in ("log_prob", "sample", "train")},
            **{op: _record(getattr(r, op)) for op in ("log_prob", "sample", "train")},
        }
        for r in results
    ]
    payload = {"meta": meta, "notes": notes, "results": records}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    return stem


def _record(m: Measurement | None) -> dict | None:
    return None if m is None else {**asdict(m), "min_seconds": m.min_seconds, "scaled": m.scaled}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D=8 and D=64 only, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--libraries",
        default=",".join(ADAPTERS),
        help=f"comma-separated subset of {','.join(ADAPTERS)}",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="total seconds (default: 1200, quick: 300)"
    )
    return parser.parse_args(argv)


def make_budget(args: argparse.Namespace) -> Budget:
    if args.quick:
        return Budget(3, case_seconds=4, max_seconds=15, total_seconds=args.budget or 300)
    return Budget(5, case_seconds=20, max_seconds=60, total_seconds=args.budget or 1200)


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    unknown = set(args.libraries.split(",")) - set(ADAPTERS)
    if unknown:
        print(f"unknown libraries {sorted(unknown)}; choose from {list(ADAPTERS)}")
        return 2
    names, notes = available_adapters(args.libraries.split(","))
    for note in notes:
        print(note)
    budget = make_budget(args)
    start_meta = metadata(args, device)
    load = start_meta.get("load average (1, 5, 15 min)", [0.0])[0]
    if device.type == "cpu" and load > 0.5:
        print(f"warning: load average {load} at start; other processes will skew CPU timings")
    results = []
    for features, hidden in QUICK_SIZES if args.quick else SIZES:
        print(f"D={features}, H={hidden}:", flush=True)
        results += run_size(names, features, hidden, budget, device, synchronizer(device))
    if "arflows-passes" in names and not any(r.library == "arflows-passes" for r in results):
        notes.append(
            "arflows-passes: `MAF(..., inverse='passes')` is not available in this arflows; "
            "the `arflows` row is whatever its default inverse is"
        )
    end_meta = metadata(args, device)
    meta = {
        **start_meta,
        "load average at end": end_meta.get("load average (1, 5, 15 min)"),
        "elapsed seconds": round(budget.elapsed(), 1),
    }
    stem = write_outputs(results, notes, meta, args.out, device)
    print()
    print(markdown_table(results))
    print(*headline(results), *model_notes(results), sep="\n")
    print(f"\nwrote {stem}.md and {stem}.json ({budget.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
