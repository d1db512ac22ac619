r"""Bounded columns: what ``support=`` costs or gains in fit quality, and samples at a bound.

Each flow is fitted three ways to the same rows and scored on the same held-out rows, by the
average log-likelihood **in data space** (nats per row; higher is better):

* ``none``: no ``support=`` (the flow's density leaks outside the box);
* ``logit``: the bounded columns mapped by the plain logit, the map before the knee
  (:class:`~arflows.transforms.SupportTransform` with ``sharpness=0``);
* ``knee``: the default map, the identity in the middle of the interval and a logarithm
  within a knee of width/``sharpness`` of each bound.

Data sets (2 columns):

* ``posterior``: the two-moons simulation-based inference task (as in sbibm): parameters
  :math:`\theta \sim U(-1, 1)^2`, observations :math:`x` from the simulator; the flow fits
  :math:`p(\theta \mid x)` with ``support=[(-1, 1)] * 2``: a conditional density whose
  location moves with the context, well inside the prior box for most contexts;
* ``edge``: mass at the bounds of :math:`(-3, 3)^2`: :math:`x_1` uniform, :math:`x_2` a
  normal around :math:`2.5 \sin x_1` truncated to the box;
* ``inside``: a two-moons shape well inside :math:`(-3, 3)^2` (about 4 standard deviations
  from the bounds).

Every fit: 3 layers, MADEs with 2 hidden layers of 64 units, :func:`arflows.fit` defaults
except 40 epochs, learning rate 2e-3, patience 10; 4,000 training rows (10% of them for
early stopping), 4,000 test rows. For each fitted bounded flow, float32 samples (20,000,
for each of 4 contexts on ``posterior``) are checked: how many lie on the outermost
representable number inside a bound (where the inverse clamps; before the fix, about as many
landed *on* the bound with ``log_prob = -inf``), and how many score a non-finite
``log_prob``.

Usage::

    python benchmarks/support.py                  # ~3-5 min on 1 CPU core
    python benchmarks/support.py --seeds 0,1,2    # the mean over seeds, 3x as long

Writes ``benchmarks/results/support-cpu.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

import arflows
from arflows.flows import Unconditional
from arflows.transforms import SupportTransform, support_bounds

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

TRAIN, TEST, SAMPLES = 4000, 4000, 20000
FLOWS = {"MAF": arflows.MAF, "NSF": arflows.NSF}
MAPS = ("none", "logit", "knee")


# --------------------------------------------------------------------------- data


def two_moons(theta: Tensor, g: torch.Generator) -> Tensor:
    """The two-moons simulator: one observation per row of ``theta``."""
    n = theta.shape[0]
    a = (torch.rand(n, generator=g) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=g)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)
    shift = torch.stack(
        [-(theta[:, 0] + theta[:, 1]).abs(), theta[:, 1] - theta[:, 0]], -1
    ) / math.sqrt(2)
    return p + shift


def dataset(name: str, n: int, g: torch.Generator) -> tuple[Tensor, Tensor | None, list]:
    """Rows, contexts (or None) and the support of the rows."""
    if name == "posterior":
        theta = torch.rand(n, 2, generator=g) * 2 - 1
        return theta, two_moons(theta, g), [(-1.0, 1.0)] * 2
    if name == "edge":
        rows = []
        while sum(len(r) for r in rows) < n:  # rejection: the normal truncated to the box
            x1 = torch.rand(n, generator=g) * 6 - 3
            x2 = 2.5 * torch.sin(x1) + torch.randn(n, generator=g)
            ok = x2.abs() < 3
            rows.append(torch.stack([x1[ok], x2[ok]], -1))
        return torch.cat(rows)[:n], None, [(-3.0, 3.0)] * 2
    if name == "inside":
        t = torch.rand(n, generator=g) * math.pi
        upper = (torch.rand(n, generator=g) < 0.5)[:, None]
        moon = torch.where(
            upper,
            torch.stack([torch.cos(t), torch.sin(t)], -1),
            torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1),
        )
        x = (moon - torch.tensor([0.5, 0.25])) + 0.1 * torch.randn(n, 2, generator=g)
        return x, None, [(-3.0, 3.0)] * 2
    raise ValueError(name)


# --------------------------------------------------------------------------- runs


def build(flow_name: str, map_name: str, spec: list, context: int, sharpness: float):
    kwargs = dict(features=len(spec), context=context, transforms=3, hidden_features=(64, 64))
    if map_name != "none":
        kwargs["support"] = spec
    flow = FLOWS[flow_name](**kwargs)
    if map_name == "logit":
        lower, upper = support_bounds(spec, len(spec))
        flow.support = Unconditional(SupportTransform, lower, upper, torch.zeros_like(lower))
    elif map_name == "knee":
        lower, upper = support_bounds(spec, len(spec))
        knee = torch.full_like(lower, sharpness)
        flow.support = Unconditional(SupportTransform, lower, upper, knee)
    return flow


@torch.no_grad()
def sample_check(flow, spec: list, c: Tensor | None) -> dict:
    """Float32 samples at the outermost number inside a bound, and non-finite log_probs."""
    lower, upper = support_bounds(spec, len(spec), dtype=torch.float32)
    x = flow(c).sample((SAMPLES,))
    log_p = flow(c).log_prob(x)
    first, last = torch.nextafter(lower, upper), torch.nextafter(upper, lower)
    outermost = ((x <= first) | (x >= last)).any(-1)
    inside = ((x > lower) & (x < upper)).all(-1)
    return {
        "samples": x.shape[:-1].numel(),
        "outside or on a bound": int((~inside).sum()),
        "at the outermost float": int(outermost.sum()),
        "non-finite log_prob": int((~torch.isfinite(log_p)).sum()),
    }


def run(data: str, flow_name: str, map_name: str, seed: int, sharpness: float) -> dict:
    g = torch.Generator().manual_seed(100)  # the same rows for every flow, map and seed
    x, c, spec = dataset(data, TRAIN + TEST, g)
    x_train, x_test = x[:TRAIN], x[TRAIN:]
    c_train, c_test = (None, None) if c is None else (c[:TRAIN], c[TRAIN:])
    torch.manual_seed(seed)
    flow = build(flow_name, map_name, spec, 0 if c is None else c.shape[1], sharpness)
    started = time.time()
    history = arflows.fit(
        flow, x_train, c_train, epochs=40, lr=2e-3, patience=10, seed=seed, progress=False
    )
    seconds = time.time() - started
    with torch.no_grad():
        test = flow(c_test).log_prob(x_test).mean().item()
    result = {"test": test, "best_epoch": history.best_epoch, "seconds": seconds}
    if map_name != "none":
        result |= sample_check(flow, spec, None if c is None else c_test[:4])
    return result


# --------------------------------------------------------------------------- report


def table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--data", default="posterior,edge,inside")
    parser.add_argument("--flows", default="MAF,NSF")
    parser.add_argument("--sharpness", type=float, default=arflows.transforms.support.SHARPNESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()

    rows, raw = [], []
    for data in args.data.split(","):
        for flow_name in args.flows.split(","):
            row = {"data": data, "flow": flow_name}
            for map_name in MAPS:
                runs = [run(data, flow_name, map_name, s, args.sharpness) for s in seeds]
                raw.append({"data": data, "flow": flow_name, "map": map_name, "runs": runs})
                row[map_name] = sum(r["test"] for r in runs) / len(runs)
                if map_name != "none":
                    row[f"{map_name} at outermost"] = sum(
                        r["at the outermost float"] for r in runs
                    )
                    row[f"{map_name} bad"] = sum(
                        r["outside or on a bound"] + r["non-finite log_prob"] for r in runs
                    )
                    row["samples"] = sum(r["samples"] for r in runs)
                print(data, flow_name, map_name, [round(r["test"], 4) for r in runs], flush=True)
            row["knee - none"] = row["knee"] - row["none"]
            row["knee - logit"] = row["knee"] - row["logit"]
            rows.append(row)

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/support.py", *(argv or sys.argv[1:])]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": args.threads,
        "seeds": seeds,
        "sharpness": args.sharpness,
        "minutes": round((time.time() - started) / 60, 1),
    }
    shown = [
        {
            k: f"{v:+.3f}" if "-" in k else f"{v:.3f}" if isinstance(v, float) else v
            for k, v in r.items()
        }
        for r in rows
    ]
    columns = ["data", "flow", "none", "logit", "knee", "knee - none", "knee - logit"]
    samples = ["data", "flow", "samples", "logit at outermost", "knee at outermost"]
    samples += ["logit bad", "knee bad"]
    md = (
        f"# Bounded columns: `support=` maps (CPU, threads={args.threads})\n\n"
        f"`{meta['command']}` on {meta['date']}; torch {meta['torch']}, {meta['cpu']}; "
        f"seeds {seeds}, knee sharpness {args.sharpness:g}; {meta['minutes']} min.\n\n"
        "## Held-out log-likelihood in data space (nats per row, higher is better)\n\n"
        + table(shown, columns)
        + "\n## Float32 samples of the fitted bounded flows\n\n"
        "`at outermost`: samples on the last float inside a bound (where the inverse clamps);"
        " `bad`: samples outside or on a bound plus samples with a non-finite `log_prob` "
        "(must be 0).\n\n" + table(shown, samples)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "support-cpu.md").write_text(md)
    (out / "support-cpu.json").write_text(json.dumps({"meta": meta, "runs": raw}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
