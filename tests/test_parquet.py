"""ParquetStream: batches, the shuffle buffer, row-wise splits, bad files and bounded memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import arflows
from arflows.data import DataError, ParquetStream

pytest.importorskip("pyarrow")


def write(path, n=1000, row_group_size=128, **extra):
    frame = pd.DataFrame(
        {
            "i": np.arange(n, dtype=np.float64),  # the row number, to follow rows around
            "k": np.arange(n, dtype=np.int64) % 7,
            "t": np.linspace(-1, 1, n),
            "name": [f"r{j}" for j in range(n)],
            **extra,
        }
    )
    frame.to_parquet(path, row_group_size=row_group_size, index=False)
    return path


def ids(batches):
    return torch.cat([x[:, 0] for x, _ in batches]).long().tolist()


def test_columns_schema_and_plain_pass(tmp_path):
    stream = ParquetStream(write(tmp_path / "d.parquet"), context_columns=["t"])
    assert stream.columns == ["i", "k"] and stream.context_columns == ["t"]
    assert stream.integer_columns == [1] and stream.rows == 1000 == len(stream)
    batches = list(stream.batches(300))
    assert [len(x) for x, _ in batches] == [300, 300, 300, 100]
    assert ids(batches) == list(range(1000))  # the file's order
    x, c = batches[0]
    assert x.dtype == torch.get_default_dtype() and c.shape == (300, 1)
    assert torch.allclose(c[:, 0].double(), torch.linspace(-1, 1, 1000, dtype=torch.float64)[:300])
    assert next(iter(ParquetStream(stream.path, ["k"]).batches(5)))[1] is None


@pytest.mark.parametrize("buffer_rows", [1, 250, 5000])
def test_shuffled_pass_is_a_seeded_permutation(tmp_path, buffer_rows):
    path = write(tmp_path / "d.parquet")
    stream = ParquetStream(path, ["i"], chunk_rows=100, buffer_rows=buffer_rows)

    def order(seed):
        batches = list(
            stream.batches(64, shuffle=True, generator=torch.Generator().manual_seed(seed))
        )
        assert all(len(x) == 64 for x, _ in batches[:-1]) and len(batches) == -(-1000 // 64)
        return ids(batches)

    first = order(0)
    assert sorted(first) == list(range(1000))  # every row exactly once
    assert first == order(0) and first != order(1)
    assert first != list(range(1000))


def test_buffer_mixes_rows_across_row_groups(tmp_path):
    stream = ParquetStream(write(tmp_path / "d.parquet"), ["i"], chunk_rows=128, buffer_rows=1000)
    x, _ = next(stream.batches(200, shuffle=True, generator=torch.Generator().manual_seed(0)))
    groups = set((x[:, 0] // 128).long().tolist())
    assert len(groups) >= 6  # a batch draws on most of the 8 row groups


def test_split_is_row_wise_disjoint_complete_and_independent_of_reading(tmp_path):
    path = write(tmp_path / "d.parquet", n=5000, row_group_size=700)
    parts = ParquetStream(path, ["i"]).split([0.8, 0.1, 0.1], seed=4)
    seen = [sorted(ids(p.batches(333))) for p in parts]
    assert sorted(sum(seen, [])) == list(range(5000))
    assert [len(s) for s in seen] == [p.rows for p in parts]
    assert abs(parts[0].rows - 4000) < 150 and abs(parts[1].rows - 500) < 100
    # Other chunk and batch sizes, a shuffled pass: the same rows in each part.
    again = ParquetStream(path, ["i"], chunk_rows=77, buffer_rows=500).split([0.8, 0.1, 0.1], 4)
    generator = torch.Generator().manual_seed(9)
    assert [sorted(ids(p.batches(50, shuffle=True, generator=generator))) for p in again] == seen
    other = ParquetStream(path, ["i"]).split([0.8, 0.1, 0.1], seed=5)
    assert sorted(ids(other[1].batches(1000))) != seen[1]
    # A part splits further into parts of itself.
    a, b = parts[0].split([0.5, 0.5], seed=4)
    assert sorted(ids(a.batches(999)) + ids(b.batches(999))) == seen[0]
    with pytest.raises(ValueError, match="same seed"):
        parts[0].split([0.5, 0.5], seed=1)


@pytest.mark.parametrize(
    "fractions, match",
    [([0.5, 0.6], "sum to 1"), ([1.2, -0.2], r"in \[0, 1\]"), ([], "fractions")],
)
def test_bad_splits(tmp_path, fractions, match):
    with pytest.raises(ValueError, match=match):
        ParquetStream(write(tmp_path / "d.parquet")).split(fractions)


def test_bad_files_and_columns(tmp_path):
    path = write(tmp_path / "d.parquet")
    with pytest.raises(DataError, match="no such file"):
        ParquetStream(tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="directory"):
        ParquetStream(tmp_path)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="as Parquet"):
        ParquetStream(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match=r"unknown data column 'zz'; available columns: i, k"):
        ParquetStream(path, ["i", "zz"])
    with pytest.raises(DataError, match="'name' is not numeric"):
        ParquetStream(path, ["i", "name"])
    with pytest.raises(DataError, match="'i' is both a data column and a context column"):
        ParquetStream(path, ["i"], ["i"])
    with pytest.raises(TypeError, match="list of column names"):
        ParquetStream(path, "i")
    with pytest.raises(ValueError, match="chunk_rows"):
        ParquetStream(path, chunk_rows=0)
    with pytest.raises(ValueError, match="batch_size"):
        next(ParquetStream(path).batches(0))
    pd.DataFrame({"a": np.zeros(0)}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no rows"):
        ParquetStream(tmp_path / "empty.parquet")


def test_missing_values_are_reported_with_their_row(tmp_path):
    values = np.arange(300, dtype=np.float64)
    values[257] = np.nan
    path = write(tmp_path / "d.parquet", n=300, row_group_size=100, v=values)
    stream = ParquetStream(path, ["i", "v"], chunk_rows=50)
    with pytest.raises(DataError, match=r"column 'v' holds NaN \(a missing value\?\) at row 258"):
        list(stream.batches(64))
    with pytest.raises(DataError, match="row 258"):
        arflows.fit(arflows.MAF(2, transforms=1, hidden_features=(4,)), stream, progress=False)


MEMORY_SCRIPT = """
import json, resource, sys, torch
import arflows
from arflows.data import ParquetStream

torch.manual_seed(0)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)

def fit(path):
    stream = ParquetStream(path, chunk_rows=16384, buffer_rows=32768)
    flow = arflows.MAF(stream.features, transforms=1, hidden_features=(8,))
    arflows.fit(flow, stream, epochs=1, batch_size=8192, progress=False)

fit(sys.argv[1])  # warm up on a small file: imports, allocator, kernels
before = peak()
fit(sys.argv[2])
print(json.dumps({"before": before, "after": peak()}))
"""


def test_fitting_a_large_file_keeps_memory_bounded(tmp_path):
    # 3,000,000 rows of 4 float64 columns: 96 MB as one array, more through pandas.
    generator = np.random.default_rng(0)
    for name, n in (("small", 50_000), ("large", 3_000_000)):
        frame = pd.DataFrame(generator.standard_normal((n, 4)), columns=list("abcd"))
        frame.to_parquet(tmp_path / f"{name}.parquet", row_group_size=100_000, index=False)
        del frame
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(arflows.__file__))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            tmp_path / "small.parquet",
            tmp_path / "large.parquet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown = (rss["after"] - rss["before"]) / 2**20
    assert grown < 48, f"peak memory grew by {grown:.0f} MiB while streaming a 96 MB table"


def test_cli_fit_stream_trains_saves_and_reports_each_split(tmp_path, capsys):
    from arflows.cli import main

    g = np.random.default_rng(0)
    t = g.normal(size=3000)
    frame = pd.DataFrame(
        {"a": g.normal(size=3000) + t, "k": g.integers(0, 4, 3000), "t": t, "name": "row"}
    )
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=500, index=False)
    argv = ["fit", str(tmp_path / "d.parquet"), "--stream", "--context-columns", "t"]
    argv += ["--epochs", "2", "--hidden", "8", "--transforms", "1", "--no-progress"]
    assert main([*argv, "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "(streamed), 3000 rows, columns a, k, context t, dequantized 1 integer" in out
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert sum(report["rows"].values()) == 3000 and report["dequantized_columns"] == [1]
    assert all(np.isfinite(report["scores"][s]) for s in ("train", "valid", "test"))
    model = arflows.load(tmp_path / "m")
    assert model.columns == ["a", "k"] and model.context_columns == ["t"]
    # The saved model scores the file: a header and one score per row.
    assert main(["score", str(tmp_path / "m"), str(tmp_path / "d.parquet")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3001
    # --stream needs a Parquet file.
    frame.drop(columns="name").to_csv(tmp_path / "d.csv", index=False)
    assert main(["fit", str(tmp_path / "d.csv"), "--stream", "-o", str(tmp_path / "n")]) == 2
    assert "--stream reads a Parquet file" in capsys.readouterr().err
