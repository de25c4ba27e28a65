"""Learning curves from metrics.jsonl rows: loss, the evaluation metric, the learned BSA bandwidths h_p
(mean over heads, per layer) and GRC's t (per layer and sublayer), one or several runs per figure."""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from bilateral_jax import storage  # noqa: E402


def save(figure, out: str | os.PathLike) -> epath.Path:
  """Lays out `figure`, writes it as a PNG at `out` (local or `gs://`; creating its folder) and closes it."""
  figure.tight_layout()
  out = storage.path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=100)
  plt.close(figure)
  storage.write_whole(out, png.getvalue())
  return out


def _series(rows: list[dict], split: str, name: str):
  points = [(row["step"], row[name]) for row in rows if row["split"] == split and row.get(name) is not None]
  steps = [step for step, _ in points]
  return steps, [float(np.mean(value)) if isinstance(value, list) else value for _, value in points]


def curves(runs: dict[str, list[dict]], out: str | os.PathLike) -> epath.Path:
  """runs: {label: metrics.jsonl rows} -> a PNG at `out` with one panel per quantity that was logged."""
  names = sorted({name for rows in runs.values() for row in rows for name in row})
  splits = sorted({row["split"] for rows in runs.values() for row in rows} - {"train"})
  metric = "mean_iou" if "mean_iou" in names else "accuracy"
  learned = [name for name in names if name.startswith(("h_p/", "t_"))]
  panels = [("loss", ["train"] + splits, ["loss"]), (metric, ["train"] + splits, [metric])]
  panels += [(prefix, ["train"], [n for n in learned if n.startswith(prefix)]) for prefix in ("h_p/", "t_")
             if any(n.startswith(prefix) for n in learned)]
  figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for axis, (title, panel_splits, quantities) in zip(axes[0], panels):
    for index, (label, rows) in enumerate(runs.items()):
      for split in panel_splits:
        for quantity in quantities:
          steps, values = _series(rows, split, quantity)
          if steps:
            name = " ".join(part for part in (label if len(runs) > 1 else "", split if len(panel_splits) > 1 else "",
                                              quantity if len(quantities) > 1 else "") if part)
            axis.plot(steps, values, color=colours[index % len(colours)] if len(runs) > 1 else None,
                      linestyle="-" if split == "train" else "--", marker="" if split == "train" else "o",
                      markersize=3, label=name or title)
    axis.set_title({"h_p/": "learned h_p (mean over heads)", "t_": "GRC t"}.get(title, title))
    axis.set_xlabel("step")
    if title == "loss":
      axis.set_yscale("log")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
  return save(figure, out)


def against(series: dict[str, tuple[list, list, list | None]], out: str | os.PathLike, *, xlabel: str,
            ylabel: str, title: str = "", log_x: bool = False) -> epath.Path:
  """series: {label: (x, mean, std or None)} -> one panel of lines (with ±std bars) at `out` (x on a log2
  axis with `log_x`)."""
  many = len(series) > 6  # the legend goes beside the panel instead of over the lines
  figure, axis = plt.subplots(figsize=(8.5 if many else 5, 3.6))
  for label, (x, mean, std) in series.items():
    axis.errorbar(x, mean, yerr=std, marker="o", markersize=3, capsize=2, label=label)
  axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if log_x:
    axis.set_xscale("log", base=2)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7, **(dict(loc="center left", bbox_to_anchor=(1.01, 0.5)) if many else {}))
  return save(figure, out)
