r"""Density quality on dequantized digits: arflows MAF and NSF against zuko, nflows, a Gaussian.

The data are scikit-learn's 8 x 8 digits (64 integer pixels in 0..16), split once into
1257/180/360 train/valid/test images (:func:`arflows.data.digits_splits`). Each image
:math:`x` is dequantized, :math:`y = x + u` with :math:`u \sim U[0, 1)^{64}` (fresh noise
every training epoch, one fixed draw for valid and test), and every model sees

.. math:: z = (\operatorname{logit}(p) - m) / s, \qquad
          p = \alpha + (1 - 2\alpha)\, y / 17, \quad \alpha = 0.05,

with :math:`m, s` the per-pixel mean and standard deviation of the logits of the training
images (one fixed noise draw). The reported log-likelihood is that of the **dequantized pixels
y in their original scale** :math:`[0, 17)^{64}`, in nats per image:

.. math:: \log p(y) = \log p_{\text{model}}(z) + \sum_i \Bigl[
          \log \frac{1 - 2\alpha}{17} - \log p_i - \log(1 - p_i) - \log s_i \Bigr].

Every flow (5 layers; MADEs with 2 hidden layers of 256 units; splines with 8 bins on
:math:`[-5, 5]`; standard normal base; by default a random feature order per layer in every
library, ``--orders alternating`` for natural/reversed) is trained by the same loop: Adam,
the same learning rate, batch size, epoch budget, data order and noise, early stopping on the
valid log-likelihood (the best epoch's weights are restored), once per training seed; the
table reports the mean over seeds. The Gaussian baseline is the full-covariance
maximum-likelihood Gaussian of the training logits (10 noise draws).

Usage::

    python benchmarks/quality.py            # the full run, 3 seeds (~6-10 min on 1 CPU core)
    python benchmarks/quality.py --quick    # 3 epochs, one seed: a smoke test

Writes ``benchmarks/results/quality-cpu.{md,json}`` (``quality-cpu-quick.*`` with
``--quick``). Peers whose import fails are skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

ALPHA = 0.05
LEVELS = 17  # pixel values 0..16, dequantized into [0, 17)
TRANSFORMS = 5
HIDDEN = (256, 256)
BINS = 8
MODELS = ("gaussian", "arflows-maf", "zuko-maf", "nflows-maf", "arflows-nsf", "zuko-nsf")


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """Integer pixels of the three splits and the fixed logit standardisation."""

    train: Tensor
    valid: Tensor
    test: Tensor
    loc: Tensor = field(init=False)
    scale: Tensor = field(init=False)

    def __post_init__(self):
        logits, _ = self.logits(dequantize(self.train, torch.Generator().manual_seed(1)))
        self.loc, self.scale = logits.mean(0), logits.std(0)

    @staticmethod
    def logits(y: Tensor) -> tuple[Tensor, Tensor]:
        """The logits of the scaled pixels and log|d logit / d y| summed per image."""
        p = ALPHA + (1 - 2 * ALPHA) * y / LEVELS
        ladj = (math.log((1 - 2 * ALPHA) / LEVELS) - p.log() - (-p).log1p()).sum(-1)
        return p.log() - (-p).log1p(), ladj

    def model_space(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` that the models see and log|dz/dy| per image, for dequantized pixels y."""
        logits, ladj = self.logits(y)
        return (logits - self.loc) / self.scale, ladj - self.scale.log().sum()


def dequantize(x: Tensor, generator: torch.Generator) -> Tensor:
    return x + torch.rand(x.shape, generator=generator, dtype=x.dtype)


# --------------------------------------------------------------------------- models


class Model(nn.Module):
    """A flow with ``log_prob(z)`` for a batch ``z`` of shape (N, 64)."""

    def __init__(self, flow: nn.Module, call: bool):
        super().__init__()
        self.flow, self.call = flow, call

    def log_prob(self, z: Tensor) -> Tensor:
        return self.flow().log_prob(z) if self.call else self.flow.log_prob(z)


def build_arflows_maf(features: int, options: dict) -> Model:
    import arflows

    flow = arflows.MAF(
        features, transforms=TRANSFORMS, hidden_features=HIDDEN, randperm=options["randperm"]
    )
    return Model(flow, call=True)


def build_arflows_nsf(features: int, options: dict) -> Model:
    import arflows

    flow = arflows.NSF(
        features,
        transforms=TRANSFORMS,
        hidden_features=HIDDEN,
        bins=BINS,
        randperm=options["randperm"],
    )
    return Model(flow, call=True)


def build_zuko_maf(features: int, options: dict) -> Model:
    import zuko

    flow = zuko.flows.MAF(
        features, 0, transforms=TRANSFORMS, hidden_features=HIDDEN, randperm=options["randperm"]
    )
    return Model(flow, call=True)


def build_zuko_nsf(features: int, options: dict) -> Model:
    import zuko

    flow = zuko.flows.NSF(
        features,
        0,
        bins=BINS,
        transforms=TRANSFORMS,
        hidden_features=HIDDEN,
        randperm=options["randperm"],
    )
    return Model(flow, call=True)


def build_nflows_maf(features: int, options: dict) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import RandomPermutation, ReversePermutation

    layers = []
    for i in range(TRANSFORMS):
        if options["randperm"]:
            layers.append(RandomPermutation(features))  # a random order for every layer
        elif i > 0:
            layers.append(ReversePermutation(features))
        # num_blocks=1 without residual blocks is D -> 256 -> 256 -> 2D, the others' network.
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features, HIDDEN[0], num_blocks=1, use_residual_blocks=False
            )
        )
    return Model(Flow(CompositeTransform(layers), StandardNormal([features])), call=False)


BUILDERS: dict[str, Callable[[int, dict], Model]] = {
    "arflows-maf": build_arflows_maf,
    "zuko-maf": build_zuko_maf,
    "nflows-maf": build_nflows_maf,
    "arflows-nsf": build_arflows_nsf,
    "zuko-nsf": build_zuko_nsf,
}


# --------------------------------------------------------------------------- training


@dataclass
class Result:
    """One model trained from one seed."""

    name: str
    seed: int
    test: float  # average log p(y), nats per image
    test_se: float  # its standard error over the test images
    valid: float
    train: float = float("nan")
    best_epoch: int = 0
    epochs: int = 0
    seconds: float = 0.0
    parameters: int = 0
    valid_curve: list[float] = field(default_factory=list)


@torch.no_grad()
def log_likelihood(model: Model, z: Tensor, ladj: Tensor, batch: int = 1024) -> Tensor:
    """Per-image log p(y), in nats."""
    model.eval()
    return torch.cat([model.log_prob(part) for part in z.split(batch)]) + ladj


def evaluation_sets(data: Data) -> dict[str, tuple[Tensor, Tensor]]:
    """The three splits with one fixed noise draw each, the same for every model and seed."""
    sets = {}
    for k, name in enumerate(("train", "valid", "test")):
        gen = torch.Generator().manual_seed(100 + k)
        sets[name] = data.model_space(dequantize(getattr(data, name), gen))
    return sets


def _mean_se(values: Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def train(name: str, model: Model, data: Data, args: argparse.Namespace, seed: int) -> Result:
    """The one training loop of every flow: Adam, early stopping on valid, best restored."""
    sets = evaluation_sets(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)  # the same batches and noise for every model
    noise = torch.Generator().manual_seed(seed + 1)
    best, best_state, best_epoch, curve = -math.inf, None, 0, []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        z, _ = data.model_space(dequantize(data.train, noise))
        for idx in torch.randperm(len(z), generator=order).split(args.batch_size):
            loss = -model.log_prob(z[idx]).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite loss at epoch {epoch}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        valid = log_likelihood(model, *sets["valid"]).mean().item()
        curve.append(round(valid, 3))
        if valid > best:
            best, best_epoch = valid, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= args.patience:
            break
        if args.verbose:
            print(f"  {name} epoch {epoch}: valid {valid:.2f} (best {best:.2f} @ {best_epoch})")
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    test, test_se = _mean_se(log_likelihood(model, *sets["test"]))
    return Result(
        name=name,
        seed=seed,
        test=test,
        test_se=test_se,
        valid=best,
        train=log_likelihood(model, *sets["train"]).mean().item(),
        best_epoch=best_epoch,
        epochs=len(curve),
        seconds=seconds,
        parameters=sum(p.numel() for p in model.parameters()),
        valid_curve=curve,
    )


def gaussian(data: Data) -> Result:
    """The maximum-likelihood full-covariance Gaussian of the training logits (no training)."""
    start = time.perf_counter()
    noise = torch.Generator().manual_seed(1)
    z = torch.cat([data.model_space(dequantize(data.train, noise))[0] for _ in range(10)])
    z = z.double()
    dist = torch.distributions.MultivariateNormal(z.mean(0), torch.cov(z.T, correction=0))
    scores = {
        name: dist.log_prob(zs.double()) + ladj.double()
        for name, (zs, ladj) in evaluation_sets(data).items()
    }
    test, test_se = _mean_se(scores["test"])
    features = z.shape[1]
    return Result(
        name="gaussian",
        seed=0,
        test=test,
        test_se=test_se,
        valid=scores["valid"].mean().item(),
        train=scores["train"].mean().item(),
        seconds=time.perf_counter() - start,
        parameters=features + features * (features + 1) // 2,
    )


# --------------------------------------------------------------------------- report


@dataclass
class Summary:
    """One model over all seeds."""

    name: str
    test: float  # mean over seeds
    test_sd: float  # standard deviation over seeds
    test_se: float  # mean standard error over the test images
    valid: float
    train: float
    best_epoch: float
    seconds: float  # per seed
    parameters: int
    tests: list[float]


def summarize(runs: list[Result]) -> Summary:
    tests = torch.tensor([r.test for r in runs], dtype=torch.float64)
    mean = lambda key: sum(getattr(r, key) for r in runs) / len(runs)  # noqa: E731
    return Summary(
        name=runs[0].name,
        test=tests.mean().item(),
        test_sd=tests.std().item() if len(runs) > 1 else 0.0,
        test_se=mean("test_se"),
        valid=mean("valid"),
        train=mean("train"),
        best_epoch=mean("best_epoch"),
        seconds=mean("seconds"),
        parameters=runs[0].parameters,
        tests=[round(t, 2) for t in tests.tolist()],
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("arflows", "zuko", "nflows", "scikit-learn"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def markdown(rows: list[Summary], setup: dict, notes: list[str], checks: list[str]) -> str:
    seeds = ", ".join(map(str, setup["seeds"]))
    lines = [
        "# Density quality on dequantized digits",
        "",
        f"Command: `{setup['command']}`",
        "",
        f"{setup['date']}, {setup['machine']}, {setup['threads']} thread(s); "
        + ", ".join(f"{k} {v}" for k, v in setup["versions"].items()),
        "",
        "Test average log-likelihood of the **dequantized pixels in their original scale** "
        "(y = x + u in [0, 17)^64), in nats per image (higher is better): the mean over "
        f"training seeds {seeds} (initialisation, random orders, batch order and training "
        "noise), the standard deviation over seeds, and the standard error over the "
        f"{setup['split'][2]} test images. Split {'/'.join(map(str, setup['split']))} "
        f"(train/valid/test, fixed); uniform dequantization (fresh noise per epoch for "
        f"training, one fixed draw for valid/test); logit with alpha = {setup['alpha']}, then "
        f"standardisation. {setup['transforms']} layers, MADEs "
        f"64-{'-'.join(map(str, setup['hidden']))}-out (ReLU), splines of {setup['bins']} "
        f"bins on [-5, 5], standard normal base, "
        + ("random feature orders" if setup["randperm"] else "alternating feature orders")
        + f"; all trained by one loop: Adam lr {setup['lr']}, batch {setup['batch_size']}, at "
        f"most {setup['epochs']} epochs, early stopping after {setup['patience']} epochs "
        "without a better valid score, best weights restored. The Gaussian is the closed-form "
        "maximum-likelihood full-covariance Gaussian of the training logits (no seeds).",
        "",
        "| model | test log-lik (mean) | sd over seeds | s.e. (test) | per seed | valid (best) "
        "| train | best epoch | seconds per seed | parameters |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.test:.2f} | {r.test_sd:.2f} | {r.test_se:.2f} "
            f"| {', '.join(f'{t:.2f}' for t in r.tests)} | {r.valid:.2f} | {r.train:.2f} "
            f"| {r.best_epoch:.0f} | {r.seconds:.0f} | {r.parameters:,} |"
        )
    lines += ["", *[f"- {c}" for c in checks], *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def acceptance(rows: list[Summary]) -> list[str]:
    """Our MAF against the best peer MAF, our NSF against zuko's NSF (means over seeds)."""
    by = {r.name: r.test for r in rows}
    checks = []
    peers = {k: v for k, v in by.items() if k in ("zuko-maf", "nflows-maf")}
    if "arflows-maf" in by and peers:
        best = max(peers, key=peers.get)
        ok = by["arflows-maf"] >= peers[best]
        checks.append(
            f"arflows MAF {by['arflows-maf']:.2f} vs the best peer MAF ({best}) "
            f"{peers[best]:.2f}: " + ("at least as good" if ok else "WORSE")
        )
    if "arflows-nsf" in by and "zuko-nsf" in by:
        ok = by["arflows-nsf"] >= by["zuko-nsf"]
        checks.append(
            f"arflows NSF {by['arflows-nsf']:.2f} vs zuko NSF {by['zuko-nsf']:.2f}: "
            + ("at least as good" if ok else "WORSE")
        )
    return checks


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 epochs, one seed (a smoke test)")
    p.add_argument("--epochs", type=int, default=200, help="epoch budget per model (200)")
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience (20)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument(
        "--orders",
        choices=("random", "alternating"),
        default="random",
        help="feature orders of the layers, for every library (random)",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    p.add_argument("--verbose", action="store_true", help="print every epoch")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.patience, args.seeds = 3, 3, args.seeds[:1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from arflows.data import DIGITS_SPLIT, digits_splits

    torch.set_num_threads(args.threads)
    data = Data(*digits_splits(seed=0))
    options = {"randperm": args.orders == "random"}
    rows, runs, notes = [], [], []
    for name in args.models:
        if name == "gaussian":
            model_runs = [gaussian(data)]
        else:
            model_runs = []
            for seed in args.seeds:
                torch.manual_seed(seed)  # the same initialisation stream for every model
                try:
                    model = BUILDERS[name](data.train.shape[1], options)
                except ImportError as error:
                    notes.append(f"{name} skipped: {error}")
                    print(notes[-1], flush=True)
                    break
                model_runs.append(train(name, model, data, args, seed))
                r = model_runs[-1]
                print(
                    f"{r.name:12s} seed {seed}: test {r.test:8.2f}  valid {r.valid:8.2f}  "
                    f"best epoch {r.best_epoch:3d}/{r.epochs:3d}  {r.seconds:5.0f} s",
                    flush=True,
                )
        if model_runs:
            runs += model_runs
            rows.append(summarize(model_runs))
            s = rows[-1]
            print(f"{s.name:12s} mean test {s.test:8.2f} (sd {s.test_sd:.2f})", flush=True)
    checks = acceptance(rows)
    command = sys.argv[1:] if argv is None else argv
    setup = {
        "command": " ".join(["python benchmarks/quality.py", *command]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'})",
        "threads": args.threads,
        "versions": versions(),
        "split": list(DIGITS_SPLIT),
        "alpha": ALPHA,
        "transforms": TRANSFORMS,
        "hidden": list(HIDDEN),
        "bins": BINS,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "patience": args.patience,
        "randperm": options["randperm"],
        "seeds": args.seeds,
        "space": "log-likelihood of y = x + u in [0, 17)^64 (dequantized pixels, original "
        "scale), nats per image",
    }
    stem = "quality-cpu" + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "setup": setup,
        "summary": [asdict(r) for r in rows],
        "checks": checks,
        "notes": notes,
        "runs": [asdict(r) for r in runs],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rows, setup, notes, checks))
    print("\n".join(checks))
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
