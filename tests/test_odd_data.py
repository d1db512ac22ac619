"""Odd data is named, not passed over: text and saved-index columns, constant columns,
identical rows, point masses, and error messages without internal argument names."""

import numpy as np
import pytest
import torch

import arflows
from arflows.data import DataError, check_rows, read_table

pd = pytest.importorskip("pandas")

QUIET = dict(epochs=1, progress=False)


def _frame(n=6):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "k": rng.integers(0, 5, n)})


def _tiny(features=2):
    return arflows.MAF(features, transforms=1, hidden_features=(8,))


# --- read_table: columns left out, with notes -------------------------------------------


def test_a_text_column_is_left_out_with_a_note(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,name,b\n1,x,2\n3,y,4\n5,,6\n")
    table = read_table(path)
    assert table.columns == ["a", "b"]
    assert len(table.notes) == 1
    assert "column 'name' holds text (e.g. 'x'): left out" in table.notes[0]
    with pytest.raises(DataError, match="column 'name' is not numeric: row 1"):
        read_table(path, columns=["a", "name"])  # asked for by name: still an error


def test_a_clean_file_has_no_notes(tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    table = read_table(path)
    assert table.columns == ["a", "k"] and table.notes == []


@pytest.mark.parametrize(
    "save, expected",
    [
        (lambda f, p: f.to_csv(p), "(0, 1, ..., 5)"),
        (lambda f, p: f.set_axis(range(1, 7)).to_csv(p), "(1, 2, ..., 6)"),
        (lambda f, p: f.iloc[[4, 0, 2, 5]].to_csv(p), "(distinct whole numbers 0 to 5)"),
        (lambda f, p: f.reset_index().to_csv(p, index=False), "(0, 1, ..., 5)"),
    ],
    ids=["unnamed-0", "unnamed-1", "unnamed-shuffled", "index-column"],
)
def test_a_saved_pandas_index_is_left_out_with_a_note(tmp_path, save, expected):
    path = tmp_path / "d.csv"
    save(_frame(), path)
    table = read_table(path)
    assert table.columns == ["a", "k"]
    assert table.integer_columns == [1]  # the index is neither modelled nor dequantised
    (note,) = table.notes
    assert f"looks like a saved row index {expected}: left out" in note
    assert note.startswith("column 'Unnamed: 0'") or note.startswith("column 'index'")


def test_a_saved_index_is_left_out_of_a_parquet_file_too(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    _frame().reset_index().to_parquet(path)
    table = read_table(path)
    assert table.columns == ["a", "k"] and "column 'index' looks like" in table.notes[0]


def test_a_saved_index_named_as_a_data_column_is_kept_with_a_note(tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path)
    table = read_table(path, columns=["Unnamed: 0", "a"])
    assert table.columns == ["Unnamed: 0", "a"]
    assert table.x[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    (note,) = table.notes
    assert note.startswith("column 'Unnamed: 0' looks like a saved row index (0, 1, ..., 5)")
    assert "kept" in note


def test_columns_that_only_resemble_an_index_are_kept(tmp_path):
    path = tmp_path / "d.csv"
    # A named counter, an unnamed column of measurements, a later column named index.
    frame = _frame().assign(step=range(6), index=range(6))
    frame.insert(0, "", [0.5, 1.5, 0.25, 3.0, 2.0, 1.0])
    frame.to_csv(path, index=False)
    table = read_table(path)
    assert table.columns == ["Unnamed: 0", "a", "k", "step", "index"] and table.notes == []


def test_a_file_of_only_an_index_and_text_says_why_nothing_is_left(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"name": list("xyz")}).to_csv(path)
    with pytest.raises(DataError, match="no numeric data columns.*saved row index.*holds text"):
        read_table(path)


# --- error texts name columns, not arguments ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(columns=["a", "zz"]), r"unknown data column 'zz'; available columns: a, k$"),
        (dict(columns=["zz", "yy"]), r"unknown data columns 'zz', 'yy'; available"),
        (dict(context_columns=["q"]), r"unknown context column 'q'; available columns: a, k$"),
        (dict(columns=["a"], context_columns=["a"]), r"'a' is both a data column and a context"),
        (dict(columns=["a", "k"], context_columns=["k", "a"]), r"'a', 'k' are both data and"),
    ],
    ids=["data", "data-2", "context", "both", "both-2"],
)
@pytest.mark.parametrize("reader", ["read_table", "ParquetStream"])
def test_column_errors_name_the_column_and_not_an_argument(tmp_path, kwargs, match, reader):
    if reader == "ParquetStream":
        pytest.importorskip("pyarrow")
        path = tmp_path / "d.parquet"
        _frame().to_parquet(path, index=False)
        read = arflows.data.ParquetStream
    else:
        path = tmp_path / "d.csv"
        _frame().to_csv(path, index=False)
        read = read_table
    with pytest.raises(DataError, match=match) as error:
        read(path, **kwargs)
    assert "`" not in str(error.value)


# --- check_rows ---------------------------------------------------------------------------


def test_check_rows_refuses_a_constant_column_naming_it_and_its_value():
    x = torch.randn(50, 3)
    x[:, 1] = 2.5
    with pytest.raises(DataError, match=r"^column 'b' holds the value 2.5 in every row: .*leave"):
        check_rows(x, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"^column 1 holds the value 2.5 in every row"):
        check_rows(x)
    x[:, 2] = 0.0
    with pytest.raises(DataError, match=r"^columns 'b' \(2.5\), 'c' \(0\) hold one value each"):
        check_rows(x, ["a", "b", "c"])


def test_check_rows_says_when_all_rows_are_identical():
    x = torch.tensor([[1.5, -2.0]]).expand(40, 2)
    with pytest.raises(DataError, match=r"^all 40 rows are identical \('a': 1.5, 'b': -2\)"):
        check_rows(x, ["a", "b"])
    with pytest.raises(DataError, match="only 1 row"):
        check_rows(torch.randn(1, 2))


def test_check_rows_notes_a_point_mass_and_a_dequantized_constant():
    x = torch.randn(100, 4)
    x[:73, 0] = 0.0  # zero-inflated
    x[:40, 1] = 1.0  # a common value, not a majority
    x[:, 2] = 4.0  # constant, but dequantized
    x[40:, 3] = 10.0  # a majority at the top of the range
    notes = check_rows(x, ["rain", "b", "k", "cap"], dequantized=[2])
    assert len(notes) == 3
    assert notes[0].startswith("column 'k' holds the value 4 in every row: dequantized")
    assert "[4, 5)" in notes[0]
    assert notes[1].startswith("column 'rain' takes the value 0 in 73% of the rows")
    assert "kept" in notes[1]
    assert notes[2].startswith("column 'cap' takes the value 10 in 60% of the rows")
    assert check_rows(x[:, :2], ["rain", "b"], share=0.75) == []
    with pytest.raises(ValueError, match=r"`share` in \[0.5, 1\)"):
        check_rows(x, share=0.3)


# --- fit ----------------------------------------------------------------------------------


def test_fit_refuses_a_constant_column_before_touching_the_flow():
    x = torch.randn(40, 2)
    x[:, 1] = 3.0
    flow = _tiny()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"^data column 1 holds the value 3 in every training row"
    ):
        arflows.fit(flow, x, **QUIET)
    assert not flow.standardization.active
    assert all(torch.equal(v, flow.state_dict()[k]) for k, v in before.items())


def test_fit_refuses_identical_rows():
    x = torch.tensor([[1.5, -2.0]]).repeat(40, 1)
    with pytest.raises(ValueError, match=r"^all 36 training rows are identical \(1.5, -2\)"):
        arflows.fit(_tiny(), x, **QUIET)


def test_fit_names_the_column_of_a_loaded_flow(tmp_path):
    arflows.io.save(_tiny(), tmp_path / "m", columns=["a", "b"])
    x = torch.randn(40, 2)
    x[:, 0] = -1.0
    with pytest.raises(ValueError, match=r"^data column 0 \('a'\) holds the value -1 in every"):
        arflows.fit(arflows.io.load(tmp_path / "m"), x, **QUIET)


def test_fit_refuses_a_constant_column_of_a_parquet_stream_by_name(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    _frame(200).assign(k=7).to_parquet(path, index=False)
    stream = arflows.data.ParquetStream(path)
    with pytest.raises(ValueError, match=r"^data column 1 \('k'\) holds the value 7 in every"):
        arflows.fit(_tiny(), stream, **QUIET)
    _frame(200).assign(a=0.5, k=7).to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"^all \d+ training rows are identical \(0.5, 7\)"):
        arflows.fit(_tiny(), str(path), **QUIET)


def test_fit_keeps_a_dequantized_constant_and_a_point_mass():
    x = torch.randn(60, 3)
    x[:, 1] = 2.0  # dequantized: uniform on [2, 3)
    x[:45, 2] = 0.0  # zero-inflated: noted by check_rows, not refused
    history = arflows.fit(_tiny(3), x, dequantize=[1], **QUIET)
    assert len(history.train) == 1
