"""eval.py plot and the loss plot training keeps in out_dir: PNGs that read back, and never a failed run."""
import sys

import numpy as np
import pytest

import eval as evaluation
import train
from conftest import TINY_MODEL, run_script
from common import UserError
from test_scripts import assert_one_line_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_train(workdir, monkeypatch, *extra):
    monkeypatch.chdir(workdir)
    return train.main(["--dataset=tiny", "--out_dir=out", "--max_iters=4", "--eval_interval=2", *TINY_MODEL, *extra])


def assert_png(path, width, height, runs=1):
    """A PNG of that size that reads back, with each run's val curve in its colour (C0 blue, C1 orange)."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    from matplotlib.image import imread
    pixels = imread(str(path))[..., :3]
    assert pixels.shape[:2] == (height, width)
    for colour in [(0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)][:runs]:
        near = np.abs(pixels - np.array(colour) / 255).max(axis=-1) < 0.05
        assert near.sum() > 100, f"no curve in colour {colour}"  # axes, text and grid are grey


def test_plot_command_writes_png(workdir, monkeypatch):
    pytest.importorskip("matplotlib")
    run_train(workdir, monkeypatch)
    run_train(workdir, monkeypatch, "--out_dir=out2", "--learning_rate=3e-3")
    assert_png(workdir / "out" / "loss.png", 1100, 420)  # drawn by training itself
    result = run_script("eval.py", "plot", "out", "out2/metrics.jsonl", "-o", "compare.png", cwd=workdir)
    assert "wrote compare.png (2 runs)" in result.stdout
    assert_png(workdir / "compare.png", 1100, 420, runs=2)


def test_plot_reads_a_log_without_train_records(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(
        '{"kind": "eval", "iter": 0, "tokens": 0, "train_loss": 4.2, "val_loss": 4.3}\n'
        '{"kind": "eval", "iter": 100, "tokens": 6400, "train_loss": 2.1, "val_loss": 2.4}\n')
    evaluation.main(["plot", str(tmp_path / "metrics.jsonl"), "-o", str(tmp_path / "loss.png")])
    assert_png(tmp_path / "loss.png", 1100, 420)


def test_plot_errors_are_one_line(workdir):
    assert_one_line_error(run_script("eval.py", "plot", "nowhere", cwd=workdir, check=False), "no metrics log")
    (workdir / "empty.jsonl").write_text("")
    assert_one_line_error(run_script("eval.py", "plot", "empty.jsonl", cwd=workdir, check=False), "no training or evaluation")


def test_plot_without_matplotlib_says_how_to_install(workdir, monkeypatch):
    run_train(workdir, monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UserError, match="pip install matplotlib"):
        evaluation.main(["plot", "out"])


def test_training_without_matplotlib_still_trains(workdir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_train(workdir, monkeypatch)
    assert np.isfinite(result["best_val_loss"])
    assert "pip install matplotlib" in capsys.readouterr().out
    assert not (workdir / "out" / "loss.png").exists()


def test_a_failing_plot_never_stops_training(workdir, monkeypatch, capsys):
    pytest.importorskip("matplotlib")

    def broken(runs, output):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(evaluation, "draw", broken)
    result = run_train(workdir, monkeypatch)
    assert np.isfinite(result["best_val_loss"])
    out = capsys.readouterr().out
    assert "could not draw" in out and "no fonts today" in out and out.count("could not draw") == 1
