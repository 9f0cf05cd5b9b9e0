"""Loss curves as a PNG, drawn with matplotlib's Agg canvas (no display, no pyplot state).

One panel per run: a training run's `loss.png` has one, the demo's `losses.png` one per phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

# Runs at least this long get a moving-average trend over the raw per-step losses.
_TREND_MIN_STEPS = 30


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average, so noisy per-step losses show their trend."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_panels(
    panels: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str | None = None
) -> Path | None:
    """Write `path` (PNG): one loss-vs-step panel per named run (empty runs left out).

    None when matplotlib is missing or there is nothing to draw.
    """
    panels = {name: points for name, points in panels.items() if points}
    if not panels:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(max(6, 4 * len(panels)), 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (name, points) in zip(axes, panels.items()):
        steps = [step for step, _ in points]
        values = [value for _, value in points]
        long_run = len(steps) >= _TREND_MIN_STEPS
        axis.plot(
            steps,
            values,
            linewidth=1.2,
            alpha=0.35 if long_run else 1.0,
            marker=None if long_run else "o",
            markersize=3,
            color="tab:blue",
        )
        if long_run:
            axis.plot(steps, smooth(values, len(values) // 20), linewidth=2, color="tab:blue")
        axis.set_title(name)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_loss_curve(losses: Sequence[tuple[int, float]], path: str | Path, title: str = "training loss") -> Path | None:
    """One run's loss against optimizer step (see `plot_loss_panels`)."""
    return plot_loss_panels({title: losses}, path)


__all__ = ["plot_loss_curve", "plot_loss_panels", "smooth"]
