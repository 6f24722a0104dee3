"""The metrics picture: training draws every series of metrics.jsonl at the end, `roboflamingo plot`
redraws it, and each logged series is a labelled line with exactly the logged values."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from roboflamingo import cli
from roboflamingo.train.plot import MetricsError, panel_of, plot_metrics, read_metrics, write_plot


def _logged(path) -> dict[str, list[tuple[int, float | None]]]:
    """What the run logged, read independently of the plotting code."""
    out: dict[str, list[tuple[int, float | None]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                out.setdefault(key, []).append((record["step"], value))
    return out


def _lines(figure) -> dict[str, object]:
    """Each drawn series by name (the line's gid), across every panel."""
    return {line.get_gid(): line for ax in figure.axes for line in ax.get_lines() if line.get_gid()}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_a_tiny_training_run_draws_every_logged_series(tmp_path, train_args, capsys):
    run = tmp_path / "tiny_run"
    args = train_args(run, "train.steps=3", "train.log_every=1", "train.val_every=1", "train.val_batches=1",
                      "train.checkpoint_every=3")
    assert cli.main(["train", *args]) == 0
    assert f"[train] metrics plot: {run / 'metrics.png'}" in capsys.readouterr().err
    logged = _logged(run / "metrics.jsonl")
    assert {"train/loss", "val/loss", "train/lr", "train/grad_norm"} <= set(logged)

    png = (run / "metrics.png").read_bytes()
    picture = _pixels(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and picture.shape[0] > 300 and picture.shape[1] > 600
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20  # drawn, not a blank canvas

    series, skipped = read_metrics(run / "metrics.jsonl")
    drawn = plot_metrics(series, title=f"{run.name}: step 3")
    lines = _lines(drawn.figure)
    assert set(lines) == set(logged) and skipped == 0
    for name, points in logged.items():
        xs, ys = lines[name].get_data()
        assert list(xs) == [s for s, _ in points]
        assert list(ys) == pytest.approx([v for _, v in points])
        legend = [t.get_text() for t in lines[name].axes.get_legend().get_texts()]
        assert name in legend
    assert list(drawn.panels)[0] == "loss" and drawn.panels["loss"] == ["train/loss", "val/loss"]
    # the file training wrote is this very picture
    assert np.array_equal(_pixels(drawn.png), picture)


def test_the_plot_command_redraws_a_run_with_smoothing_gaps_and_new_series(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "train/loss": 1.0 / s, "train/lr": 1e-4} for s in range(1, 41)]
    records[9]["train/loss"] = None  # a non-finite value: logged as null
    records.append({"step": 40, "val/loss": 0.05, "rollout/success": 0.25})  # a series the loop may log later
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 41, "train/lo'  # a line cut by a crash
    (run / "metrics.jsonl").write_text(text)

    assert cli.main(["plot", str(run), "smooth=0.6"]) == 0
    assert "4 series in 3 panels (loss, lr, success)" in capsys.readouterr().out
    assert (run / "metrics.png").stat().st_size > 10_000

    series, skipped = read_metrics(run / "metrics.jsonl")
    assert skipped == 1 and series["train/loss"].non_finite == 1
    drawn = plot_metrics(series, smooth=0.6)
    lines = _lines(drawn.figure)
    assert set(lines) == {"train/loss", "val/loss", "train/lr", "rollout/success"}
    ys = lines["train/loss"].get_data()[1]
    assert math.isnan(ys[9]) and ys[10] < ys[8]  # a gap, and the smoothed curve goes on falling
    assert "train/loss (1 non-finite)" in [t.get_text() for t in lines["train/loss"].axes.get_legend().get_texts()]
    assert lines["train/loss"].axes.get_yscale() == "log"  # the loss spans more than a decade
    assert lines["train/lr"].axes.get_yscale() == "linear"
    assert panel_of("rollout/success") == "success"

    out = tmp_path / "elsewhere" / "m.png"
    assert cli.main(["plot", f"run_dir={run}", f"out={out}", "logy=never"]) == 0
    assert out.stat().st_size > 10_000


def test_a_run_without_metrics_is_named(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 1
    assert f"{tmp_path}/metrics.jsonl: no metrics file (`roboflamingo train` writes it" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(MetricsError, match="no metric lines yet"):
        write_plot(tmp_path)
    assert not (tmp_path / "metrics.png").exists()
    assert cli.main(["plot"]) == 2
    assert cli.main(["plot", str(tmp_path), "smooth=1"]) == 2
    assert "smooth must be in [0, 1)" in capsys.readouterr().err
