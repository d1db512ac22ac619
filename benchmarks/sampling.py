r"""Sampling, density and training speed of MAFs and NSFs: arflows against zuko, nflows,
normflows and Pyro, timed interleaved in one run.

Every library builds the same flow (see ``speed_models.py``): 5 affine autoregressive layers,
each conditioned by a MADE with two hidden layers (D -> H -> H -> 2D, ReLU), with alternating
feature orders, on a standard normal base. For each size (D, H) the script times

* ``log_prob`` on 10,000 points: the parallel (data -> noise) direction, one network pass per
  layer;
* ``sample`` of 2,000 points: the sequential direction. arflows uses its default inverse (the
  one-sweep exact MADE inverse) and, as ``arflows-passes``, the naive fixed-point inverse (D
  network passes per layer), which is what the peers do;
* ``train``: one maximum-likelihood step on a batch of 512 (log_prob, backward, Adam step);

and a dense reference: 5 plain ``nn.Sequential`` MLPs of the same shape on the same points,
the ceiling that a masked network can at best match. Spline rows (``-nsf``) run at D = 8.

The calls of one operation are timed **interleaved**: every round calls each library once
(in a rotated order), and each time is the median over the rounds, so that a slow period of
the machine hits every library alike and the ratios stay meaningful on a busy machine.

Usage::

    python benchmarks/sampling.py [--quick] [--only train,log_prob] [--features 8 64]
        [--threads 1 2] [--clock wall|cpu] [--tag NAME] [--device cpu|cuda]

Peers whose import fails are skipped with a note. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from machine import cpu_model, run_state  # benchmarks/machine.py (run as a script)
from speed_models import (
    ADAPTERS,
    MAF_PEERS,
    TRANSFORMS,
    Model,
    Unsupported,
    available_adapters,
    reinitialize,
)
from torch import Tensor

N_POINTS = {"log_prob": 10_000, "sample": 2_000, "train": 512}
OPS = tuple(N_POINTS)
SIZES = ((8, 128), (64, 512), (256, 1024))
QUICK_SIZES = SIZES[:2]
SPLINE_SIZES = {(8, 128)}  # the spline rows (names ending in -nsf) run at these sizes only
PILOT_SECONDS = 0.5  # the pilot grows its batch until one call takes this long
MIN_TIMED = 200  # a scaled measurement still times at least this many points
MIN_ROUNDS = 3


# --------------------------------------------------------------------------- timing


@dataclass
class Budget:
    """How long to spend: rounds per operation, per-operation and total time (seconds)."""

    max_rounds: int
    case_seconds: float  # aim for all rounds of one operation at one size to take this long
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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_call(
    fn: Callable[[int], object], n: int, sync: Callable[[], None], clock: Callable[[], float]
) -> float:
    sync()
    start = clock()
    fn(n)
    sync()
    return clock() - start


def round_down(n: int) -> int:
    """``n`` rounded down to two significant digits (1234 -> 1200)."""
    unit = 10 ** max(0, int(math.log10(n)) - 1)
    return n // unit * unit


def pilot(
    fn: Callable[[int], object], n: int, sync: Callable[[], None], clock: Callable[[], float]
) -> tuple[int, float]:
    """Warms up on a growing batch until one call takes ``PILOT_SECONDS`` or ``n`` is reached.

    Returns:
        The last pilot size and its time (the faster of two calls), to extrapolate from.
    """
    m = min(n, 16)
    while True:
        seconds = time_call(fn, m, sync, clock)
        if m == n or seconds > PILOT_SECONDS:
            # The faster of two calls, so that one call slowed by another process does not
            # shrink the measurement (the second call is also the full-size warm-up).
            return m, min(seconds, time_call(fn, m, sync, clock))
        m = min(n, 4 * m)


def measure_interleaved(
    calls: dict[str, Callable[[int], object]],
    n: int,
    budget: Budget,
    sync: Callable[[], None],
    clock: Callable[[], float],
) -> dict[str, Measurement]:
    """Times every ``calls[name](n)`` in rounds, one call of each per round; medians.

    Each call is first warmed up by a pilot on growing batches; one predicted to take longer
    than ``budget.max_seconds`` is timed on fewer points (at least ``MIN_TIMED``) and scaled
    linearly to ``n``: every operation here costs a fixed overhead plus a part linear in the
    points, and the linear part dominates there. The number of rounds fits the case's time
    budget (between ``MIN_ROUNDS`` and ``budget.max_rounds``; 1 once the total is spent).
    """
    n_timed, expected = {}, {}
    max_seconds = budget.max_seconds / (4 if budget.over() else 1)
    for name, fn in calls.items():
        m, seconds = pilot(fn, n, sync, clock)
        predicted = seconds * n / m
        n_timed[name] = n
        if predicted > max_seconds:
            n_timed[name] = max(min(n, MIN_TIMED), round_down(int(n * max_seconds / predicted)))
        expected[name] = seconds * n_timed[name] / m
        if m < n_timed[name]:
            time_call(fn, n_timed[name], sync, clock)  # a warm-up at the timed size
    round_seconds = max(sum(expected.values()), 1e-9)
    rounds = int(budget.case_seconds / round_seconds)
    rounds = 1 if budget.over() else max(MIN_ROUNDS, min(budget.max_rounds, rounds))
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
            times[name].append(time_call(calls[name], n_timed[name], sync, clock))
    return {
        name: Measurement(
            statistics.median(times[name]) * n / n_timed[name],
            n,
            n_timed[name],
            rounds,
            times[name],
        )
        for name in names
    }


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    """The measurements of one library at one size and thread count."""

    library: str
    features: int
    hidden: int
    threads: int
    log_prob: Measurement | None = None
    sample: Measurement | None = None
    train: Measurement | None = None
    note: str = ""


def operations(model: Model, x: Tensor, batch: Tensor) -> dict[str, Callable[[int], object]]:
    """The timed calls of one model, by operation, each on the first ``m`` points."""

    def log_prob(m: int) -> Tensor:
        with torch.no_grad():
            return model.log_prob(x[:m])

    def sample(m: int) -> Tensor:
        with torch.no_grad():
            return model.sample(m)

    def train(m: int) -> Tensor:
        return model.train_step(batch[:m])

    ops = {"log_prob": log_prob, "train": train}
    if model.can_sample:
        ops["sample"] = sample
    return ops


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
    ops: list[str],
    features: int,
    hidden: int,
    budget: Budget,
    device: torch.device,
    clock: Callable[[], float],
) -> list[Result]:
    """Builds every library's model at one size, then times each operation interleaved."""
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_POINTS["log_prob"], features, generator=generator).to(device)
    batch = torch.randn(N_POINTS["train"], features, generator=generator).to(device)
    results, calls = {}, {}
    for name in names:
        if name.endswith("-nsf") and (features, hidden) not in SPLINE_SIZES:
            continue
        torch.manual_seed(0)
        try:
            model = ADAPTERS[name](features, hidden)
        except Unsupported as error:
            print(f"  {name}: skipped: {error}", flush=True)
            continue
        reinitialize(model)
        model.prepare(device)
        results[name] = Result(name, features, hidden, torch.get_num_threads())
        results[name].note = check(model, features)
        calls[name] = operations(model, x, batch)
    for op in ops:
        timed = {name: c[op] for name, c in calls.items() if op in c}
        if not timed:
            continue
        for name, m in measure_interleaved(timed, N_POINTS[op], budget, sync, clock).items():
            setattr(results[name], op, m)
        line = ", ".join(f"{name} {m.seconds * 1e3:.4g}" for name, m in _op(results, op).items())
        print(f"  {op} (ms): {line}  [{budget.elapsed():.0f} s]", flush=True)
    return list(results.values())


def _op(results: dict[str, Result], op: str) -> dict[str, Measurement]:
    return {name: getattr(r, op) for name, r in results.items() if getattr(r, op) is not None}


# --------------------------------------------------------------------------- reporting

COLUMNS = (
    "threads",
    "D",
    "H",
    "library",
    "log_prob (ms)",
    "sample (ms)",
    "train step (ms)",
    "sample / log_prob",
    "log_prob / dense",
    "log_prob / arflows",
    "sample / arflows",
    "sample / arflows-passes",
    "train / arflows",
)


def ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    if a is None or b is None or b.seconds == 0:
        return None
    return a.seconds / b.seconds


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def cell(m: Measurement | None) -> str:
    if m is None:
        return "–"
    return f"{m.seconds * 1e3:.4g}" + (" †" if m.scaled else "")


def _key(r: Result) -> tuple[int, int, int]:
    return r.threads, r.features, r.hidden


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    by_key = {(*_key(r), r.library): r for r in results}
    for r in results:
        ref = by_key.get((*_key(r), "arflows"))
        passes = by_key.get((*_key(r), "arflows-passes"))
        dense = by_key.get((*_key(r), "dense-nsf" if r.library.endswith("-nsf") else "dense"))
        rows.append(
            [
                str(r.threads),
                str(r.features),
                str(r.hidden),
                r.library + (" *" if r.note else ""),
                cell(r.log_prob),
                cell(r.sample),
                cell(r.train),
                fmt(ratio(r.sample, r.log_prob)),
                fmt(ratio(r.log_prob, dense and dense.log_prob)),
                fmt(ratio(r.log_prob, ref and ref.log_prob)),
                fmt(ratio(r.sample, ref and ref.sample)),
                fmt(ratio(r.sample, passes and passes.sample)),
                fmt(ratio(r.train, ref and ref.train)),
            ]
        )
    return rows


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def model_notes(results: list[Result]) -> list[str]:
    """The notes of the rows marked ``*`` (once per library and size)."""
    notes = {f"D={r.features} {r.library}: {r.note}": None for r in results if r.note}
    return list(notes)


@dataclass(frozen=True)
class Target:
    """One row of the speed targets: ``ours / reference`` (or its inverse) against a bound."""

    label: str
    op: str
    size: tuple[int, int]
    ours: str
    references: tuple[str, ...]  # the fastest of these is the reference
    bound: float
    faster: bool = False  # report reference / ours ("x faster"), to be >= bound


TARGETS = (
    Target("MAF log_prob / fastest peer", "log_prob", (64, 512), "arflows", MAF_PEERS, 0.75),
    Target(
        "MAF sample: fastest peer / arflows",
        "sample",
        (64, 512),
        "arflows",
        MAF_PEERS,
        50,
        faster=True,
    ),
    Target("MAF train step / fastest peer", "train", (64, 512), "arflows", MAF_PEERS, 0.75),
    Target("MAF train step / fastest peer", "train", (8, 128), "arflows", MAF_PEERS, 1.0),
    Target("NSF log_prob / dense MLP", "log_prob", (8, 128), "arflows-nsf", ("dense-nsf",), 1.5),
    Target("NSF train step / zuko", "train", (8, 128), "arflows-nsf", ("zuko-nsf",), 0.75),
)


def target_lines(results: list[Result]) -> list[str]:
    """One line per target and thread count that this run measured: the ratio and the bound."""
    lines = []
    for threads in dict.fromkeys(r.threads for r in results):
        for t in TARGETS:
            rows = {
                r.library: getattr(r, t.op)
                for r in results
                if r.threads == threads and (r.features, r.hidden) == t.size
            }
            ours = rows.get(t.ours)
            refs = {name: rows[name] for name in t.references if rows.get(name) is not None}
            if ours is None or not refs:
                continue
            name, ref = min(refs.items(), key=lambda item: item[1].seconds)
            value = ref.seconds / ours.seconds if t.faster else ours.seconds / ref.seconds
            met = value >= t.bound if t.faster else value <= t.bound
            sign = ">=" if t.faster else "<="
            lines.append(
                f"- {threads} thread(s), D={t.size[0]} H={t.size[1]}: {t.label} = {value:.3g} "
                f"({t.ours} {ours.seconds * 1e3:.4g} ms, {name} {ref.seconds * 1e3:.4g} ms); "
                f"target {sign} {t.bound:g}: {'met' if met else 'missed'}"
            )
    return lines


def headline(results: list[Result]) -> list[str]:
    """One line per size and threads: arflows' sampling lead over each peer, splines vs dense."""
    lines = []
    for key in dict.fromkeys(_key(r) for r in results):
        rows = {r.library: r for r in results if _key(r) == key}
        where = f"{key[0]} thread(s), D={key[1]}, H={key[2]}"
        ref = rows.get("arflows")
        if ref is not None and ref.sample is not None:
            parts = [
                f"{name} {fmt(ratio(rows[name].sample, ref.sample))}x"
                for name in ("arflows-passes", *MAF_PEERS)
                if name in rows
            ]
            if parts:
                lines.append(f"- {where}: sampling time vs arflows: " + ", ".join(parts))
        dense = rows.get("dense-nsf")
        splines = [
            f"{name} {fmt(ratio(rows[name].log_prob, dense.log_prob))}x"
            for name in ("arflows-nsf", "zuko-nsf")
            if name in rows and dense is not None
        ]
        if splines:
            lines.append(
                f"- {where}: spline log_prob vs a dense MLP of the same shape: "
                + ", ".join(splines)
            )
    return lines


def metadata(args: argparse.Namespace, device: torch.device) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/sampling.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": args.threads,
        "clock": args.clock,
        "cpu": cpu_model(),
        "quick": args.quick,
        "points": N_POINTS,
        "transforms": TRANSFORMS,
        "initialisation": "torch default for every (masked) linear layer",
        **run_state(),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    for name in ("arflows", "zuko", "nflows", "normflows", "pyro-ppl"):
        try:
            meta[f"{name} version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            meta[f"{name} version"] = None
    return meta


LEGEND = """\
Times are medians over interleaved rounds (every round calls each library once, in a rotated
order, after a warm-up), in milliseconds: `log_prob` on {log_prob} points and `sample` of
{sample} points under `torch.no_grad()`; `train step` is one Adam step on a batch of {train}
(forward `log_prob`, backward, update). `†`: measured on fewer points (see the JSON's
`n_timed`) and scaled linearly, because one call would have taken too long. Ratios divide this
row's time by the named one at the same size and thread count: `arflows` is the default
(one-sweep) inverse, `arflows-passes` the naive fixed-point inverse (D network passes per
layer), `dense` 5 plain MLPs of the same shape (the ceiling for `log_prob`). Above 1 means
slower than the reference.
"""


def report(results: list[Result], notes: list[str], meta: dict) -> str:
    """The Markdown report: metadata, targets, table, legend, headline and notes."""
    header = [f"# arflows sampling benchmark ({meta['device']})", ""]
    header += [f"- {key}: `{value}`" for key, value in meta.items()]
    body = ["", "Targets (issue 16):", *target_lines(results), "", markdown_table(results), ""]
    body += [LEGEND.format(**N_POINTS), *headline(results)]
    all_notes = model_notes(results) + notes
    if all_notes:
        body += ["", "Notes (`*` rows and skips):", *[f"- {note}" for note in all_notes]]
    return "\n".join(header + body) + "\n"


def write_outputs(results: list[Result], notes: list[str], meta: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(report(results, notes, meta))
    records = [
        {
            **{k: v for k, v in asdict(r).items() if k not in OPS},
            **{op: _record(getattr(r, op)) for op in OPS},
        }
        for r in results
    ]
    payload = {"meta": meta, "notes": notes, "results": records}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def _record(m: Measurement | None) -> dict | None:
    return None if m is None else {**asdict(m), "min_seconds": m.min_seconds, "scaled": m.scaled}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D=8 and D=64 only, fewer rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2],
        help="torch CPU threads; several values run the whole benchmark for each (default: 2)",
    )
    parser.add_argument(
        "--only", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}"
    )
    parser.add_argument(
        "--features",
        type=int,
        nargs="+",
        default=None,
        help=f"the sizes to run, by D (of {', '.join(str(d) for d, _ in SIZES)})",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall time (default), or the process's CPU time, which on a busy machine leaves "
        "out the time other processes hold the CPU (with one thread only)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--tag", default="", help="written as sampling-<device>-<tag>.* (default: no tag)"
    )
    parser.add_argument(
        "--libraries",
        default=",".join(ADAPTERS),
        help=f"comma-separated subset of {','.join(ADAPTERS)}",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="total seconds (default: 1800, quick: 400)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="most rounds per operation")
    return parser.parse_args(argv)


def make_budget(args: argparse.Namespace) -> Budget:
    if args.quick:
        budget = Budget(5, case_seconds=6, max_seconds=10, total_seconds=args.budget or 400)
    else:
        budget = Budget(15, case_seconds=30, max_seconds=30, total_seconds=args.budget or 1800)
    if args.rounds is not None:
        budget.max_rounds = args.rounds
    return budget


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    unknown = set(args.libraries.split(",")) - set(ADAPTERS)
    ops = args.only.split(",")
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.features is not None:
        sizes = tuple(s for s in SIZES if s[0] in args.features)
    if unknown or set(ops) - set(OPS) or not sizes:
        print(
            f"choose libraries from {list(ADAPTERS)}, operations from {list(OPS)} and "
            f"features from {[d for d, _ in SIZES]}"
        )
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
    for threads in args.threads:
        torch.set_num_threads(threads)
        for features, hidden in sizes:
            print(f"{threads} thread(s), D={features}, H={hidden}:", flush=True)
            results += run_size(names, ops, features, hidden, budget, device, CLOCKS[args.clock])
    if "arflows-passes" in names and not any(r.library == "arflows-passes" for r in results):
        notes.append(
            "arflows-passes: `MAF(..., inverse='passes')` is not available in this arflows; "
            "the `arflows` row is whatever its default inverse is"
        )
    meta = {
        **start_meta,
        "load average at end": run_state().get("load average (1, 5, 15 min)"),
        "elapsed seconds": round(budget.elapsed(), 1),
    }
    stem = args.out / (f"sampling-{device.type}" + (f"-{args.tag}" if args.tag else ""))
    write_outputs(results, notes, meta, stem)
    print()
    print(markdown_table(results))
    print(*headline(results), *model_notes(results), sep="\n")
    print("\nTargets (issue 16):", *target_lines(results), sep="\n")
    print(f"\nwrote {stem}.md and {stem}.json ({budget.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
