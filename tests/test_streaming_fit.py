"""fit on rows that are not in memory: Datasets, DataLoaders, IterableDatasets, Parquet files."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import arflows
import arflows.train
from arflows.data import ParquetStream
from arflows.train import fit
from arflows.train.checkpoint import read_checkpoint
from tests.helpers import keep_checkpoint_copies

QUIET = dict(progress=False, seed=2, lr=3e-3)


def data(n=300):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.cat([c + torch.randn(n, 1, generator=g, dtype=torch.float64), 3 * c**2], 1)
    return x + 5, c


def new_flow(context=1):
    torch.manual_seed(0)
    return arflows.MAF(2, context=context, transforms=2, hidden_features=(16, 16)).double()


def weights(flow):
    return {k: v.clone() for k, v in flow.state_dict().items()}


def close(a, b, tol=1e-9):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=tol, rtol=0) for k in a)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_dataset_trains_as_the_same_rows_in_memory():
    x, c = data()
    ref = new_flow()
    ref_history = fit(ref, x, c, epochs=3, batch_size=64, **QUIET)
    flow = new_flow()
    history = fit(flow, TensorDataset(x, c), epochs=3, batch_size=64, **QUIET)
    # The same split, order and steps; only the standardisation sums differ (in float64).
    assert close(weights(flow), weights(ref))
    assert np.allclose(history.train, ref_history.train, rtol=0, atol=1e-9)
    assert np.allclose(history.valid, ref_history.valid, rtol=0, atol=1e-9)


class Rows(Dataset):
    """Items as numpy rows, x alone: the plainest Dataset a user writes."""

    def __init__(self, x):
        self.x = x.numpy()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_a_numpy_dataset_with_workers_and_a_dataset_for_validation():
    x, _ = data()
    flow = new_flow(context=0)
    before = flow().log_prob(x[250:]).mean().item()
    history = fit(flow, Rows(x[:250]), valid=Rows(x[250:]), epochs=4, workers=1, **QUIET)
    assert len(history.valid) == 4 and history.valid[-1] > before + 1
    assert history.valid[-1] == pytest.approx(flow().log_prob(x[250:]).mean().item(), abs=1e-9)


def test_a_dataloader_is_iterated_as_given():
    x, c = data()
    loader = DataLoader(TensorDataset(x[:250], c[:250]), batch_size=50, shuffle=True)
    flow = new_flow()
    before = flow(c[250:]).log_prob(x[250:]).mean().item()
    history = fit(flow, loader, valid=(x[250:], c[250:]), epochs=4, **QUIET)
    assert len(history.train) == 4 and history.valid[-1] > before + 1
    with pytest.raises(ValueError, match="cannot hold out a fraction.*DataLoader"):
        fit(new_flow(), loader, epochs=1, **QUIET)


class Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        yield from self.x


def test_an_iterable_dataset_has_no_length_so_no_cosine_schedule():
    x, _ = data()
    flow = new_flow(context=0)
    history = fit(flow, Stream(x), valid=None, schedule=None, epochs=2, batch_size=64, **QUIET)
    assert len(history.train) == 2 and np.isfinite(history.train).all()
    with pytest.raises(ValueError, match="cosine.*no length"):
        fit(new_flow(context=0), Stream(x), valid=None, epochs=2, **QUIET)


class Dicts(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.zeros(2)}


@pytest.mark.parametrize(
    "source, kwargs, error, match",
    [
        (Dicts(), {}, TypeError, "got a dict with keys"),
        (TensorDataset(torch.zeros(0, 2)), {}, ValueError, "at least 1 item"),
        (TensorDataset(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]] * 5)), {}, ValueError,
         "NaN or inf"),
        (TensorDataset(torch.zeros(10, 2, 2)), {}, ValueError, r"shape \(rows, columns\)"),
        (TensorDataset(torch.zeros(10, 2)), {"context": torch.zeros(10, 1)}, ValueError,
         "carries its own contexts"),
        (TensorDataset(torch.zeros(10, 2)), {"valid": TensorDataset(torch.zeros(3, 3))},
         ValueError, "validation rows with 2 data"),
        (TensorDataset(torch.zeros(10, 2)), {"workers": -1}, ValueError, "workers >= 0"),
        (DataLoader(TensorDataset(torch.zeros(0, 2))), {"valid": None}, ValueError,
         "at least one batch"),
        ("rows.csv", {}, TypeError, "parquet"),
        (TensorDataset(torch.zeros(10, 3)), {}, ValueError, "with 2 data columns.*got 3"),
        (TensorDataset(torch.zeros(10, 2), torch.zeros(10, 1)), {}, ValueError,
         "0 context columns.*`context`.*got 1"),
    ],
)  # fmt: skip
def test_bad_streamed_input_is_refused_clearly(source, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(arflows.MAF(2, transforms=1, hidden_features=(4,)), source, epochs=1, **kwargs)


def test_a_parquet_path_is_streamed_with_standardisation_and_dequantization(tmp_path):
    x, c = data(2000)
    frame = pd.DataFrame({"a": x[:, 0].numpy(), "b": x[:, 1].round().long().numpy()})
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=300)
    flow = new_flow(context=0)
    history = fit(flow, tmp_path / "d.parquet", dequantize=[1], epochs=3, batch_size=128, **QUIET)
    assert history.valid[-1] > history.valid[0]
    # The stored standardisation is that of the dequantized training rows (about 90%).
    loc = flow.standardization.loc
    expected = torch.stack([x[:, 0].mean(), x[:, 1].round().mean() + 0.5])
    assert torch.allclose(loc, expected, atol=0.1)
    # With context columns, through a stream object.
    frame["t"] = c[:, 0].numpy()
    frame.to_parquet(tmp_path / "c.parquet", row_group_size=300)
    stream = ParquetStream(tmp_path / "c.parquet", ["a", "b"], ["t"], dtype=torch.float32)
    cflow = new_flow()
    fit(cflow, stream, epochs=1, **QUIET)  # a float32 stream feeds a float64 flow
    assert cflow.context_standardization.loc.shape == (1,)


def test_resume_mid_epoch_of_a_parquet_stream_is_bit_identical(tmp_path, monkeypatch):
    x, c = data(1000)
    pd.DataFrame({"a": x[:, 0].numpy(), "b": x[:, 1].numpy(), "t": c[:, 0].numpy()}).to_parquet(
        tmp_path / "d.parquet", row_group_size=200
    )
    stream = ParquetStream(tmp_path / "d.parquet", context_columns=["t"], buffer_rows=300)
    options = dict(epochs=3, batch_size=100, dequantize=[1], **QUIET)
    ref = new_flow()
    ref_history = fit(ref, stream, **options)
    ckpt = tmp_path / "c.safetensors"
    copies = keep_checkpoint_copies(monkeypatch, tmp_path)
    fit(new_flow(), stream, checkpoint=ckpt, checkpoint_every=4, **options)
    monkeypatch.undo()
    mid = [p for p in copies if read_checkpoint(p)["step"] != 0]
    assert len(mid) >= 2
    flow = new_flow()
    history = fit(flow, stream, checkpoint=mid[len(mid) // 2], resume=True, **options)
    assert same(weights(flow), weights(ref))
    assert history.train == ref_history.train and history.valid == ref_history.valid


def test_resume_refuses_foreign_checkpoints_with_a_clear_error(tmp_path):
    from arflows.train.checkpoint import write_checkpoint

    x, c = data()
    ckpt = tmp_path / "c.safetensors"
    write_checkpoint(ckpt, {"step": 1})
    with pytest.raises(ValueError, match="not a checkpoint of arflows.fit.*best"):
        fit(new_flow(), x, c, checkpoint=ckpt, resume=True, epochs=1, **QUIET)
    fit(new_flow(), x, c, checkpoint=ckpt, epochs=1, **QUIET)  # overwritten by a real one
    torch.manual_seed(0)
    wider = arflows.MAF(2, context=1, transforms=2, hidden_features=(32, 32)).double()
    with pytest.raises(ValueError, match="does not fit this flow.*RuntimeError"):
        fit(wider, x, c, checkpoint=ckpt, resume=True, epochs=1, **QUIET)


def test_standardisation_of_huge_float32_values_does_not_overflow():
    # The float32 mean of the first column overflows (its sum is 8.7e38).
    x = torch.tensor([[3e38, 1.0], [2.9e38, 2.0], [2.8e38, 3.0]], dtype=torch.float32)
    flow = arflows.MAF(2, transforms=1, hidden_features=(4,))
    flow.standardize_(x)
    loc = flow.standardization.loc
    assert loc.dtype == torch.float32 and torch.allclose(loc, torch.tensor([2.9e38, 2.0]))
    assert torch.isfinite(flow().log_prob(x)).all()
