r"""Variational inference quality: arflows IAF against Pyro's AutoIAFNormal (and AutoNormal).

Part 1, built-in targets (``arflows.targets``, exact log Z and exact samples): each method fits
the same target with the same budget (steps, samples per step, Adam learning rate decayed
100-fold, gradient norm clipped to 1), then is judged on 20,000 of its own samples (ELBO,
importance-sampled log Z, effective sample size) and on 5,000 exact samples of the target
(forward KL, which sees dropped modes and clipped tails that the first three hide).

Part 2, Bayesian models fitted with Pyro's SVI: eight schools (centred, a funnel) and a
logistic regression (breast-cancer data, standardised, 31 weights). ``AutoFlow`` (an arflows
IAF), ``AutoIAFNormal`` and ``AutoNormal`` get the same steps, particles and optimizer; each
is judged by its ELBO and log-evidence estimate over 2,000 guide samples.

Usage::

    python benchmarks/vi.py [--quick] [--out benchmarks/results]

writes ``vi-cpu.md`` and ``vi-cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import arflows
from arflows.targets import Banana, CorrelatedGaussian, Funnel, GaussianRing
from arflows.vi import fit_vi, forward_kl, importance_sample

LR = 3e-3
SAMPLES = 64
HIDDEN = (64, 64)
TRANSFORMS = 3
N_EVAL, N_EXACT = 20_000, 5_000


def targets(quick):
    out = {
        "banana (D=2)": Banana(),
        "funnel (D=10)": Funnel(10),
        "ring of 8 (D=2)": GaussianRing(),
        "gaussian (D=10)": CorrelatedGaussian(10),
    }
    if not quick:
        out["gaussian (D=50)"] = CorrelatedGaussian(50)
    return out


# ----------------------------------------------------------------------------- arflows


def run_arflows(target, steps, stl):
    flow = arflows.IAF(target.features, transforms=TRANSFORMS, hidden_features=HIDDEN, skip=True)
    start = time.perf_counter()
    fit_vi(
        flow,
        target.log_prob,
        steps=steps,
        samples_per_step=SAMPLES,
        lr=LR,
        stl=stl,
        seed=0,
        progress=False,
    )
    seconds = time.perf_counter() - start
    r = importance_sample(flow, target.log_prob, N_EVAL)
    x = target.sample(N_EXACT, generator=torch.Generator().manual_seed(1))
    fkl = forward_kl(flow, x, target.log_prob, target.log_normalizer)
    return dict(elbo=r.elbo, log_z=r.log_evidence, ess=r.ess, forward_kl=fkl, seconds=seconds)


# ----------------------------------------------------------------------------- pyro


def pyro_optimizer(steps):
    import pyro.optim

    # Same schedule and clipping as fit_vi: 100-fold decay, gradient norm clipped to 1.
    return pyro.optim.ClippedAdam({"lr": LR, "clip_norm": 1.0, "lrd": 0.01 ** (1 / steps)})


def run_pyro_target(target, steps):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoIAFNormal

    def model():
        flat = dist.Normal(torch.zeros(target.features), 1.0).to_event(1).mask(False)
        x = pyro.sample("x", flat)  # log-density 0: the factor is the whole target
        pyro.factor("target", target.log_prob(x))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoIAFNormal(model, hidden_dim=list(HIDDEN), num_transforms=TRANSFORMS)
    elbo = Trace_ELBO(num_particles=SAMPLES, vectorize_particles=True)
    svi = SVI(model, guide, pyro_optimizer(steps), elbo)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        q = guide.get_posterior()
        x = q.sample((N_EVAL,))
        log_w = target.log_prob(x) - q.log_prob(x)
        r = arflows.vi.ImportanceSample(log_w, x)
        exact = target.sample(N_EXACT, generator=torch.Generator().manual_seed(1))
        fkl = (target.normalized_log_prob(exact) - q.log_prob(exact)).mean().item()
    return dict(elbo=r.elbo, log_z=r.log_evidence, ess=r.ess, forward_kl=fkl, seconds=seconds)


# ----------------------------------------------------------------------------- models


def eight_schools():
    import pyro
    import pyro.distributions as dist

    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    return model


def logistic_regression():
    import pyro
    import pyro.distributions as dist
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target, dtype=torch.float32)

    def model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)

    return model


def guide_log_weights(model, guide, n):
    import pyro.poutine as poutine

    log_w = []
    with torch.no_grad():
        for _ in range(n):
            g = poutine.trace(guide).get_trace()
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace()
            log_w.append(m.log_prob_sum() - g.log_prob_sum())
    return torch.stack(log_w)


def run_model(name, model, kind, steps, particles):
    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoIAFNormal, AutoNormal

    from arflows.pyro import AutoFlow

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if kind == "arflows AutoFlow (IAF)":
        guide = AutoFlow(model, "iaf", transforms=TRANSFORMS, hidden_features=HIDDEN, skip=True)
    elif kind == "pyro AutoIAFNormal":
        guide = AutoIAFNormal(model, hidden_dim=list(HIDDEN), num_transforms=TRANSFORMS)
    else:
        guide = AutoNormal(model)
    svi = SVI(model, guide, pyro_optimizer(steps), Trace_ELBO(num_particles=particles))
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    seconds = time.perf_counter() - start
    r = arflows.vi.ImportanceSample(guide_log_weights(model, guide, 2000), torch.empty(0))
    return dict(
        elbo=r.elbo, elbo_se=r.elbo_stderr, log_z=r.log_evidence, ess=r.ess, seconds=seconds
    )


# ----------------------------------------------------------------------------- main


def table(rows, columns):
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows)


def fmt(x, digits=3):
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, no D=50 target")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=1)  # tiny ops: threads only contend
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 300 if args.quick else 3000
    model_steps = 300 if args.quick else 2000
    started = time.time()

    rows = []
    for name, target in targets(args.quick).items():
        runs = {
            "arflows IAF": (run_arflows, dict(stl=False)),
            "arflows IAF (STL)": (run_arflows, dict(stl=True)),
            "pyro AutoIAFNormal": (run_pyro_target, {}),
        }
        for method, (run, options) in runs.items():
            r = run(target, steps, **options)
            row = {
                "target": name,
                "method": method,
                "log Z (exact)": fmt(target.log_normalizer),
                "ELBO": fmt(r["elbo"]),
                "log Z est.": fmt(r["log_z"]),
                "ESS / n": fmt(r["ess"] / N_EVAL),
                "reverse KL": fmt(target.log_normalizer - r["elbo"]),
                "forward KL": fmt(r["forward_kl"]),
                "fit s": f"{r['seconds']:.1f}",
                "raw": r,
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k != "raw"}, flush=True)

    model_rows = []
    models = {
        "eight schools (centred)": eight_schools(),
        "logistic regression": logistic_regression(),
    }
    for name, model in models.items():
        for kind in ("arflows AutoFlow (IAF)", "pyro AutoIAFNormal", "pyro AutoNormal"):
            r = run_model(name, model, kind, model_steps, particles=8)
            row = {
                "model": name,
                "guide": kind,
                "ELBO": f"{r['elbo']:.2f} ± {r['elbo_se']:.2f}",
                "log Z est.": f"{r['log_z']:.2f}",
                "ESS / n": fmt(r["ess"] / 2000),
                "fit s": f"{r['seconds']:.1f}",
                "raw": r,
            }
            model_rows.append(row)
            print({k: v for k, v in row.items() if k != "raw"}, flush=True)

    import pyro

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/vi.py", *(argv or sys.argv[1:])]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": args.threads,
        "steps": steps,
        "model_steps": model_steps,
        "samples_per_step": SAMPLES,
        "lr": LR,
        "transforms": TRANSFORMS,
        "hidden_features": HIDDEN,
        "minutes": round((time.time() - started) / 60, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_cols = [
        "target",
        "method",
        "log Z (exact)",
        "ELBO",
        "log Z est.",
        "ESS / n",
        "reverse KL",
        "forward KL",
        "fit s",
    ]
    m_cols = ["model", "guide", "ELBO", "log Z est.", "ESS / n", "fit s"]
    md = (
        f"# VI benchmark (CPU, threads={args.threads}{', quick' if args.quick else ''})\n\n"
        f"`{meta['command']}` on {meta['date']}; torch {meta['torch']}, pyro {meta['pyro']}.\n\n"
        f"## Targets: {steps} steps x {SAMPLES} samples, {TRANSFORMS} layers of {HIDDEN}\n\n"
        + table(rows, t_cols)
        + f"\n## Bayesian models (Pyro SVI): {model_steps} steps x 8 particles\n\n"
        + table(model_rows, m_cols)
    )
    (out / "vi-cpu.md").write_text(md)
    strip = lambda rs: [{k: v for k, v in r.items()} for r in rs]  # noqa: E731
    (out / "vi-cpu.json").write_text(
        json.dumps({"meta": meta, "targets": strip(rows), "models": strip(model_rows)}, indent=1)
    )
    print(md)


if __name__ == "__main__":
    main()
