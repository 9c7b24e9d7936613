"""plot.py draws each run's mean score over seeds against epochs and training minutes, from scores.csv files."""

import os
import subprocess
import sys

import numpy as np
from script_runs import REPO_ROOT

import plot

HEADER = "epoch,seed,train_seconds,return_mean,return_std,score_mean,score_std"


def write_scores(path, offset: float) -> None:
    """Two seeds evaluated at epochs 5 and 10; seed s scores epoch + s + offset."""
    rows = [
        f"{epoch},{seed},{epoch * 6.0},0,0,{epoch + seed + offset},0"
        for epoch in (5, 10)
        for seed in (0, 1)
    ]
    path.parent.mkdir()
    path.write_text("\n".join([HEADER, *rows]) + "\n")


def test_plot_draws_the_mean_over_seeds_against_epochs_and_minutes(tmp_path) -> None:
    paths = [tmp_path / "a" / "scores.csv", tmp_path / "b" / "scores.csv"]
    for path, offset in zip(paths, (0.0, 5.0)):
        write_scores(path, offset)
    by_epoch, by_time = plot.draw([str(path) for path in paths]).axes
    for axis, x in ((by_epoch, [5, 10]), (by_time, [0.5, 1.0])):  # minutes: epoch * 6 s
        (line_a, line_b) = axis.get_lines()
        np.testing.assert_allclose(
            line_a.get_xydata(), [[x[0], 5.5], [x[1], 10.5]]
        )  # mean of seeds 0 and 1
        np.testing.assert_allclose(line_b.get_xydata(), [[x[0], 10.5], [x[1], 15.5]])
    assert [text.get_text() for text in by_epoch.get_legend().get_texts()] == [
        "a (2 seeds)",
        "b (2 seeds)",
    ]


def test_plot_command_writes_a_png(tmp_path) -> None:
    write_scores(tmp_path / "run" / "scores.csv", 0.0)
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "plot.py"),
        "run/scores.csv",
        "--out=scores.png",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
