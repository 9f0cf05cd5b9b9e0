"""The demo's loss curves: one panel per training phase, saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average, so noisy per-step losses show their trend."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_phases(phases: dict[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path:
    """Save one loss-vs-step panel per phase (raw in light colour, smoothed on top)."""
    names = [name for name, points in phases.items() if points]
    if not names:
        raise ValueError("plot_phases: no loss values to plot")
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        steps = [step for step, _ in phases[name]]
        losses = [loss for _, loss in phases[name]]
        axis.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1)
        axis.plot(steps, smooth(losses, max(1, len(losses) // 20)), color="tab:blue", linewidth=2)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
