"""Whole-volume evaluation of a trained model and the `results/<split>/` reports.

For each case of a split: sliding-window prediction over the preprocessed
volume (`jaxseg.inference`), argmax, then `jaxseg.metrics.case_metrics` per
foreground class with the case's voxel spacing. Reports:

  results/<split>/summary.json  per class name: mean over cases of every metric,
                                `mean_foreground` (mean over foreground classes),
                                `num_cases` and the checkpoint `step`.
  results/<split>/cases.csv     one row per (case, class) with every metric.
  results/<split>/summary.md    mean +- std per class and metric.
  results/<split>/figures/      image | reference | prediction overlays.

Evaluation runs on each process's local devices on identical inputs; only
process 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxseg import checkpointing, experiment, inference, metrics, visualize
from jaxseg.data import pipeline, transforms
from jaxseg.errors import WorkdirError

METRIC_NAMES = metrics.METRIC_NAMES

PredictFn = Callable[[np.ndarray], np.ndarray]


def predict_case(predict: PredictFn, case: transforms.Case, config: ml_collections.ConfigDict,
                 num_classes: int) -> np.ndarray:
  """Softmax probabilities `[Z, Y, X, K]` for one preprocessed case."""
  image = case.image
  window = tuple(config.data.patch_size)
  if len(window) == 3 or image.shape[0] > 1:
    return inference.sliding_window_predict(
        predict, image, window=window, num_classes=num_classes, step_fraction=config.eval.step_fraction,
        batch_size=config.eval.batch_size, mirror_axes=tuple(config.eval.mirror_axes))
  probabilities = inference.sliding_window_predict(  # A 2D dataset: one slice.
      predict, image[0], window=window, num_classes=num_classes, step_fraction=config.eval.step_fraction,
      batch_size=config.eval.batch_size, mirror_axes=tuple(config.eval.mirror_axes))
  return probabilities[None]


def validation_dice(predict: PredictFn, source: pipeline.CaseSource, config: ml_collections.ConfigDict,
                    num_classes: int) -> tuple[float, dict[str, np.ndarray], np.ndarray | None]:
  """Mean foreground Dice over a split from summed confusion counts.

  Returns (mean foreground Dice, per-class scores, an overlay row of the first
  case's most foreground slice for TensorBoard, or None if the split is empty).
  """
  counts = np.zeros((num_classes, 4), np.float64)
  picture = None
  for case in source:
    prediction = predict_case(predict, case, config, num_classes).argmax(-1)
    counts += np.asarray(metrics.confusion_counts(prediction, case.label, num_classes), np.float64)
    if picture is None:
      z = visualize.most_foreground_slice(case.label)
      picture = visualize.comparison_row(case.image[z, ..., 0], case.label[z], prediction[z])
  scores = {k: np.asarray(v) for k, v in metrics.scores_from_counts(counts).items()}
  return float(np.mean(scores["dice"][1:])), scores, picture


def summarize(rows: Sequence[dict[str, Any]], class_names: Sequence[str], step: int) -> dict[str, Any]:
  """summary.json content from per-(case, class) rows."""
  summary: dict[str, Any] = {}
  for name in class_names:
    class_rows = [r for r in rows if r["class"] == name]
    summary[name] = {m: _nanmean([r[m] for r in class_rows]) for m in METRIC_NAMES}
  summary["mean_foreground"] = {m: _nanmean([summary[n][m] for n in class_names]) for m in METRIC_NAMES}
  summary["num_cases"] = len({r["case_id"] for r in rows})
  summary["step"] = int(step)
  return summary


def _nanmean(values: Sequence[float]) -> float | None:
  finite = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(finite)) if finite else None


def _nanstd(values: Sequence[float]) -> float | None:
  finite = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.std(finite)) if finite else None


def summary_markdown(rows: Sequence[dict[str, Any]], class_names: Sequence[str], split: str, step: int) -> str:
  lines = [f"# {split}: {len({r['case_id'] for r in rows})} cases, checkpoint step {step}", "",
           "Mean ± std over cases (distances in mm; NaN values, e.g. HD95 with an empty side, are left out).", "",
           "| class | " + " | ".join(METRIC_NAMES) + " |", "|---" * (len(METRIC_NAMES) + 1) + "|"]
  for name in class_names:
    cells = []
    for m in METRIC_NAMES:
      values = [r[m] for r in rows if r["class"] == name]
      mean, std = _nanmean(values), _nanstd(values)
      cells.append("n/a" if mean is None else f"{mean:.4f} ± {std:.4f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _write_text(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_reports(out_dir: pathlib.Path, rows: list[dict[str, Any]], class_names: Sequence[str], split: str,
                  step: int, figures: dict[str, np.ndarray]) -> dict[str, Any]:
  """Writes summary.json, cases.csv, summary.md and figures/*.png; returns the summary."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top
  try:
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot write results to {out_dir}: {e.strerror or e}") from e
  summary = summarize(rows, class_names, step)
  _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=["case_id", "class", *METRIC_NAMES])
  writer.writeheader()
  writer.writerows(rows)
  _write_text(out_dir / "cases.csv", buffer.getvalue())
  _write_text(out_dir / "summary.md", summary_markdown(rows, class_names, split, step))
  for name, picture in figures.items():
    mpl_image.imsave(out_dir / "figures" / f"{name}.png", picture)
  return summary


def evaluate_split(predict: PredictFn, source: pipeline.CaseSource, prepared: pipeline.PreparedDataset,
                   config: ml_collections.ConfigDict, results_dir: pathlib.Path, step: int) -> dict[str, Any]:
  """Predicts every case of a split, scores it and writes `results_dir/<split>/`."""
  labels = prepared.foreground
  rows, figures = [], {}
  for index, case in enumerate(source):
    prediction = predict_case(predict, case, config, prepared.num_classes).argmax(-1).astype(np.uint8)
    scores = metrics.case_metrics(prediction, case.label, spacing=case.spacing, labels=labels)
    for name in labels:
      rows.append({"case_id": case.case_id, "class": name, **scores[name]})
    if index < config.eval.num_figures:
      z = visualize.most_foreground_slice(case.label)
      figures[case.case_id] = visualize.comparison_row(case.image[z, ..., 0], case.label[z], prediction[z])
    logging.info("%s %s: %s", source.split, case.case_id,
                 ", ".join(f"{n} dice {scores[n]['dice']:.3f}" for n in labels))
  if jax.process_index() != 0:
    return summarize(rows, list(labels), step)
  return write_reports(results_dir / source.split, rows, list(labels), source.split, step, figures)


def evaluate_checkpoint(exp: experiment.Experiment, checkpoints: checkpointing.Checkpoints, which: str | int
                        ) -> dict[str, Any]:
  """Evaluates checkpoint `which` on every split of `config.eval.splits`."""
  state, step = checkpoints.restore(exp.abstract_state(), which)
  predict = exp.predictor(state)
  results = {}
  for split in exp.config.eval.splits:
    source = pipeline.CaseSource(exp.prepared, split, exp.config.data.cache_cases)
    if len(source) == 0:
      logging.warning("Split %r has no cases; nothing to evaluate.", split)
      continue
    results[split] = evaluate_split(predict, source, exp.prepared, exp.config, exp.workdir / "results",
                                             step)
    fg = results[split]["mean_foreground"]["dice"]
    logging.info("%s (step %d): mean foreground Dice %.4f", split, step, fg)
  return results


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """`--mode=evaluate`: evaluates `config.eval.checkpoint` of a trained workdir."""
  exp = experiment.setup(config, workdir)
  checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
  try:
    return evaluate_checkpoint(exp, checkpoints, exp.config.eval.checkpoint)
  finally:
    checkpoints.close()
