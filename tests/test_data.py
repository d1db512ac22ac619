import math
import sys

import numpy as np
import pytest
import torch

from arflows.data import (
    DATASETS,
    DataError,
    checkerboard,
    digits,
    digits_splits,
    eight_gaussians,
    figure1,
    figure1_log_prob,
    load_dataset,
    moons,
    pinwheel,
    read_table,
    rings,
    spirals,
    write_table,
)


def test_figure1_moments():
    x = figure1(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1, x2 = x.unbind(-1)
    assert abs(x2.mean()) < 0.02 and abs(x2.var() - 4) < 0.05
    assert abs((x1 - x2.square() / 4).mean()) < 0.01  # E[x1 | x2] = x2^2 / 4
    assert abs((x1 - x2.square() / 4).var() - 1) < 0.02


def test_figure1_log_prob_integrates_to_one_and_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = torch.linspace(-8, 30, 1201, dtype=torch.float64)
    b = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    grid = torch.cartesian_prod(a, b)
    density = figure1_log_prob(grid).exp().view(len(a), len(b))
    mass = torch.trapezoid(torch.trapezoid(density, b), a)
    assert abs(mass.item() - 1) < 1e-4
    x = torch.tensor([[0.3, -1.2], [4.0, 2.5]], dtype=torch.float64)
    expected = stats.norm.logpdf(x[:, 1], 0, 2) + stats.norm.logpdf(x[:, 0], x[:, 1] ** 2 / 4, 1)
    assert torch.allclose(figure1_log_prob(x), torch.as_tensor(expected), atol=1e-12)
    assert math.isfinite(figure1_log_prob(torch.zeros(2)).item())


def test_figure1_errors():
    with pytest.raises(ValueError, match="n >= 1"):
        figure1(0)
    with pytest.raises(ValueError, match=r"shape \(\*, 2\)"):
        figure1_log_prob(torch.zeros(4, 3))


# --- toys, digits, load_dataset ----------------------------------------------------------


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_toys_shape_range_dtype_and_seeding(name):
    f = DATASETS[name]
    x = f(5000, generator=_gen())
    assert x.shape == (5000, 2) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, f(5000, generator=_gen()))
    assert not torch.equal(x, f(5000, generator=_gen(1)))
    assert f(10, generator=_gen(), dtype=torch.float64).dtype == torch.float64
    if name != "figure1":  # the FFJORD scales: within about [-4, 4]^2, spread out
        assert x.abs().max() < 4.6 and 1.0 < x.std(0).min() < 2.5
    with pytest.raises(ValueError, match="n >= 1"):
        f(0)


def test_toys_have_their_shapes():
    n = 20_000
    # checkerboard: every point on a black square of the 2-wide grid
    x = checkerboard(n, generator=_gen())
    colour = (torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)).remainder(2)
    assert colour.unique().tolist() == [0.0]  # one colour only
    # rings: radii near 0.75, 1.5, 2.25, 3, a quarter each
    r = rings(n, generator=_gen()).norm(dim=-1)
    nearest = (r[:, None] - torch.tensor([0.75, 1.5, 2.25, 3.0])).abs().min(-1)
    assert nearest.values.median() < 0.1
    assert torch.allclose(nearest.indices.bincount() / n, torch.full((4,), 0.25), atol=0.02)
    # 8 Gaussians: eight clusters of std 0.5 / sqrt(2) around radius 2 sqrt(2)
    x = eight_gaussians(n, generator=_gen())
    angle = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(angle / (math.pi / 4)).remainder(8)
    phi = k * math.pi / 4
    centres = 2 * math.sqrt(2) * torch.stack((phi.cos(), phi.sin()), -1)
    assert abs((x - centres).std() - 0.5 / math.sqrt(2)) < 0.02
    # moons: back in unit coordinates, each point is near one of the two unit circles
    u = (moons(n, generator=_gen()) + torch.tensor([1.0, 0.2])) / 2
    d_upper = (u.norm(dim=-1) - 1).abs()
    d_lower = ((u - torch.tensor([1.0, 0.5])).norm(dim=-1) - 1).abs()
    assert torch.minimum(d_upper, d_lower).median() < 0.1
    # spirals and pinwheel: symmetric around the origin, with a hole-free spread
    assert spirals(n, generator=_gen()).mean(0).abs().max() < 0.05
    p = pinwheel(n, generator=_gen())
    assert abs(p.norm(dim=-1).median() - 2.0) < 0.15


def test_load_dataset():
    table = load_dataset("rings")
    assert table.x.shape == (10_000, 2) and table.c is None
    assert table.columns == ["x0", "x1"] and table.integer_columns == []
    assert torch.equal(load_dataset("rings", 50, seed=3).x, rings(50, generator=_gen(3)))
    assert not torch.equal(load_dataset("rings", 50, seed=3).x, load_dataset("rings", 50).x)
    with pytest.raises(ValueError, match="unknown dataset 'ring'.*rings"):
        load_dataset("ring")


def test_digits_and_splits():
    pytest.importorskip("sklearn")
    table = load_dataset("digits", 10)  # n is ignored: all images
    x = table.x
    assert x.shape == (1797, 64) and x.dtype == torch.get_default_dtype()
    assert x.min() == 0 and x.max() == 16 and torch.equal(x, x.round())
    assert table.integer_columns == list(range(64)) and table.columns[9] == "pixel_1_1"
    train, valid, test = digits_splits()
    assert (len(train), len(valid), len(test)) == (1257, 180, 360)
    rows = torch.cat((train, valid, test))
    # a permutation of the images: same multiset of rows
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(rows) == key(x)
    assert all(
        torch.equal(a, b) for a, b in zip(digits_splits(), (train, valid, test), strict=True)
    )
    assert not torch.equal(digits_splits(seed=1)[0], train)
    assert digits(5, generator=_gen()).shape == (5, 64)


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"arflows\[sklearn\]"):
        digits()


# --- files ----------------------------------------------------------------------------------


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_csv_columns_context_and_integer_columns(tmp_path):
    path = _csv(tmp_path, "id,a,b,label,t\n1,0.5,2,x,10\n2,1.5,3,y,20\n3,2.0,4,z,30\n")
    table = read_table(path, context_columns=["t"])
    assert table.columns == ["id", "a", "b"]  # the text column is left out
    assert table.context_columns == ["t"] and table.c.tolist() == [[10.0], [20.0], [30.0]]
    assert table.x[:, 1].tolist() == [0.5, 1.5, 2.0]
    assert table.integer_columns == [0, 2]  # integer dtype and whole floats alike
    table = read_table(path, columns=["b", "a"])
    assert table.columns == ["b", "a"] and table.c is None and table.integer_columns == [0]
    assert table.x.dtype == torch.get_default_dtype()


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        (
            "a,b\n1,2\n",
            dict(columns=["a", "zz"]),
            r"unknown data column 'zz'; available columns: a, b",
        ),
        ("a,b\n1,2\n", dict(context_columns=["q"]), r"unknown context column 'q'"),
        ("a,b\n1,2\n", dict(columns=["a"], context_columns=["a"]), "both"),
        ("a,b\n1,2\n3,oops\n", {}, r"column 'b' is not numeric: row 2 \(line 3.*'oops'"),
        ("a,name\n1,x\n", dict(columns=["name"]), "column 'name' is not numeric: row 1"),
        ("a,b\n1,2\n3,\n4,5\n", {}, r"column 'b' holds NaN.*row 2 \(line 3"),
        ("a,b\n1,2\n3,4\n5,-inf\n", {}, "column 'b' holds -inf at row 3"),
        ("a,b\n1,nan\n2,nan\n", {}, "2 non-finite values"),
        ("", {}, "empty file"),
        ("a,b\n", {}, "no rows"),
        ("name\nx\n", {}, "no numeric data columns"),
        ("1,2\n3,4\n", {}, "need a header row"),
    ],
)
def test_read_csv_errors(tmp_path, text, kwargs, match):
    with pytest.raises(DataError, match=match):
        read_table(_csv(tmp_path, text), **kwargs)


def test_read_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"unknown format '.txt'.*\.csv"):
        read_table(_csv(tmp_path, "a\n1\n", "data.txt"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="directory"):
        read_table(tmp_path / "dir.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read .*bad.parquet"):
        read_table(tmp_path / "bad.parquet")
    with pytest.raises(TypeError, match="list of column names"):
        read_table(_csv(tmp_path, "a\n1\n"), columns="a")


def test_read_npy_npz(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    table = read_table(tmp_path / "x.npy", context_columns=["x2"])
    assert table.columns == ["x0", "x1"] and table.c[:, 0].tolist() == [2.0, 5.0, 8.0, 11.0]
    np.save(tmp_path / "v.npy", np.array([1.0, 2.5]))
    assert read_table(tmp_path / "v.npy").x.shape == (2, 1)
    np.savez(tmp_path / "xc.npz", x=x, c=np.ones((4, 2)))
    table = read_table(tmp_path / "xc.npz")
    assert table.columns == ["x0", "x1", "x2"] and table.context_columns == ["c0", "c1"]
    np.savez(tmp_path / "one.npz", data=x)
    assert read_table(tmp_path / "one.npz").x.shape == (4, 3)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(DataError, match="array named 'x'.*found a, b"):
        read_table(tmp_path / "two.npz")
    np.savez(tmp_path / "rows.npz", x=x, c=np.ones((3, 1)))
    with pytest.raises(DataError, match="'x' has 4 rows but 'c' has 3"):
        read_table(tmp_path / "rows.npz")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(DataError, match="numeric array"):
        read_table(tmp_path / "s.npy")
    np.save(tmp_path / "x3.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match=r"shape \(rows, columns\)"):
        read_table(tmp_path / "x3.npy")
    bad = x.copy()
    bad[2, 1] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(DataError, match="column 'x1' holds inf at row 3"):
        read_table(tmp_path / "inf.npy")


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickled_npy_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "p.npy", np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        read_table(tmp_path / "p.npy")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_write_then_read_round_trips(tmp_path, suffix):
    values = torch.randn(6, 3, dtype=torch.float64)
    path = tmp_path / f"out{suffix}"
    write_table(path, values, ["a", "b", "c"])
    table = read_table(path)
    assert table.columns == (["x0", "x1", "x2"] if suffix == ".npy" else ["a", "b", "c"])
    assert torch.allclose(table.x.double(), values, atol=1e-6)
    write_table(path, values.numpy()[:2], ["a", "b", "c"])  # replaces the file
    assert read_table(path).x.shape == (2, 3)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_errors_and_atomicity(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"shape \(rows, 2\).*got \(3, 3\)"):
        write_table(tmp_path / "a.csv", torch.zeros(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="unknown format '.json'"):
        write_table(tmp_path / "a.json", torch.zeros(3, 2), ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        write_table(tmp_path / "a.csv", torch.zeros(3, 2), ["a", "a"])
    with pytest.raises(DataError, match="no directory"):
        write_table(tmp_path / "missing" / "a.csv", torch.zeros(3, 2), ["a", "b"])
    path = tmp_path / "keep.csv"
    write_table(path, torch.ones(2, 2), ["a", "b"])
    pd = pytest.importorskip("pandas")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_table(path, torch.zeros(5, 2), ["a", "b"])
    monkeypatch.undo()
    assert read_table(path).x.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"arflows\[parquet\]"):
        write_table(tmp_path / "a.parquet", torch.zeros(2, 2), ["a", "b"])
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(ImportError, match=r"arflows\[parquet\]"):
        read_table(tmp_path / "b.parquet")
