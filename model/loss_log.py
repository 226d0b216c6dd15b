"""The loss curve: a CSV that survives resumes, drawn as a PNG a person can glance at.

``loss.csv`` has a row per step: ``step,loss`` and, for an objective that reports more (the preference
stage: implicit accuracy, reward margin, chosen and rejected errors; :mod:`ieiw.model.dpo`), one column
each. The PNG draws the loss and, when there are, the implicit accuracy and reward margin below it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTTED = ("implicit_accuracy", "reward_margin")  # drawn under the loss when a run reports them


class LossLog:
    """Appends ``step,loss[,column...]`` rows; on resume drops rows past the checkpoint the run resumed
    from."""

    def __init__(self, path: Path, resume_step: int = 0, columns: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.columns = ("loss", *columns)
        rows = read_loss_rows(self.path) if resume_step and self.path.exists() else []
        rows = [r for r in rows if int(r["step"]) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *self.columns], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def add(self, step: int, loss: float, **values: float) -> None:
        row = [step, *(f"{v:.6g}" for v in (loss, *(values[c] for c in self.columns[1:])))]
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(row)

    def plot(self, png: Path) -> None:
        rows = read_loss_rows(self.path)
        plot_loss_curve([(int(r["step"]), float(r["loss"])) for r in rows], png, extra=rows)


def read_loss_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_loss_csv(path: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["loss"])) for r in read_loss_rows(path)]


def _running_mean(values: list[float], window: int) -> list[float]:
    smooth, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        smooth.append(total / min(i + 1, window))
    return smooth


def plot_loss_curve(
    rows: list[tuple[int, float]], png: Path, window: int = 50, extra: list[dict[str, str]] | None = None
) -> None:
    """The raw loss and its running mean over ``window`` steps; below it, the :data:`PLOTTED` columns
    that ``extra`` (the CSV's rows) holds."""
    shown = [c for c in PLOTTED if extra and c in extra[0] and extra[0][c] not in ("", None)]
    fig, axes = plt.subplots(1 + len(shown), 1, figsize=(7, 4 + 2.2 * len(shown)), squeeze=False, sharex=True)
    ax = axes[0][0]
    if rows:
        steps = [s for s, _ in rows]
        losses = [v for _, v in rows]
        ax.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
        ax.plot(steps, _running_mean(losses, window), lw=1.5, label=f"mean of {window}")
        ax.set_yscale("log")
        ax.legend()
    ax.set_ylabel("loss")
    for row, column in enumerate(shown, 1):
        values = [float(r[column]) for r in extra or []]
        steps = [int(r["step"]) for r in extra or []]
        axes[row][0].plot(steps, values, lw=0.6, alpha=0.4)
        axes[row][0].plot(steps, _running_mean(values, window), lw=1.5)
        axes[row][0].set_ylabel(column.replace("_", " "))
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
