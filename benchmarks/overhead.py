r"""The product layer's own cost: a default ``arflows.fit`` epoch against a bare loop.

For a few tables (synthetic, fixed seed) and flows, both sized as ``arflows fit`` sizes them
(:func:`arflows.train.training_options`: batch, hidden widths, weight decay, warm-up,
patience), the script times, interleaved in one run:

* **fit**: ``arflows.fit(flow, x, epochs=E, batch_size=B, weight_decay=..., warmup=...,
  patience=...)`` with every other option at its default: 10% validation rows, the data
  checks, the standardisation (and, for the command line's default flow, the
  data-initialised start), AdamW, gradient clipping at norm 5, the cosine schedule, the
  non-finite checks, validation after every epoch, the best weights kept, early-stopping
  counts, the history, the progress bar (none: stderr is not a terminal), no checkpoint.
* **bare**: the loop a user would write over the same flow, rows, batch size and optimizer::

      perm = randperm(N); valid, train = x[perm[:N_v]], x[perm[N_v:]]
      flow.standardize_(train); opt = AdamW(flow.parameters(), lr, weight_decay=...)
      for epoch in range(E):
          flow.train()
          for idx in randperm(len(train)).split(B):
              loss = -flow().log_prob(train[idx]).mean()
              opt.zero_grad(); loss.backward(); opt.step()
          flow.eval()
          with torch.no_grad(): score = flow().log_prob(valid).mean().item()

  with torch's distribution argument checks off, as ``fit`` has them (so both run the same
  flow code), and AdamW as ``fit`` makes it; no clipping, schedule, checks or bookkeeping.
* **bare + clip**: the bare loop with fit's training recipe added: the gradient norm
  clipped at 5 and a cosine schedule stepped after every step. fit / (bare + clip) is the
  cost of the checks and the bookkeeping alone.

The bare loops run their epochs inside fit's epoch callback: every fit epoch is timed next
to one epoch of each bare loop (their order alternating), so a change in the machine's load
hits both. A fit epoch is the time between two callbacks, without the bare epochs run in
them: all of one epoch (steps, validation, bookkeeping), nothing of the set-up. The
**overhead** is the median over all pairs of fit epoch / bare epoch - 1 (with the quartiles).
fit's set-up (rows, checks, split, standardisation, start) is its time to the end of the
first epoch less one epoch; it is reported apart, with its share of a fit of the default
length (the sized number of epochs; early stopping often ends sooner).

The **optimizer** rows time the bare loop's epoch with AdamW's three implementations
(``foreach=False``: a few kernels per parameter, torch's default on CPU; ``foreach=True``;
``fused=True``) against the one ``fit`` uses.

Writes ``results/overhead-<device>.md`` and ``.json`` (``-quick`` with ``--quick``).

Usage::

    python benchmarks/overhead.py [--threads 1 2] [--repeats 3] [--epochs 8] [--quick]
        [--device cpu|cuda] [--out benchmarks/results]
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import cpu_model, run_state  # benchmarks/machine.py (run as a script)
from torch import Tensor
from torch.distributions import Distribution

import arflows
from arflows.flows import Flow, build
from arflows.train import training_options

VALID = 0.1  # fit's default validation fraction
LR = 1e-3  # fit's default learning rate
SEED = 0
# name: (rows, columns, the command line's default flow (mixture base, marginals) or a MAF).
CASES = {
    "maf 1,000 x 8": (1_000, 8, False),
    "maf 10,000 x 20": (10_000, 20, False),
    "default 1,000 x 8": (1_000, 8, True),
    "default 10,000 x 20": (10_000, 20, True),
}
QUICK_CASES = ("maf 1,000 x 8", "default 1,000 x 8")
OPTIMIZERS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def table(rows: int, columns: int, seed: int = SEED) -> Tensor:
    """A skewed, correlated table: ``z A + 0.3 z^2`` for standard normal ``z``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, columns, generator=g)
    mix = torch.randn(columns, columns, generator=g) / columns**0.5
    return z @ mix + 0.3 * z**2


def make_flow(columns: int, default: bool, rows: int) -> Flow:
    """The flow ``arflows fit`` builds by default (``default``), or a plain sized MAF."""
    sized = training_options(rows - round(VALID * rows), columns)
    options: dict = {"transforms": 5, "hidden_features": sized.hidden_features}
    if default:  # what arflows fit adds: a fitted mixture start with marginal maps
        options |= {"base": "gmm", "components": 8, "marginals": True}
    torch.manual_seed(SEED)
    return build("maf", columns, 0, **options)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA runs asynchronously), before reading a clock."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Bare:
    """The bare loop of the module's docstring, one epoch per :meth:`epoch` call.

    Building it is the loop's set-up: the split, the standardisation and the optimizer.
    """

    def __init__(self, flow: Flow, x: Tensor, optimizer: dict, recipe: bool = False):
        sized = training_options(len(x) - round(VALID * len(x)), x.shape[1])
        self.flow, self.batch = flow, sized.batch_size
        self.generator = torch.Generator().manual_seed(SEED)
        perm = torch.randperm(len(x), generator=self.generator).to(x.device)
        n_valid = round(VALID * len(x))
        self.valid, self.train = x[perm[:n_valid]], x[perm[n_valid:]]
        flow.standardize_(self.train)
        self.opt = torch.optim.AdamW(
            flow.parameters(), lr=LR, weight_decay=sized.weight_decay, **optimizer
        )
        # fit's recipe: clipping and a cosine schedule (its length does not change the cost).
        self.clip, self.schedule = None, None
        if recipe:
            self.clip = 5.0
            steps = 1000 * sized.steps_per_epoch
            self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, steps, LR / 100)

    def epoch(self) -> float:
        """One pass over the training rows, then the validation score."""
        flow, opt, train = self.flow, self.opt, self.train
        # As in fit: distributions built here skip torch's argument checks.
        before = Distribution._validate_args
        Distribution.set_default_validate_args(False)
        try:
            flow.train()
            order = torch.randperm(len(train), generator=self.generator).to(train.device)
            for idx in order.split(self.batch):
                loss = -flow().log_prob(train[idx]).mean()
                opt.zero_grad()
                loss.backward()
                if self.clip is not None:
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), self.clip)
                opt.step()
                if self.schedule is not None:
                    self.schedule.step()
            flow.eval()
            with torch.no_grad():
                return flow().log_prob(self.valid).mean().item()
        finally:
            Distribution.set_default_validate_args(before)


CLOCKS = ("wall", "cpu")  # time.perf_counter, and this process's CPU time (time.process_time)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run_pair(
    fit_flow: Flow,
    bare_flows: dict[str, tuple[Flow, dict, bool]],
    x: Tensor,
    epochs: int,
    sync: Callable[[], None],
) -> dict:
    """One fit, with an epoch of every bare loop run between two of its epochs.

    The bare epochs run inside fit's callback, so each fit epoch is timed next to one epoch
    of each bare loop (alternating which bare loop goes first): the machine's load changes
    little between them. Returns, for each clock (wall and CPU time), the seconds of fit's
    epochs after the first, of the bare loops' epochs, of fit's first epoch with its set-up,
    and of each bare loop's set-up.
    """
    sized = training_options(len(x) - round(VALID * len(x)), x.shape[1])
    times: dict = {
        clock: {"fit": [], "fit_first": None, **{name: [] for name in bare_flows}}
        for clock in CLOCKS
    }

    def spent(since: tuple[float, float]) -> list[float]:
        sync()
        return [b - a for a, b in zip(since, _now(), strict=True)]

    bare: dict[str, Bare] = {}
    for name, (flow, optimizer, recipe) in bare_flows.items():
        sync()
        t = _now()
        bare[name] = Bare(flow, x, optimizer, recipe)
        for clock, value in zip(CLOCKS, spent(t), strict=True):
            times[clock][f"{name}_setup"] = value
    last = [_now()]

    def between(epoch: int, history: object, flow: Flow) -> None:
        for clock, value in zip(CLOCKS, spent(last[0]), strict=True):
            if epoch == 0:
                times[clock]["fit_first"] = value
            else:
                times[clock]["fit"].append(value)
        names = list(bare) if epoch % 2 == 0 else list(reversed(bare))
        for name in names:
            t = _now()
            bare[name].epoch()
            for clock, value in zip(CLOCKS, spent(t), strict=True):
                times[clock][name].append(value)
        last[0] = _now()

    sync()
    last[0] = _now()
    arflows.fit(
        fit_flow, x, epochs=epochs, batch_size=sized.batch_size,
        weight_decay=sized.weight_decay, warmup=sized.warmup, patience=sized.patience,
        seed=SEED, callbacks=[between],
    )  # fmt: skip
    return times


def fit_optimizer() -> dict:
    """The AdamW implementation ``arflows.fit`` uses here, as AdamW's keyword arguments."""
    from arflows.train.setup import make_optimizer  # arflows >= this benchmark

    flow = arflows.MAF(2, transforms=1, hidden_features=(4,))
    group = make_optimizer(flow, LR, 0.0).param_groups[0]
    if group.get("fused"):
        return {"fused": True}
    return {"foreach": bool(group.get("foreach"))}


def measure_case(
    name: str, epochs: int, repeats: int, device: torch.device, say: Callable[[str], None]
) -> dict:
    """Repeats of :func:`run_pair` on one table: every epoch's seconds, and the summary."""
    rows, columns, default = CASES[name]
    x = table(rows, columns).to(device)
    sync = synchronizer(device)
    ours = fit_optimizer()
    # A short warm-up fit (imports, allocator), which also gives the flow after the start: a
    # mixture base may keep fewer components, and the bare loops must run the same flow.
    warm = make_flow(columns, default, rows).to(device)
    run_pair(warm, {}, x, 2, sync)
    variants = {"bare": (ours, False), "bare + clip": (ours, True)}
    # The other implementations (fit's own is the bare loop's).
    variants |= {f"bare {o}": (kind, False) for o, kind in OPTIMIZERS.items() if kind != ours}
    record: dict = {"rows": rows, "columns": columns, "default_flow": default, "repeats": []}
    for r in range(repeats):
        flows = {what: (copy.deepcopy(warm), *spec) for what, spec in variants.items()}
        times = run_pair(make_flow(columns, default, rows).to(device), flows, x, epochs, sync)
        record["repeats"].append(times)
        shown = []
        for clock in CLOCKS:
            t = times[clock]
            pairs = zip(t["fit"], t["bare"][1:], strict=True)
            ratio = statistics.median(f / b for f, b in pairs)
            shown.append(
                f"{clock}: fit {statistics.median(t['fit']) * 1e3:.1f} ms, bare "
                f"{statistics.median(t['bare'][1:]) * 1e3:.1f} ms, {ratio - 1:+.1%}"
            )
        say(f"{name}, {torch.get_num_threads()} thread(s), repeat {r + 1}: {'; '.join(shown)}")
    record["summary"] = {
        clock: summarize([rep[clock] for rep in record["repeats"]], rows, columns)
        for clock in CLOCKS
    }
    return record


def summarize(reps: list[dict], rows: int, columns: int) -> dict:
    """Medians over every paired epoch of one clock: epochs, overhead, set-up, optimizers."""
    med = statistics.median

    def pairs(a: str, b: str) -> list[float]:
        # fit's epoch k (k >= 1) ran just before the bare loops' epoch k.
        offset = 1 if a == "fit" else 0
        return [p / q for r in reps for p, q in zip(r[a], r[b][offset:], strict=False)]

    sized = training_options(rows - round(VALID * rows), columns)
    fit_epoch = med([t for r in reps for t in r["fit"]])
    bare_epoch = med([t for r in reps for t in r["bare"][1:]])  # as fit's: not the first
    fit_setup = med([r["fit_first"] for r in reps]) - fit_epoch
    bare_setup = med([r["bare_setup"] for r in reps])
    overheads = sorted(p - 1 for p in pairs("fit", "bare"))
    quartiles = statistics.quantiles(overheads, n=4) if len(overheads) > 1 else overheads * 3
    out = {
        "fit_epoch_s": fit_epoch,
        "bare_epoch_s": bare_epoch,
        "overhead": med(overheads),
        "overhead_quartiles": [quartiles[0], quartiles[-1]],
        "pairs": len(overheads),
        # Load only ever adds time: the fastest epochs of each estimate their own cost.
        "overhead_fastest": min(t for r in reps for t in r["fit"])
        / min(t for r in reps for t in r["bare"][1:])
        - 1,
        "overhead_over_clip": med([p - 1 for p in pairs("fit", "bare + clip")]),
        "clip_over_bare": med(pairs("bare + clip", "bare")),
        "fit_setup_s": fit_setup,
        "bare_setup_s": bare_setup,
        "default_epochs": sized.epochs,
        "steps_per_epoch": sized.steps_per_epoch,
        "batch_size": sized.batch_size,
        "hidden_features": list(sized.hidden_features),
        "setup_share": (fit_setup - bare_setup) / (fit_setup + sized.epochs * fit_epoch),
    }
    for o in OPTIMIZERS:
        measured = f"bare {o}" in reps[0]
        out[f"{o}_over_ours"] = med(pairs(f"bare {o}", "bare")) if measured else 1.0
    return out


def _flow_name(record: dict) -> str:
    kind = "default (mixture base, marginals)" if record["default_flow"] else "MAF"
    return f"{kind} {'x'.join(map(str, record['summary']['wall']['hidden_features']))}"


def markdown(meta: dict, results: dict) -> str:
    """The results as Markdown: metadata, the overhead table, the optimizer table."""
    lines = [f"# arflows fit overhead benchmark ({meta['device']})", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [
        "",
        "## A default fit epoch against a bare loop",
        "",
        "**overhead**: fit epoch / bare epoch - 1, the median over every pair of epochs timed "
        "side by side [quartiles] (pairs), in wall time and in this process's CPU time (the "
        "steadier on a busy machine); *over bare + clip*: the same against the bare loop with "
        "fit's clipping and schedule (fit's checks and bookkeeping alone); *clip*: bare + "
        "clip / bare - 1; *fastest*: fit's fastest epoch / the bare loop's fastest - 1 "
        "(load only adds time, so the fastest epochs are the least disturbed). Epochs: "
        "medians in wall time. Set-up (wall): to the end of the first epoch, "
        "less one epoch; set-up share: fit's extra set-up over a fit of the default length "
        "(the sized epochs).",
        "",
        "| threads | table | flow | batch x steps | fit epoch (ms) | bare epoch (ms) "
        "| **overhead (wall)** | **overhead (CPU)** | fastest (wall / CPU) "
        "| over bare + clip (wall / CPU) "
        "| clip (wall / CPU) | fit set-up (s) | bare set-up (s) | set-up share |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, cases in results.items():
        for rec in cases.values():
            w, c = rec["summary"]["wall"], rec["summary"]["cpu"]

            def spread(s: dict) -> str:
                low, high = s["overhead_quartiles"]
                return f"**{s['overhead']:+.1%}** [{low:+.1%}, {high:+.1%}] ({s['pairs']})"

            lines.append(
                f"| {threads} | {rec['rows']:,} x {rec['columns']} | {_flow_name(rec)} "
                f"| {w['batch_size']} x {w['steps_per_epoch']} "
                f"| {w['fit_epoch_s'] * 1e3:.1f} | {w['bare_epoch_s'] * 1e3:.1f} "
                f"| {spread(w)} | {spread(c)} "
                f"| {w['overhead_fastest']:+.1%} / {c['overhead_fastest']:+.1%} "
                f"| {w['overhead_over_clip']:+.1%} / {c['overhead_over_clip']:+.1%} "
                f"| {w['clip_over_bare'] - 1:+.1%} / {c['clip_over_bare'] - 1:+.1%} "
                f"| {w['fit_setup_s']:.2f} | {w['bare_setup_s']:.3f} | {w['setup_share']:.1%} |"
            )
    lines += [
        "",
        "## AdamW implementations (bare loop epoch, relative to fit's; wall / CPU time)",
        "",
        f"fit uses `{meta['fit optimizer']}`.",
        "",
        "| threads | table | flow | " + " | ".join(f"{o} / fit's" for o in OPTIMIZERS) + " |",
        # (fit's own implementation is the bare loop: 1 by definition)
        "|---:|---|---|" + "---:|" * len(OPTIMIZERS),
    ]
    for threads, cases in results.items():
        for rec in cases.values():
            w, c = rec["summary"]["wall"], rec["summary"]["cpu"]
            cells = " | ".join(
                f"{w[f'{o}_over_ours']:.3f} / {c[f'{o}_over_ours']:.3f}" for o in OPTIMIZERS
            )
            table = f"{rec['rows']:,} x {rec['columns']}"
            lines.append(f"| {threads} | {table} | {_flow_name(rec)} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="(1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per case (3)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit (8)")
    parser.add_argument("--quick", action="store_true", help="the 1,000-row tables only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.epochs < 3 or args.repeats < 1 or min(args.threads) < 1:
        parser.error("expected --epochs >= 3, --repeats >= 1 and --threads >= 1")
    return args


def metadata(args: argparse.Namespace, argv: list[str], device: torch.device) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # The script as run from the repository root, never this machine's paths.
        "command": " ".join(["python", "benchmarks/overhead.py", *argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "arflows": arflows.__version__,
        "device": str(device),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "epochs per run": args.epochs,
        "repeats": args.repeats,
        "fit optimizer": f"AdamW({', '.join(f'{k}={v}' for k, v in fit_optimizer().items())})",
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    meta.update(run_state())
    return meta


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:.0f} s] {text}", flush=True)

    meta = metadata(args, argv, device)
    names = QUICK_CASES if args.quick else tuple(CASES)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"overhead-{device.type}{'-quick' if args.quick else ''}"
    results: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        results[str(threads)] = {}
        for name in names:
            results[str(threads)][name] = measure_case(
                name, args.epochs, args.repeats, device, say
            )
            # Written after every case, so that an interrupted run leaves what it measured.
            done = threads == args.threads[-1] and name == names[-1]
            meta["complete"] = done
            meta["load average at end"] = [round(v, 2) for v in os.getloadavg()]
            meta["elapsed seconds"] = round(time.perf_counter() - start, 1)
            text = markdown(meta, results)
            stem.with_suffix(".md").write_text(text)
            payload = {"meta": meta, "results": results}
            stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
