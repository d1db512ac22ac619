r"""How time and memory of arflows flows grow with rows N, features D and depth.

For ``arflows.MAF`` (and ``arflows.NSF`` on a subset) the script measures, one fresh
subprocess per measurement,

* ``log_prob``: ``flow().log_prob(x)`` on N rows under ``torch.no_grad()``;
* ``train``: one maximum-likelihood step (``-log_prob(x).mean()``, backward, Adam) on a batch;
* ``sample``: ``flow().sample((N,))`` under ``torch.no_grad()`` (the default MADE inverse);

along three axes: N (D and depth fixed), D (N and depth fixed; hidden width
``H = max(64, 2 D)``) and depth (number of transforms). It fits log-log slopes
(``time ~ x^slope``) and writes ``results/scale-<device>.md``, ``.json`` and ``.png``.

Memory: on CPU, the growth of the process's peak resident set size (``ru_maxrss``) during the
timed calls, over the peak reached before them (after building the model, the data and a
small warm-up call); on CUDA, ``torch.cuda.max_memory_allocated`` during the timed calls minus
the memory allocated before them.

Usage::

    python benchmarks/scale.py [--quick] [--device cpu|cuda] [--threads 2] [--out DIR]
"""

from __future__ import annotations

__all__ = ["Case", "grid", "main", "measure"]

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (run as a script)

OPS = ("log_prob", "train", "sample")
AXES = ("N", "D", "depth")
BINS = 8
LR = 1e-3
TRAIN_BATCH = 512  # the train step's batch on the D and depth axes
# On the N axis the train batch is N, up to this many rows (NSF's backward pass keeps about
# 50 KiB per row at D = 16: 5 GiB at 1e5 rows).
TRAIN_MAX_N = {"maf": 1_000_000, "nsf": 100_000}
WARMUP_ROWS = 64
REPEAT_SECONDS = 3.0  # stop repeating once the timed calls of one case took this long


@dataclass(frozen=True)
class Case:
    """One measurement: a flow, an operation and its sizes.

    Attributes:
        flow: ``"maf"`` or ``"nsf"``.
        axis: the axis of the grid this case belongs to (``"N"``, ``"D"`` or ``"depth"``).
        op: ``"log_prob"``, ``"train"`` or ``"sample"``.
        rows: rows of ``x`` for ``log_prob`` and ``train``, samples drawn for ``sample``.
        features: D.
        hidden: the MADE's hidden width H (two hidden layers).
        transforms: the flow's depth.
    """

    flow: str
    axis: str
    op: str
    rows: int
    features: int
    hidden: int
    transforms: int

    @property
    def x(self) -> int:
        """The value on this case's axis."""
        return {"N": self.rows, "D": self.features, "depth": self.transforms}[self.axis]


def grid(quick: bool = False) -> list[Case]:
    """The measurements of a run.

    Full run: MAF on N in {1e3, 1e4, 1e5, 1e6} (D = 16, H = 64, depth 5; the train step's
    batch is N), on D in {2, 8, 32, 128, 784} (N = 1e4, H = max(64, 2D), depth 5, train
    batch 512) and on depth in {1, 2, 5, 10} (N = 1e4, D = 16, H = 64); NSF (8 bins) on the
    same grid except D = 784 and the train step at N = 1e6.
    ``quick`` keeps two points per axis at small sizes.

    Args:
        quick: the smoke-run grid.

    Returns:
        The cases, in running order.
    """
    if quick:
        n_axis, d_axis, depth_axis = (1_000, 4_000), (2, 16), (1, 2)
        nsf_n, nsf_d, nsf_depth = (500, 1_000), (), ()
        d_rows = 2_000
    else:
        n_axis, d_axis, depth_axis = (
            (10**3, 10**4, 10**5, 10**6),
            (2, 8, 32, 128, 784),
            (1, 2, 5, 10),
        )
        nsf_n, nsf_d, nsf_depth = n_axis, (2, 8, 32, 128), depth_axis
        d_rows = 10_000
    cases = []
    for flow, ns, ds, depths in (
        ("maf", n_axis, d_axis, depth_axis),
        ("nsf", nsf_n, nsf_d, nsf_depth),
    ):
        for op in OPS:
            for n in ns:
                if op == "train" and n > TRAIN_MAX_N[flow]:
                    continue
                cases.append(Case(flow, "N", op, n, 16, 64, 5))
            for d in ds:
                rows = d_rows if op != "train" else TRAIN_BATCH
                cases.append(Case(flow, "D", op, rows, d, max(64, 2 * d), 5))
            for depth in depths:
                rows = d_rows if op != "train" else TRAIN_BATCH
                cases.append(Case(flow, "depth", op, rows, 16, 64, depth))
    return cases


# --------------------------------------------------------------------------- worker


def build(case: Case):  # noqa: ANN201 (an arflows flow)
    """The flow of ``case``, every linear layer at PyTorch's default initialisation.

    arflows zero-initialises each MADE's last layer (the flow starts at the identity); timing a
    non-identity flow avoids shortcuts an identity map could take in the inverse.
    """
    from torch import nn

    import arflows

    cls = {"maf": arflows.MAF, "nsf": arflows.NSF}[case.flow]
    kwargs = {"bins": BINS} if case.flow == "nsf" else {}
    flow = cls(
        case.features,
        transforms=case.transforms,
        hidden_features=(case.hidden,) * 2,
        **kwargs,
    )
    for module in flow.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    return flow


def measure(case: Case, device: str = "cpu", threads: int = 2, max_repeats: int = 3) -> dict:
    """Times ``case`` in this process and reports its peak memory growth.

    Args:
        case: what to measure.
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads``.
        max_repeats: at most this many timed calls (fewer once they took ``REPEAT_SECONDS``).

    Returns:
        ``{"seconds": [...], "median_s": float, "min_s": float, "memory_mib": float}``.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    flow = build(case).to(dev)
    optimizer = torch.optim.Adam(flow.parameters(), lr=LR)
    x = torch.randn(case.rows, case.features, device=dev)

    def call(rows: int) -> None:
        if case.op == "train":
            optimizer.zero_grad(set_to_none=True)
            loss = -flow().log_prob(x[:rows]).mean()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                if case.op == "log_prob":
                    flow().log_prob(x[:rows])
                else:
                    flow().sample((rows,))
        if cuda:
            torch.cuda.synchronize(dev)

    # A small warm-up (also creates Adam's state) so that one-off costs are not timed and the
    # memory baseline includes the model, its optimizer and the data.
    call(min(WARMUP_ROWS, case.rows))
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seconds: list[float] = []
    while len(seconds) < max_repeats and sum(seconds) < REPEAT_SECONDS:
        start = time.perf_counter()
        call(case.rows)
        seconds.append(time.perf_counter() - start)
    if cuda:
        memory = (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    else:
        memory = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "memory_mib": memory,
    }


def _worker(case: Case, device: str, threads: int, repeats: int) -> dict:
    try:
        return measure(case, device, threads, repeats)
    except Exception as error:  # reported in the results instead of ending the run
        return {"error": f"{type(error).__name__}: {error}"}


def run_in_subprocess(case: Case, args: argparse.Namespace, pool_context) -> dict:  # noqa: ANN001
    """``measure(case)`` in a fresh process forked from a server that has imported torch.

    A fresh process per case makes its peak memory its own; the fork server saves the import
    of torch (seconds) per case.
    """
    with pool_context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_worker, (case, args.device, args.threads, args.repeats))


# --------------------------------------------------------------------------- analysis


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (``y ~ x^slope``); None under 2 points.

    Points with y <= 0 (e.g. no measurable memory growth) are left out.
    """
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pairs) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pairs)
    my = statistics.fmean(p[1] for p in pairs)
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx


def series(records: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Records grouped by (flow, axis, op), sorted by the axis value."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if "median_s" in r:
            out.setdefault((r["flow"], r["axis"], r["op"]), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["x"])
    return out


def slopes(records: list[dict]) -> list[dict]:
    """Time and memory slopes per (flow, axis, op)."""
    return [
        {
            "flow": flow,
            "axis": axis,
            "op": op,
            "range": f"{rows[0]['x']:g}..{rows[-1]['x']:g}",
            "time_slope": slope([r["x"] for r in rows], [r["median_s"] for r in rows]),
            "memory_slope": slope([r["x"] for r in rows], [r["memory_mib"] for r in rows]),
        }
        for (flow, axis, op), rows in series(records).items()
    ]


def plot(records: list[dict], path: Path) -> None:
    """Log-log panels: time (top row) and memory (bottom row) against N, D and depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    styles = {"log_prob": "o-", "train": "s--", "sample": "^:"}
    for (flow, axis, op), rows in series(records).items():
        col = AXES.index(axis)
        xs = [r["x"] for r in rows]
        color = "C0" if flow == "maf" else "C1"
        label = f"{flow.upper()} {op}"
        axes[0, col].plot(xs, [r["median_s"] for r in rows], styles[op], color=color, label=label)
        mem = [(x, r["memory_mib"]) for x, r in zip(xs, rows, strict=True) if r["memory_mib"] > 0]
        if mem:
            axes[1, col].plot(*zip(*mem, strict=True), styles[op], color=color, label=label)
    names = {"N": "rows N (D=16, depth 5)", "D": "features D (H=max(64,2D))", "depth": "depth"}
    for col, axis in enumerate(AXES):
        for row, ylabel in enumerate(("median time (s)", "peak memory growth (MiB)")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(names[axis])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(records: list[dict], fits: list[dict], meta: dict, png: str) -> str:
    lines = ["# arflows scale benchmark (" + meta["device"] + ")", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", f"![scale]({png})", "", "## Slopes (log-log least squares)", ""]
    lines += [
        "| flow | axis | op | range | time ~ x^a | memory ~ x^b |",
        "|---|---|---|---|---|---|",
    ]
    for f in fits:
        lines.append(
            f"| {f['flow']} | {f['axis']} | {f['op']} | {f['range']} | "
            f"{fmt(f['time_slope'])} | {fmt(f['memory_slope'])} |"
        )
    lines += ["", "## Measurements", ""]
    lines += [
        "| flow | axis | op | N (rows) | D | H | depth | median time (s) | min (s) "
        "| repeats | memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        time_cell = fmt(r.get("median_s"), ".4g") if "error" not in r else "error: " + r["error"]
        lines.append(
            f"| {r['flow']} | {r['axis']} | {r['op']} | {r['rows']} | {r['features']} | "
            f"{r['hidden']} | {r['transforms']} | {time_cell} | "
            f"{fmt(r.get('min_s'), '.4g')} | {len(r.get('seconds', []))} | "
            f"{fmt(r.get('memory_mib'), '.1f')} |"
        )
    lines += ["", LEGEND]
    return "\n".join(lines) + "\n"


LEGEND = """\
Time: the median over the repeats (up to `--repeats`, fewer once the timed calls of a case
took 3 s), after a warm-up call on 64 rows, each case in a fresh subprocess. `log_prob` and
`sample` run under `torch.no_grad()`; `train` is one step (forward `log_prob`, backward, Adam)
on a batch of N rows (N axis) or 512 rows (D and depth axes). Sampling uses the
default inverse. Every linear layer has PyTorch's default initialisation (not the identity
start). Memory (CPU): growth of the process's peak resident set size (`ru_maxrss`) during the
timed calls over its peak before them (model, optimizer, data and the warm-up are in the
baseline), so it is the extra working memory of the operation, to about 1 MiB (the page
allocator may reuse freed pages: small values are noise and 0 means no new peak; points at 0
are left out of the memory slopes and plots). On CUDA: `max_memory_allocated` minus the
allocated memory before the calls. The machine is shared with other jobs (see the load
averages): single timings are noisy, the slopes are more stable than individual cells.

Cut from the full grid: NSF at D = 784 (time) and NSF's train step at N = 1e6 (its backward
pass would keep about 5 GiB per 1e5 rows). On the D axis the width grows with D
(H = max(64, 2D)), so the cost per row grows like D H + H^2: about D^1 up to D = 32 and D^2
beyond; the fitted D slope blends both regimes.
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke-run grid")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="most timed calls per case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def metadata(args: argparse.Namespace) -> dict:
    import torch

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "quick": args.quick,
        "cpu": cpu_model(),
    }
    if hasattr(os, "getloadavg"):
        meta["load average (1, 5, 15 min)"] = [round(v, 2) for v in os.getloadavg()]
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        print(f"--device: expected cpu or cuda, got {args.device!r}")
        return 2
    start = time.perf_counter()
    meta = metadata(args)
    records = []
    cases = grid(args.quick)
    # Fork-server children start from a process that imported torch but ran no operations, so
    # they share no thread pools or allocator state with this one.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "arflows"])
    for i, case in enumerate(cases):
        result = run_in_subprocess(case, args, context)
        records.append({**asdict(case), "x": case.x, **result})
        shown = (
            f"{result['median_s']:.4g} s, {result['memory_mib']:.1f} MiB"
            if "median_s" in result
            else result["error"]
        )
        print(
            f"[{i + 1}/{len(cases)} {time.perf_counter() - start:.0f} s] {case.flow} "
            f"{case.axis}={case.x} {case.op}: {shown}",
            flush=True,
        )
    meta["load average at end"] = (
        [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    meta["elapsed seconds"] = round(time.perf_counter() - start, 1)
    fits = slopes(records)
    kind = "cpu" if args.device == "cpu" else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scale-{kind}{'-quick' if args.quick else ''}"
    plot(records, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(records, fits, meta, stem.name + ".png"))
    payload = {"meta": meta, "slopes": fits, "results": records}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    for f in fits:
        print(
            f"{f['flow']} {f['axis']:5s} {f['op']:8s} time ~ x^{fmt(f['time_slope'])}, "
            f"memory ~ x^{fmt(f['memory_slope'])}"
        )
    print(f"wrote {stem}.md, .json and .png ({meta['elapsed seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
