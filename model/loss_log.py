"""The loss curve: a CSV that survives resumes, drawn as a PNG a person can glance at."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class LossLog:
    """Appends ``step,loss`` rows; on resume drops rows past the checkpoint the run resumed from."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        rows = read_loss_csv(self.path) if resume_step and self.path.exists() else []
        rows = [(s, v) for s, v in rows if s <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss"])
            writer.writerows(rows)

    def add(self, step: int, loss: float) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}"])

    def plot(self, png: Path) -> None:
        plot_loss_curve(read_loss_csv(self.path), png)


def read_loss_csv(path: Path) -> list[tuple[int, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def plot_loss_curve(rows: list[tuple[int, float]], png: Path, window: int = 50) -> None:
    """The raw loss and its running mean over ``window`` steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = [s for s, _ in rows]
        losses = [v for _, v in rows]
        ax.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
        smooth, total = [], 0.0
        for i, v in enumerate(losses):
            total += v - (losses[i - window] if i >= window else 0.0)
            smooth.append(total / min(i + 1, window))
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {window}")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
