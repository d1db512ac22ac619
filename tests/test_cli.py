import subprocess
import sys

import pytest

from arflows.cli import main


def test_demo_runs_and_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--points", "2000", "--epochs", "3", "-o", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "held-out average log-likelihood" in text and "exact average log-likelihood" in text
    png = out / "figure1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv", [[], ["demo", "--epochs", "0"], ["demo", "--bogus"], ["nope"]], ids=str
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "arflows", "demo", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "figure 1" in result.stdout
