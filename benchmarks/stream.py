r"""Memory of fitting a Parquet file in memory or streamed; data-parallel training on CPU.

Two measurements of :func:`arflows.fit`, one run:

* **Memory against rows.** For N rows of D = 8 float64 columns in a Parquet file (row groups
  of 100k rows), a small MAF (``arflows.MAF(8, transforms=2, hidden_features=(32, 32))``) is
  fitted for one epoch (batch 4096, 10% held out) in a fresh Python process, once with the
  file read into memory (``arflows.data.read_table(path).x``, then ``fit``) and once streamed
  (``fit(flow, ParquetStream(path))``). Memory is the process's peak resident set size
  (``ru_maxrss``) at the end minus its peak after the imports and a tiny warm-up fit of both
  kinds (so it is the extra memory the data and the fit need beyond the libraries).
* **Data-parallel.** ``fit`` on in-memory rows, for the same small MAF (200k rows, 2 epochs,
  batch 1024) and a larger one (5 layers of 256-256 MADEs, 100k rows, 1 epoch, batch 2048), under
  ``python -m torch.distributed.run --standalone --nproc_per_node P`` with P = 1 and P = 2
  (gloo, ``OMP_NUM_THREADS=1`` in every process: one core against two), a few repeats each;
  the speed-up, and the final validation log-likelihoods of both, which should agree (the
  data-parallel fit follows the path of one process on the whole batch).

Writes ``results/stream-cpu.md``, ``.json`` and ``.png`` (``stream-cpu-quick.*`` with
``--quick``).

Usage::

    python benchmarks/stream.py [--quick] [--threads 1] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

__all__ = ["main", "make_rows", "write_parquet"]

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, run_state  # benchmarks/machine.py (run as a script)

D = 8
GROUP_ROWS = 100_000  # rows per Parquet row group (and per generated chunk)
MAF = {"transforms": 2, "hidden_features": (32, 32)}
MEMORY_FIT = {"epochs": 1, "batch_size": 4096, "valid": 0.1, "progress": False, "seed": 0}
DDP_FIT = {"epochs": 2, "batch_size": 1024, "valid": 0.1, "progress": False, "seed": 0}
# The data-parallel cases: the small MAF above, where a step is a few milliseconds and the
# per-step all-reduce dominates, and a wider, deeper one, where the compute does.
DDP_MODELS = {
    "small": {"maf": MAF, "fit": DDP_FIT, "rows": 200_000, "quick_rows": 50_000},
    "large": {
        "maf": {"transforms": 5, "hidden_features": (256, 256)},
        "fit": DDP_FIT | {"epochs": 1, "batch_size": 2048},
        "rows": 100_000,
        "quick_rows": 20_000,
    },
}
WARMUP_ROWS = 2_000


# --------------------------------------------------------------------------- data


def make_rows(n: int, chunk: int = 0, seed: int = 0):  # noqa: ANN201 (a NumPy array)
    """``n`` rows of a D-dimensional chain: ``x_j = 0.8 tanh(2 x_{j-1}) + 0.6 z_j``.

    Non-Gaussian and dependent, so the flow has something to learn. ``chunk`` seeds the rows of
    one chunk of a file independently of the others.
    """
    import numpy as np

    rng = np.random.default_rng([seed, chunk])
    z = rng.standard_normal((n, D))
    x = np.empty_like(z)
    x[:, 0] = z[:, 0]
    for j in range(1, D):
        x[:, j] = 0.8 * np.tanh(2.0 * x[:, j - 1]) + 0.6 * z[:, j]
    return x


def write_parquet(path: Path, rows: int, seed: int = 0) -> None:
    """A Parquet file of ``rows`` rows of ``make_rows``, in row groups of ``GROUP_ROWS``.

    Written a row group at a time: the writer never holds more than one of them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"x{j}" for j in range(D)]
    schema = pa.schema([(name, pa.float64()) for name in names])
    with pq.ParquetWriter(path, schema) as writer:
        for chunk, start in enumerate(range(0, rows, GROUP_ROWS)):
            x = make_rows(min(GROUP_ROWS, rows - start), chunk, seed)
            table = pa.table({name: x[:, j] for j, name in enumerate(names)}, schema=schema)
            writer.write_table(table, row_group_size=GROUP_ROWS)


def ddp_rows(rows: int):  # noqa: ANN201 (a tensor)
    """The in-memory rows of the data-parallel case, the same in every process."""
    import numpy as np
    import torch

    chunks = [
        make_rows(min(GROUP_ROWS, rows - start), chunk, seed=1)
        for chunk, start in enumerate(range(0, rows, GROUP_ROWS))
    ]
    return torch.as_tensor(np.concatenate(chunks), dtype=torch.get_default_dtype())


# --------------------------------------------------------------------------- workers


def peak_kib() -> int:
    """This process's peak resident set size so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_worker(spec: dict) -> dict:
    """One fit of ``spec["path"]`` in this (fresh) process: its extra peak memory and times."""
    import gc

    import pandas  # noqa: F401 (read_table's reader, in the baseline)
    import pyarrow.parquet  # noqa: F401
    import torch

    import arflows
    from arflows.data import ParquetStream, read_table

    torch.set_num_threads(spec["threads"])
    # Warm-up: both kinds of fit on a tiny file, so that lazily loaded code and one-off
    # allocations are in the baseline of both modes.
    tiny = spec["warmup"]
    options = MEMORY_FIT | {"batch_size": 256}
    arflows.fit(arflows.MAF(D, **MAF), read_table(tiny).x, **options)
    arflows.fit(arflows.MAF(D, **MAF), ParquetStream(tiny), **options)
    gc.collect()
    baseline = peak_kib()

    torch.manual_seed(0)
    flow = arflows.MAF(D, **MAF)
    read_s, after_read = None, None
    start = time.perf_counter()
    if spec["mode"] == "in-memory":
        x = read_table(spec["path"]).x
        read_s = time.perf_counter() - start
        after_read = peak_kib()
        start = time.perf_counter()
        history = arflows.fit(flow, x, **MEMORY_FIT)
    else:
        history = arflows.fit(flow, ParquetStream(spec["path"]), **MEMORY_FIT)
    fit_s = time.perf_counter() - start
    peak = peak_kib()
    return {
        "baseline_mib": baseline / 2**10,
        "peak_mib": peak / 2**10,
        "extra_mib": (peak - baseline) / 2**10,
        "extra_after_read_mib": None if after_read is None else (after_read - baseline) / 2**10,
        "read_s": read_s,
        "fit_s": fit_s,
        "train": history.train[-1],
        "valid": history.valid[-1],
    }


def ddp_worker(spec: dict) -> None:
    """One process of a data-parallel fit (under torch.distributed.run); rank 0 writes JSON."""
    import torch

    import arflows
    from arflows.train import init_from_env, shutdown

    torch.set_num_threads(1)
    world, _ = init_from_env("cpu")
    x = ddp_rows(spec["rows"])
    model = DDP_MODELS[spec["model"]]
    # Warm-up: a short fit of the same kind (data-parallel under P > 1), so that one-off costs
    # (about a second of first-call initialisation in a fresh process) are not timed.
    warm = model["fit"] | {"epochs": 1, "batch_size": 512}
    arflows.fit(arflows.MAF(D, **model["maf"]), x[:WARMUP_ROWS], **warm)
    torch.manual_seed(0)
    flow = arflows.MAF(D, **model["maf"])
    if world.active:
        torch.distributed.barrier()  # start the clock together
    start = time.perf_counter()
    history = arflows.fit(flow, x, **model["fit"])
    seconds = time.perf_counter() - start
    every = world.gather(seconds)
    if world.main:
        record = {
            "processes": world.size,
            "model": spec["model"],
            "fit_s": max(every),
            "fit_s_per_rank": every,
            "train": history.train,
            "valid": history.valid,
            "best_epoch": history.best_epoch,
            "threads": torch.get_num_threads(),
        }
        Path(spec["result"]).write_text(json.dumps(record))
    shutdown()


def run_memory_case(path: Path, mode: str, warmup: Path, threads: int) -> dict:
    """``memory_worker`` in a fresh interpreter (its peak memory is the case's own)."""
    spec = {"path": str(path), "mode": mode, "warmup": str(warmup), "threads": threads}
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"error": tail[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ddp_case(processes: int, model: str, rows: int, tmp: Path) -> dict:
    """One ``torch.distributed.run`` launch of ``processes`` processes (one thread each)."""
    result = tmp / f"ddp-{model}-{processes}.json"
    result.unlink(missing_ok=True)
    spec = {"rows": rows, "model": model, "result": str(result)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(Path(__file__).resolve()),
        "--ddp-worker",
        json.dumps(spec),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    launch_s = time.perf_counter() - start
    if done.returncode != 0 or not result.exists():
        tail = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"error": " | ".join(tail[-3:])}
    return json.loads(result.read_text()) | {"launch_s": launch_s}


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def memory_rows(records: list[dict]) -> list[dict]:
    """One summary row per N: both modes side by side."""
    out = []
    for n in sorted({r["rows"] for r in records}):
        by = {r["mode"]: r for r in records if r["rows"] == n and "error" not in r}
        mem, st = by.get("in-memory"), by.get("streamed")
        row = {"rows": n, "data_mib": n * D * 8 / 2**20, "in_memory": mem, "streamed": st}
        row["ratio"] = (
            mem["extra_mib"] / st["extra_mib"] if mem and st and st["extra_mib"] > 0 else None
        )
        out.append(row)
    return out


def ddp_summary(records: list[dict]) -> dict:
    """Median fit seconds per process count, the speed-up, and the validation agreement."""
    out: dict = {}
    for p in (1, 2):
        good = [r for r in records if r.get("processes") == p and "error" not in r]
        if not good:
            continue
        out[p] = {
            "median_s": statistics.median(r["fit_s"] for r in good),
            "seconds": [r["fit_s"] for r in good],
            "valid": good[0]["valid"][-1],
            "best": max(good[0]["valid"]),
            "all_valid": [r["valid"][-1] for r in good],
        }
    if 1 in out and 2 in out:
        out["speedup"] = out[1]["median_s"] / out[2]["median_s"]
        out["valid_difference"] = abs(out[1]["valid"] - out[2]["valid"])
    return out


def plot(summary: list[dict], path: Path) -> None:
    """Log-log: extra peak memory and fit time against N, in memory and streamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = [s["rows"] for s in summary]
    left.plot(ns, [s["data_mib"] for s in summary], "k:", label="decoded data (N·D·8 bytes)")
    for key, label, style in (("in_memory", "in memory", "o-"), ("streamed", "streamed", "s-")):
        pts = [(s["rows"], s[key]) for s in summary if s[key]]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        left.plot(xs, [max(r["extra_mib"], 0.5) for _, r in pts], style, label=label)
        total = [(r["read_s"] or 0) + r["fit_s"] for _, r in pts]
        right.plot(xs, total, style, label=label + (" (read + fit)" if key == "in_memory" else ""))
    left.set_ylabel("extra peak memory (MiB)")
    right.set_ylabel("seconds (1 epoch)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows N (D = 8 float64 columns)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_table(summary: list[dict]) -> list[str]:
    lines = [
        "| N (rows) | decoded data (MiB) | in-memory extra (MiB) | of which reading (MiB) "
        "| streamed extra (MiB) | in-memory / streamed | in-memory read + fit (s) "
        "| streamed fit (s) | in-memory µs/row | streamed µs/row | valid log-lik (mem / stream) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        mem, st = s["in_memory"] or {}, s["streamed"] or {}
        mem_s = (mem["read_s"] + mem["fit_s"]) if mem else None
        st_s = st.get("fit_s")
        lines.append(
            f"| {s['rows']:.0e} | {s['data_mib']:.1f} | {fmt(mem.get('extra_mib'), '.1f')} | "
            f"{fmt(mem.get('extra_after_read_mib'), '.1f')} | "
            f"{fmt(st.get('extra_mib'), '.1f')} | {fmt(s['ratio'], '.1f')} | "
            f"{fmt(mem_s)} ({fmt(mem.get('read_s'))} + {fmt(mem.get('fit_s'))}) | "
            f"{fmt(st_s)} | {fmt(None if mem_s is None else mem_s / s['rows'] * 1e6)} | "
            f"{fmt(None if st_s is None else st_s / s['rows'] * 1e6)} | "
            f"{fmt(mem.get('valid'), '.3f')} / {fmt(st.get('valid'), '.3f')} |"
        )
    return lines


def ddp_steps(model: str, rows: int) -> int:
    """Gradient steps of the data-parallel fit: batches of the training rows, all epochs."""
    fit = DDP_MODELS[model]["fit"]
    train = rows - round(fit["valid"] * rows)
    return -(-train // fit["batch_size"]) * fit["epochs"]


def ddp_table(ddp: dict, rows: dict[str, int]) -> list[str]:
    lines = [
        "| model | processes | rows | steps | fit (s, median) | ms per step | repeats (s) "
        "| speed-up | final valid log-lik |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    for model, summary in ddp.items():
        n = rows[model]
        steps = ddp_steps(model, n)
        for p in (1, 2):
            if p not in summary:
                lines.append(f"| {model} | {p} | {n} | {steps} | error | | | | |")
                continue
            r = summary[p]
            speedup = "1" if p == 1 else fmt(summary.get("speedup"))
            lines.append(
                f"| {model} | {p} | {n} | {steps} | {r['median_s']:.2f} | "
                f"{r['median_s'] / steps * 1e3:.1f} | "
                f"{', '.join(f'{s:.2f}' for s in r['seconds'])} | {speedup} | {r['valid']:.6f} |"
            )
        if "valid_difference" in summary:
            notes.append(
                f"{model}: final validation log-likelihood 1 process {summary[1]['valid']:.6f}, "
                f"2 processes {summary[2]['valid']:.6f}, difference "
                f"{summary['valid_difference']:.2e} nats per row."
            )
    return lines + ([""] + notes if notes else [])


def markdown(meta: dict, summary: list[dict], ddp: dict, png: str) -> str:
    lines = ["# arflows streaming and data-parallel benchmark (cpu)", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", f"![memory against rows]({png})", "", "## Memory against rows", ""]
    lines += memory_table(summary)
    lines += ["", MEMORY_LEGEND, "## Data-parallel (torch.distributed.run, gloo)", ""]
    lines += ddp_table(ddp, meta["ddp rows"])
    lines += ["", DDP_LEGEND]
    return "\n".join(lines)


MEMORY_LEGEND = """\
Each cell is one fit in a fresh Python process: `arflows.MAF(8, transforms=2,
hidden_features=(32, 32))` (float32), one epoch, batch 4096, 10% of the rows held out for
validation, on a Parquet file of N rows of 8 float64 columns (row groups of 100k rows).
*In memory*: `arflows.data.read_table(path).x` (pandas reads the file, the values become a
float32 tensor), then `fit` on the tensor. *Streamed*: `fit(flow, ParquetStream(path))` with the
default `chunk_rows=65536` and `buffer_rows=262144`; the stream reads the file once for the
standardisation, once per epoch and once per validation. *Extra* memory is the peak resident
set size (`ru_maxrss`) at the end of the fit minus the peak after the imports and a warm-up fit
of both kinds on 2,000 rows; *of which reading* is that growth right after `read_table`.
µs/row: seconds of the whole case (read + fit) per row of the file. Timings on a shared
2-core machine are noisy; the memory figures are not.
"""

DDP_LEGEND = """\
`fit` on the same in-memory rows (generated identically in every process), 10% held out,
seed 0: *small* is the MAF above, 2 epochs, global batch 1024; *large* is
`arflows.MAF(8, transforms=5, hidden_features=(256, 256))`, 1 epoch, global batch 2048. Under
`python -m torch.distributed.run --standalone --nproc_per_node P` with `OMP_NUM_THREADS=1` and
`torch.set_num_threads(1)` in every process: P = 1 uses one core, P = 2 two (gloo all-reduce
of the gradients every step). Time: `fit` alone, after a warm-up fit on 2,000 rows and a
barrier, on the slowest rank; the launch (interpreter start, imports, rendezvous) is in the
JSON as `launch_s`. With P = 2 each process computes the log-likelihood of half of every
batch; the step and the validation pass are those of one process on the whole batch, so the
final validation log-likelihoods agree up to float32 summation order. `ms per step`: the fit's
median time over its gradient steps (it includes standardisation and validation).
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N up to 1e6, 50k DDP rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the memory fits")
    parser.add_argument("--repeats", type=int, default=3, help="launches per DDP case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def metadata(args: argparse.Namespace, ns: list[int], ddp_n: dict[str, int]) -> dict:
    import pyarrow
    import torch

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "device": "cpu",
        "threads (memory fits)": args.threads,
        "threads (DDP, per process)": 1,
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "rows (memory)": ns,
        "ddp rows": ddp_n,
        "ddp repeats": args.repeats,
        "cpu": cpu_model(),
    }
    meta.update(run_state())
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    if args.ddp_worker:
        ddp_worker(json.loads(args.ddp_worker))
        return 0
    start = time.perf_counter()
    ns = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    ddp_n = {m: spec["quick_rows" if args.quick else "rows"] for m, spec in DDP_MODELS.items()}
    meta = metadata(args, ns, ddp_n)
    memory: list[dict] = []
    ddp: list[dict] = []

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:.0f} s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="arflows-stream-") as tmp:
        tmp = Path(tmp)
        warmup = tmp / "warmup.parquet"
        write_parquet(warmup, WARMUP_ROWS, seed=2)
        for n in ns:
            path = tmp / f"rows-{n}.parquet"
            t = time.perf_counter()
            write_parquet(path, n)
            size = path.stat().st_size / 2**20
            say(f"wrote {n:.0e} rows ({size:.0f} MiB on disk) in {time.perf_counter() - t:.1f} s")
            for mode in ("in-memory", "streamed"):
                result = run_memory_case(path, mode, warmup, args.threads)
                memory.append({"rows": n, "mode": mode, "file_mib": size, **result})
                shown = (
                    result["error"]
                    if "error" in result
                    else f"extra {result['extra_mib']:.1f} MiB, fit {result['fit_s']:.2f} s"
                    + (f", read {result['read_s']:.2f} s" if result["read_s"] else "")
                    + f", valid {result['valid']:.3f}"
                )
                say(f"N={n:.0e} {mode}: {shown}")
            path.unlink()
        for model, n in ddp_n.items():
            for repeat in range(args.repeats):
                for p in (1, 2):
                    result = run_ddp_case(p, model, n, tmp)
                    ddp.append({"processes": p, "model": model, "repeat": repeat, **result})
                    shown = (
                        result["error"]
                        if "error" in result
                        else f"fit {result['fit_s']:.2f} s, valid {result['valid'][-1]:.6f}"
                    )
                    say(f"DDP {model} {p} process{'es' if p > 1 else ''} ({n} rows): {shown}")
    meta["load average at end"] = (
        [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    meta["elapsed seconds"] = round(time.perf_counter() - start, 1)
    summary = memory_rows(memory)
    ddp_sum = {m: ddp_summary([r for r in ddp if r["model"] == m]) for m in ddp_n}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"stream-cpu{'-quick' if args.quick else ''}"
    plot(summary, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(meta, summary, ddp_sum, stem.name + ".png"))
    payload = {
        "meta": meta,
        "memory": memory,
        "ddp": ddp,
        "ddp_summary": {m: {str(k): v for k, v in d.items()} for m, d in ddp_sum.items()},
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(memory_table(summary)))
    print()
    print("\n".join(ddp_table(ddp_sum, ddp_n)))
    print(f"wrote {stem}.md, .json and .png ({meta['elapsed seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
