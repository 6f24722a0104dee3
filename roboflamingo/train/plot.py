"""``roboflamingo plot RUN_DIR``: every series of a run's ``metrics.jsonl`` in one picture.

Training writes the same picture to ``<run_dir>/metrics.png`` when it ends (``train.plot``); the
command redraws it at any time, also while the run is going. Series are grouped by the name after
their namespace, so ``train/loss`` and ``val/loss`` share the first panel and a series logged later
(``rollout/success`` beside ``train/success``, or anything new) gets a panel without code changes.
A value logged as ``null`` (non-finite: the run diverged there) leaves a gap and is counted in the
panel's legend. matplotlib's object API on the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roboflamingo.config import require_choice
from roboflamingo.io import atomic_write_bytes
from roboflamingo.train.loggers import METRICS

PLOT = "metrics.png"
LOGY = ("auto", "always", "never")
FIRST_PANELS = ("loss",)  # what a reader looks at first


@dataclass
class Job:
    """``roboflamingo plot RUN_DIR``: draw every series of ``<run_dir>/metrics.jsonl`` into a PNG.

    Args:
        run_dir: the training run directory holding ``metrics.jsonl`` (``roboflamingo train``'s ``run_dir``).
        out: the PNG to write; empty: ``<run_dir>/metrics.png``.
        smooth: exponential moving average weight in [0, 1) for a smoothed curve drawn over the faint
            raw one (TensorBoard's smoothing slider); 0 draws the raw values only.
        logy: logarithmic y axis: ``auto`` for panels whose name ends in ``loss`` or ``grad_norm`` when
            their positive values span more than a factor of 10, ``always`` for every panel with only
            positive values, ``never``: linear axes only.
    """

    run_dir: str = ""
    out: str = ""
    smooth: float = 0.0
    logy: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {self.smooth}")
        require_choice("logy", self.logy, LOGY)


class MetricsError(ValueError):
    """``metrics.jsonl`` is missing or holds nothing to draw; the message names the file."""


@dataclass
class Series:
    name: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # NaN where the run logged a non-finite value

    @property
    def non_finite(self) -> int:
        return sum(1 for v in self.values if math.isnan(v))


def read_metrics(path: str | Path) -> tuple[dict[str, Series], int]:
    """Every series in a ``metrics.jsonl`` (name -> steps and values, in file order) and the number
    of lines skipped (a line cut short by a crash, or one without a step)."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no metrics file (`roboflamingo train` writes it into its run_dir)")
    series: dict[str, Series] = {}
    skipped = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped += 1
            continue
        for name, value in record.items():
            if name == "step" or not (value is None or isinstance(value, (int, float))) or isinstance(value, bool):
                continue
            s = series.setdefault(name, Series(name))
            s.steps.append(step)
            s.values.append(math.nan if value is None else float(value))
    if not series:
        raise MetricsError(f"{path}: no metric lines yet ({skipped} unreadable)" if skipped else
                           f"{path}: no metric lines yet")
    return series, skipped


def panel_of(name: str) -> str:
    """``train/loss`` and ``val/loss`` -> ``loss``: series after the same quantity share a panel."""
    return name.split("/", 1)[1] if "/" in name else name


def _ema(values: list[float], weight: float) -> list[float]:
    out, last = [], None
    for v in values:
        if math.isnan(v):
            out.append(math.nan)
            continue
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def _use_log(panel: str, values: list[float], mode: str) -> bool:
    finite = [v for v in values if not math.isnan(v)]
    if mode == "never" or not finite or min(finite) <= 0:
        return False
    if mode == "always":
        return True
    return panel.endswith(("loss", "grad_norm")) and max(finite) > 10 * min(finite)


@dataclass
class MetricsPlot:
    """What was drawn: the figure, each panel's series (in the legend's order), and the PNG."""

    figure: Any
    panels: dict[str, list[str]]
    png: bytes


def plot_metrics(series: dict[str, Series], title: str = "", smooth: float = 0.0, logy: str = "auto") -> MetricsPlot:
    """One panel per quantity (``panel_of``), each series a labelled line; the loss panel first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels: dict[str, list[str]] = {p: [] for p in FIRST_PANELS}
    for name in series:
        panels.setdefault(panel_of(name), []).append(name)
    panels = {p: names for p, names in panels.items() if names}
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel, names) in zip(axes, panels.items()):
        for name in names:
            s = series[name]
            # a series logged once (a final validation) is still a visible mark, not an empty line
            marker = "o" if len(s.steps) < 30 else None
            label = name + (f" ({s.non_finite} non-finite)" if s.non_finite else "")
            if smooth:
                (raw,) = ax.plot(s.steps, s.values, alpha=0.3, linewidth=0.8, label=f"_raw {name}")
                ax.plot(s.steps, _ema(s.values, smooth), color=raw.get_color(), marker=marker, markersize=3,
                        label=label, gid=name)
            else:
                ax.plot(s.steps, s.values, marker=marker, markersize=3, label=label, gid=name)
        if _use_log(panel, [v for n in names for v in series[n].values], logy):
            ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    # fixed margins in inches: tight_layout measures every label and costs more than the drawing
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.25 / width, bottom=0.55 / height,
                        top=1 - (0.85 if title else 0.45) / height, wspace=0.3, hspace=0.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return MetricsPlot(fig, panels, buf.getvalue())


def write_plot(run_dir: str | Path, out: str | Path | None = None, smooth: float = 0.0,
               logy: str = "auto") -> tuple[Path, MetricsPlot]:
    """Draw ``<run_dir>/metrics.jsonl`` into ``out`` (default ``<run_dir>/metrics.png``), atomically."""
    run_dir = Path(run_dir)
    series, _ = read_metrics(run_dir / METRICS)
    last = max(max(s.steps) for s in series.values())
    result = plot_metrics(series, title=f"{run_dir.resolve().name}: step {last}", smooth=smooth, logy=logy)
    path = Path(out) if out else run_dir / PLOT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, result.png)
    return path, result


def run(job: Job) -> int:
    if not job.run_dir:
        print("roboflamingo plot: give the run directory (plot RUN_DIR or run_dir=DIR)", file=sys.stderr)
        return 2
    try:
        path, result = write_plot(job.run_dir, job.out or None, job.smooth, job.logy)
    except MetricsError as e:
        print(f"roboflamingo plot: {e}", file=sys.stderr)
        return 1
    names = [n for names in result.panels.values() for n in names]
    print(f"{path}: {len(names)} series in {len(result.panels)} panels ({', '.join(result.panels)})")
    return 0
