"""The loss curve of a run as a PNG, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_loss_curve(losses: Sequence[tuple[int, float]], path: str | Path, title: str = "training loss") -> Path | None:
    """Write `path` (PNG) with loss against optimizer step; None when matplotlib is missing or there is nothing to draw."""
    if not losses:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    steps = [step for step, _ in losses]
    values = [value for _, value in losses]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(steps, values, linewidth=1.2, marker="o" if len(steps) < 30 else None, markersize=3)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


__all__ = ["plot_loss_curve"]
