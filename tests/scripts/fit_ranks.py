"""Fits a small flow in every process of a torchrun launch; each rank writes its result.

Usage: ``torchrun --nproc_per_node N tests/scripts/fit_ranks.py OUT SOURCE...`` (or plain
``python`` for one process), each SOURCE one of ``tensor``, ``dataset``, ``loader``,
``parquet`` (the file ``OUT/data.parquet``), ``actnorm`` (tensors, a flow with ActNorm
layers), ``uneven`` (DataLoaders of different lengths
per process) or ``mismatch`` (each process given other rows). Writes
``OUT/SOURCE-rank{r}.safetensors`` (the weights) and ``OUT/SOURCE-rank{r}.json`` (the
history and the world size, or the error).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import arflows
from arflows.data import ParquetStream
from arflows.train import init_from_env, shutdown


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    c = torch.randn(203, 1, generator=g, dtype=torch.float64)
    x = torch.randn(203, 2, generator=g, dtype=torch.float64) * 2 + c
    return x, c


def fit(world, out: Path, source: str) -> arflows.History:
    torch.manual_seed(0)
    # ActNorm initialises from the first batch: the whole one, in every process.
    actnorm = source == "actnorm"
    flow = arflows.MAF(2, context=1, transforms=2, hidden_features=(16, 16), actnorm=actnorm)
    flow = flow.double()
    x, c = data()
    # 203 rows in batches of 50: the last global batch has 3 rows, split 2 + 1.
    options = dict(epochs=4, batch_size=50, valid=0.2, lr=3e-3, progress=False, seed=3)
    if source in ("tensor", "actnorm"):
        history = arflows.fit(flow, x, c, **options)
    elif source == "dataset":
        history = arflows.fit(flow, TensorDataset(x, c), **options)
    elif source in ("loader", "uneven"):
        dataset, sampler = TensorDataset(x, c), None
        if source == "uneven":  # rank r holds 100 - 30 r rows: fewer batches on rank 1
            dataset = TensorDataset(x[: 100 - 30 * world.rank], c[: 100 - 30 * world.rank])
        elif world.active:
            sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=50 // world.size, sampler=sampler)
        history = arflows.fit(flow, loader, **options | {"valid": (x[:40], c[:40])})
    elif source == "parquet":
        stream = ParquetStream(out / "data.parquet", ["a", "b"], ["t"], chunk_rows=64)
        history = arflows.fit(flow, stream, **options)
    elif source == "mismatch":
        history = arflows.fit(flow, x[world.rank :], c[world.rank :], **options)
    else:
        raise SystemExit(f"unknown source {source!r}")
    return flow, history


def main(out: Path, sources: list[str]) -> None:
    world, _ = init_from_env("cpu")
    for source in sources:
        name = f"{source}-rank{world.rank}"
        try:
            flow, history = fit(world, out, source)
        except ValueError as error:
            (out / f"{name}.json").write_text(json.dumps({"error": str(error)}))
            continue
        state = {k: v.contiguous() for k, v in flow.state_dict().items()}
        save_file(state, out / f"{name}.safetensors")
        record = {"train": history.train, "valid": history.valid, "size": world.size}
        (out / f"{name}.json").write_text(json.dumps(record))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
