"""Normalised score vs epoch and vs training time, one line per run (mean over seeds, shaded +- std
over seeds), from the scores.csv files that sac_n_jax_flax.py and sac_n_jax_eqx.py write.

    python plot.py results/*/scores.csv checkpoints/*/scores.csv --out scores.png
"""

import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluation epoch: the epoch, training seconds and every seed's score ([evals, seeds])."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    seconds: dict[int, float] = {}
    with open(path) as file:
        for row in csv.DictReader(file):
            by_epoch[int(row["epoch"])].append(float(row["score_mean"]))
            seconds[int(row["epoch"])] = float(row["train_seconds"])
    epochs = np.array(sorted(by_epoch))
    return (
        epochs,
        np.array([seconds[epoch] for epoch in epochs]),
        np.array([by_epoch[e] for e in epochs]),
    )


def draw(paths: list[str]) -> plt.Figure:
    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for path in paths:
        epochs, seconds, scores = read_scores(path)
        mean, std = scores.mean(axis=1), scores.std(axis=1)
        label = (
            f"{os.path.basename(os.path.dirname(os.path.abspath(path)))} ({scores.shape[1]} seeds)"
        )
        for axis, x in ((by_epoch, epochs), (by_time, seconds / 60)):
            axis.plot(x, mean, label=label)
            axis.fill_between(x, mean - std, mean + std, alpha=0.2)
    by_epoch.set(xlabel="epoch", ylabel="normalized score")
    by_time.set(xlabel="training time (minutes)")
    by_epoch.legend(fontsize="small")
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="scores.csv files, one per run")
    parser.add_argument("--out", default="scores.png", help="image file to write")
    args = parser.parse_args()
    draw(args.paths).savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
