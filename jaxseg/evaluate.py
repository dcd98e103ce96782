"""Whole-volume evaluation of a trained model and the `results/<split>/` reports.

Cases are scored in their ORIGINAL geometry, as nnU-Net does. For each case:

1. sliding-window softmax over the preprocessed volume (`jaxseg.inference`
   with `config.eval` settings: step, batch, mirror axes);
2. back to the raw file's voxel grid, as nnU-Net exports predictions
   (`inference.to_original_labels`, `config.eval.resample='probabilities'`): the class
   probabilities are resampled (linear; nearest neighbour along the thick
   axis of anisotropic data), the cropped-away border is background, the
   orientation is undone, and the label map is their argmax. With
   `config.eval.resample='labels'` the argmax is taken on the preprocessed
   grid and the label map resampled with nearest neighbour instead (jaxseg
   before 2026-12; cheaper, blockier boundaries);
3. post-processing (`jaxseg.postprocess`) of the classes chosen on validation;
4. `metrics.case_metrics` per foreground class against the raw label file,
   with the raw file's voxel spacing (mm) and the surface Dice tolerances of
   `config.eval.tolerances_mm`.

`evaluate_checkpoint` first scores the validation split both as predicted and
with only the largest connected component of each class, chooses the
post-processing (`postprocess.decide`), writes it to
`<workdir>/postprocessing.json` and then evaluates `config.eval.splits` with
it (the validation report gets the chosen post-processing too). Reports:

  results/<split>/summary.json  per class name: mean over cases of every metric of
                                `metrics.METRIC_NAMES`; `mean_foreground` (mean of the
                                class means); `std` (class -> metric -> std over cases);
                                `nan_skipped` (class -> metric -> NaN values left out of
                                mean and std); `num_cases`; the checkpoint `step`;
                                `postprocessing` (classes kept to their largest component).
  results/<split>/cases.csv     one row per (case, class) with every metric.
  results/<split>/summary.md    mean +- std per class and metric, NaN counts.
  results/<split>/figures/      best_cases.png and worst_cases.png (by mean foreground
                                Dice; image | reference | prediction on the axial slice
                                with most reference foreground, radiological view) and
                                boxplots.png (every metric per class).

Several workdirs (`--workdir=A,B` or a folds directory) are evaluated as an
ensemble by `evaluate_ensemble` (`jaxseg.ensemble`: averaged softmax, the
summary over cross-validation folds in `cv_summary.json`).

`validation_dice`, run by the training loop, stays in the preprocessed space
and only counts voxels: it is cheap. With several processes, `score_split` gives
each process every n-th case (on its local devices) and gathers the results on
every process (`parallel.gather_split`); only process 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging

from jaxseg import checkpointing, console, ensemble, experiment, inference, metrics, parallel, paths
from jaxseg import postprocess, visualize
from jaxseg.data import nifti, pipeline, sampling
from jaxseg.errors import ConfigError, DataError, WorkdirError

METRIC_NAMES = metrics.METRIC_NAMES
METRIC_UNITS = {"hd95": "mm", "assd": "mm", "volume_difference": "mL; cm^2 in 2D"}

PredictFn = Callable[[np.ndarray], np.ndarray]


def validation_dice(
  predict: PredictFn, source: pipeline.CaseSource, config: ml_collections.ConfigDict, num_classes: int
) -> tuple[float, dict[str, np.ndarray], np.ndarray | None]:
  """Mean foreground Dice over a split from summed confusion counts (preprocessed space).

  Returns (mean foreground Dice, per-class scores, an overlay row of the first
  case's most foreground slice for TensorBoard, or None if the split is empty).
  """
  counts = np.zeros((num_classes, 4), np.float64)
  picture = None
  for case in parallel.split_for_process(source):  # Several processes: each scores every n-th case.
    prediction = inference.predict_probabilities(predict, case.image, config, num_classes).argmax(-1)
    counts += np.asarray(metrics.confusion_counts(prediction, case.label, num_classes), np.float64)
    if picture is None:
      z = visualize.most_foreground_slice(case.label)
      picture = visualize.comparison_row(case.image[z, ..., 0], case.label[z], prediction[z])
  if jax.process_count() > 1:  # Every process gets the same counts (the best checkpoint is saved by all).
    parts = parallel.gather_objects((counts, picture))
    counts = sum(part[0] for part in parts)
    picture = next((part[1] for part in parts if part[1] is not None), None)
  scores = {k: np.asarray(v) for k, v in metrics.scores_from_counts(counts).items()}
  return float(np.mean(scores["dice"][1:])), scores, picture


def surface_tolerances(config: ml_collections.ConfigDict, foreground: Mapping[str, int]) -> dict[str, float]:
  """Class name -> surface Dice tolerance (mm) from `config.eval.tolerances_mm`.

  () gives {} (metrics.DEFAULT_TOLERANCE_MM for every class); one value applies to every
  class; otherwise one value per foreground class in label order.
  """
  values = [float(v) for v in config.eval.tolerances_mm]
  if len(values) > 1 and len(values) != len(foreground):
    raise ConfigError(
      f"config.eval.tolerances_mm has {len(values)} values; give one, or one per foreground "
      f"class ({len(foreground)}: {', '.join(foreground)})"
    )
  if len(values) == 1:
    values = values * len(foreground)
  return dict(zip(foreground, values))


class RawCases:
  """The raw files of a prepared dataset, to score predictions in their original geometry."""

  def __init__(self, prepared: pipeline.PreparedDataset):
    self.root = pathlib.Path(prepared.builder.info.metadata["raw_root"])
    try:
      self.dataset = nifti.read_dataset(self.root)
    except DataError as e:
      raise DataError(f"evaluation in the original geometry reads the raw dataset that was prepared: {e}") from e
    self._cases = {case.case_id: case for case in self.dataset.training}

  def load(self, case_id: str) -> nifti.LoadedCase:
    if case_id not in self._cases:
      raise DataError(
        f"case {case_id!r} of the prepared dataset is not in the raw dataset {self.root}; prepare the dataset again"
      )
    return nifti.load_case(self._cases[case_id], self.dataset)


@dataclasses.dataclass
class CaseView:
  """Axial slices (radiological view, raw resolution) for the report figures."""

  image: np.ndarray  # [H, W] float, first channel.
  reference: np.ndarray  # [H, W] labels.
  prediction: np.ndarray  # [H, W] labels as scored.
  largest: np.ndarray | None  # [H, W] labels with every class kept to its largest component.

  def final_prediction(self, chosen_values: Sequence[int]) -> np.ndarray:
    if self.largest is None or not chosen_values:
      return self.prediction
    return np.where(np.isin(self.prediction, chosen_values), self.largest, self.prediction)


@dataclasses.dataclass
class CaseResult:
  """Scores of one case: `scores` of the prediction as scored, `largest` (when compared) of the classes
  whose largest-component post-processing changes something."""

  case_id: str
  scores: dict[str, dict[str, float]]
  largest: dict[str, dict[str, float]]
  view: CaseView | None

  def final_scores(self, chosen: Sequence[str]) -> dict[str, dict[str, float]]:
    return {name: self.largest.get(name, s) if name in chosen else s for name, s in self.scores.items()}


def _canonical_slices(volumes_xyz: Sequence[np.ndarray], affine: np.ndarray, reference_index: int) -> list[np.ndarray]:
  """The axial slice with most reference foreground of each `[X, Y, Z]` volume, in radiological view."""
  ornt = nib.orientations.io_orientation(affine)
  canonical = [np.swapaxes(nib.orientations.apply_orientation(v, ornt), 0, 2) for v in volumes_xyz]
  z = visualize.most_foreground_slice(canonical[reference_index])
  return [np.ascontiguousarray(visualize.axial_view(v, z)) for v in canonical]


class Evaluator:
  """Scores the cases of a prepared dataset with one checkpoint's (or an ensemble's) predictions.

  `probabilities(image [Z, Y, X, C]) -> [Z, Y, X, K]` replaces the sliding-window softmax of `predict`
  (an ensemble's average); `extra_summary` is merged into every summary.json.
  """

  def __init__(
    self,
    exp: experiment.Experiment,
    predict: PredictFn | None,
    step: int,
    probabilities: Callable[[np.ndarray], np.ndarray] | None = None,
    extra_summary: Mapping[str, Any] | None = None,
  ):
    self.probabilities = probabilities or (
      lambda image: inference.predict_probabilities(self.predict, image, self.config, self.num_classes)
    )
    self.extra_summary = dict(extra_summary or {})
    self.config = exp.config
    self.workdir = exp.workdir
    self.num_classes = exp.prepared.num_classes
    self.labels = exp.prepared.foreground
    self.tolerances = surface_tolerances(exp.config, self.labels)
    self.raw = RawCases(exp.prepared)
    self.predict = predict
    self.step = step

  def score_case(
    self, case: sampling.Case, choice: postprocess.Postprocessing, compare_largest: bool, with_view: bool
  ) -> CaseResult:
    """Predicts one preprocessed case and scores it against its raw label file."""
    probabilities = self.probabilities(case.image)
    prediction, _ = inference.to_original_labels(probabilities, case.meta, self.num_classes, self.config.eval.resample)
    del probabilities
    prediction = choice.apply(prediction, self.labels)
    loaded = self.raw.load(case.case_id)
    reference, spacing = loaded.label, loaded.spacing
    largest = None
    if compare_largest:
      largest = postprocess.keep_largest_components(prediction, list(self.labels.values()))
    view = None
    if with_view:
      volumes = [loaded.image[..., 0], reference, prediction] + ([largest] if largest is not None else [])
      slices = _canonical_slices(volumes, loaded.affine, 1)
      view = CaseView(*slices[:3], slices[3] if largest is not None else None)
    if self.raw.dataset.ndim == 2:  # [X, Y, 1] -> [X, Y].
      prediction, reference, spacing = prediction[..., 0], reference[..., 0], spacing[:2]
      largest = None if largest is None else largest[..., 0]
    scores = metrics.case_metrics(
      prediction, reference, spacing=spacing, labels=self.labels, tolerances_mm=self.tolerances
    )
    largest_scores = {}
    if largest is not None:
      changed = {int(v) for v in np.unique(prediction[largest != prediction])}
      classes = {n: v for n, v in self.labels.items() if v in changed}
      if classes:
        largest_scores = metrics.case_metrics(
          largest,
          reference,
          spacing=spacing,
          labels=classes,
          tolerances_mm={n: self.tolerances[n] for n in classes if n in self.tolerances},
        )
    logging.info(
      "%s: %s",
      case.case_id,
      ", ".join(f"{n} dice {scores[n]['dice']:.3f}" for n in self.labels),
      extra=console.FILE_ONLY,
    )
    return CaseResult(case.case_id, scores, largest_scores, view)

  def score_split(
    self, source: pipeline.CaseSource, choice: postprocess.Postprocessing, compare_largest: bool = False
  ) -> list[CaseResult]:
    """Scores every case of a split; with several processes each scores its share and all get every result.

    With `compare_largest` (deciding post-processing) every case keeps its figure slices until the
    choice is made; otherwise only the cases that can still end up best or worst keep them.
    """
    results = []
    keep = self.config.eval.num_figures
    for case in parallel.split_for_process(source):  # Round robin over processes.
      results.append(self.score_case(case, choice, compare_largest, with_view=keep > 0))
      if not compare_largest:  # Final scores are known: drop slices that cannot be shown.
        shown = {r.case_id for r in _best_and_worst(results, (), keep)}
        for result in results:
          if result.case_id not in shown:
            result.view = None
    return parallel.gather_split(results)  # Case order, on every process.

  def report(self, split: str, results: Sequence[CaseResult], choice: postprocess.Postprocessing) -> dict[str, Any]:
    """Writes `results/<split>/` (process 0) and returns the summary."""
    chosen = choice.largest_component
    rows = [
      {"case_id": r.case_id, "class": name, **scores}
      for r in results
      for name, scores in r.final_scores(chosen).items()
    ]
    summary = summarize(rows, list(self.labels), self.step, chosen) | self.extra_summary
    if jax.process_index() == 0:
      write_reports(self.workdir / "results" / split, rows, list(self.labels), split, summary)
      self._write_figures(self.workdir / "results" / split / "figures", split, results, choice)
    dice = summary["mean_foreground"]["dice"]
    logging.info(
      "%s (step %d): mean foreground Dice %s over %d cases; report in %s",
      split,
      self.step,
      "n/a" if dice is None else f"{dice:.4f}",
      summary["num_cases"],
      self.workdir / "results" / split / "summary.md",
    )
    return summary

  def _write_figures(
    self, directory: pathlib.Path, split: str, results: Sequence[CaseResult], choice: postprocess.Postprocessing
  ) -> None:
    chosen = choice.largest_component
    values = {m: {n: [r.final_scores(chosen)[n][m] for r in results] for n in self.labels} for m in METRIC_NAMES}
    visualize.save_boxplots(
      directory / "boxplots.png", values, METRIC_UNITS, f"{split}: {len(results)} cases, checkpoint step {self.step}"
    )
    k = self.config.eval.num_figures
    if k == 0 or not results:
      return
    chosen_values = choice.values(self.labels)
    ranked = _best_and_worst(results, chosen, k)
    for name, cases in (("best", ranked[:k]), ("worst", ranked[::-1][:k])):
      rows = []
      for r in cases:
        scores = r.final_scores(chosen)
        caption = (
          f"{r.case_id}: mean foreground Dice {_mean_dice(scores):.3f} ("
          + ", ".join(f"{n} {s['dice']:.2f}" for n, s in scores.items())
          + ")"
        )
        rows.append(
          (caption, visualize.comparison_row(r.view.image, r.view.reference, r.view.final_prediction(chosen_values)))
        )
      visualize.save_case_montage(directory / f"{name}_cases.png", rows, f"{split}: {name} cases")


def _mean_dice(scores: Mapping[str, Mapping[str, float]]) -> float:
  return float(np.mean([s["dice"] for s in scores.values()]))


def _best_and_worst(results: Sequence[CaseResult], chosen: Sequence[str], k: int) -> list[CaseResult]:
  """The k best then the k worst cases with slices, by mean foreground Dice (best first, worst last)."""
  ranked = sorted((r for r in results if r.view is not None), key=lambda r: -_mean_dice(r.final_scores(chosen)))
  return ranked if len(ranked) <= 2 * k else ranked[:k] + ranked[-k:]


def summarize(
  rows: Sequence[dict[str, Any]], class_names: Sequence[str], step: int, postprocessed: Sequence[str] = ()
) -> dict[str, Any]:
  """summary.json content from per-(case, class) rows (NaN values are left out and counted)."""
  summary: dict[str, Any] = {}
  std, skipped = {}, {}
  for name in class_names:
    columns = {m: [r[m] for r in rows if r["class"] == name] for m in METRIC_NAMES}
    summary[name] = {m: _nanmean(v) for m, v in columns.items()}
    std[name] = {m: _nanstd(v) for m, v in columns.items()}
    skipped[name] = {m: sum(1 for x in v if _is_nan(x)) for m, v in columns.items()}
  summary["mean_foreground"] = {m: _nanmean([summary[n][m] for n in class_names]) for m in METRIC_NAMES}
  summary["std"] = std
  summary["nan_skipped"] = skipped
  summary["num_cases"] = len({r["case_id"] for r in rows})
  summary["step"] = int(step)
  summary["postprocessing"] = {"largest_component": list(postprocessed)}
  return summary


def _is_nan(value: float | None) -> bool:
  return value is None or math.isnan(value)


def _nanmean(values: Sequence[float | None]) -> float | None:
  finite = [v for v in values if not _is_nan(v)]
  return float(np.mean(finite)) if finite else None


def _nanstd(values: Sequence[float | None]) -> float | None:
  finite = [v for v in values if not _is_nan(v)]
  return float(np.std(finite)) if finite else None


def summary_markdown(summary: Mapping[str, Any], class_names: Sequence[str], split: str) -> str:
  """summary.md: mean ± std per class and metric, with the NaN values left out."""
  post = summary["postprocessing"]["largest_component"]
  lines = [
    f"# {split}: {summary['num_cases']} cases, checkpoint step {summary['step']}",
    "",
    "Scored in the original image geometry. Mean ± std over cases; distances in mm, volume difference "
    "in mL (cm^2 for 2D images). NaN values (a distance to an empty surface) are left out and counted.",
    "",
    "Post-processing (largest connected component): " + (", ".join(post) if post else "none") + ".",
    "",
    "| class | " + " | ".join(METRIC_NAMES) + " |",
    "|---" * (len(METRIC_NAMES) + 1) + "|",
  ]
  for name in class_names:
    cells = []
    for m in METRIC_NAMES:
      mean, std, nan = summary[name][m], summary["std"][name][m], summary["nan_skipped"][name][m]
      cell = "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"
      cells.append(cell + (f" ({nan} NaN)" if nan else ""))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  means = summary["mean_foreground"]
  lines.append(
    "| mean_foreground | " + " | ".join("n/a" if means[m] is None else f"{means[m]:.4f}" for m in METRIC_NAMES) + " |"
  )
  return "\n".join(lines) + "\n"


def _write_text(path: pathlib.Path, text: str) -> None:
  paths.write_text_atomic(path, text)  # Local (tmp + rename) or gs://.


def write_reports(
  out_dir: pathlib.Path,
  rows: Sequence[dict[str, Any]],
  class_names: Sequence[str],
  split: str,
  summary: Mapping[str, Any],
) -> None:
  """Writes summary.json, cases.csv and summary.md (and creates figures/)."""
  try:
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case_id", "class", *METRIC_NAMES])
    writer.writeheader()
    writer.writerows(rows)
    _write_text(out_dir / "cases.csv", buffer.getvalue())
    _write_text(out_dir / "summary.md", summary_markdown(summary, class_names, split))
  except OSError as e:
    raise WorkdirError(f"cannot write results to {out_dir}: {e.strerror or e}") from e


def evaluate_checkpoint(
  exp: experiment.Experiment, checkpoints: checkpointing.Checkpoints, which: str | int
) -> dict[str, Any]:
  """Decides post-processing on validation, then evaluates checkpoint `which` on `config.eval.splits`.

  Returns {split: summary} as written to `results/<split>/summary.json`.
  """
  state, step = experiment.restore_state(exp, checkpoints, which)
  return evaluate_predictor(exp, exp.predictor(state), step)


def evaluate_predictor(exp: experiment.Experiment, predict: PredictFn, step: int) -> dict[str, Any]:
  """`evaluate_checkpoint` for any `predict(windows [N, *window, C]) -> logits [N, *window, K]`.

  Writes `<workdir>/postprocessing.json` and `results/<split>/`; returns {split: summary}.
  """
  evaluator = Evaluator(exp, predict, step)
  config = exp.config
  results = {}
  choice = postprocess.Postprocessing(step=step)
  validation = pipeline.CaseSource(exp.prepared, "validation", config.data.cache_cases)
  if config.eval.postprocess and len(validation):
    scored = evaluator.score_split(validation, choice, compare_largest=True)
    choice = postprocess.decide(
      {n: [r.scores[n]["dice"] for r in scored] for n in evaluator.labels},
      {n: [r.final_scores([n])[n]["dice"] for r in scored] for n in evaluator.labels},
      step,
    )
    logging.info(
      "Post-processing chosen on %d validation cases: largest component for %s",
      len(scored),
      ", ".join(choice.largest_component) or "no class",
    )
    if "validation" in config.eval.splits:
      results["validation"] = evaluator.report("validation", scored, choice)
  if jax.process_index() == 0:
    postprocess.save(exp.workdir, choice)
  splits = [split for split in config.eval.splits if split not in results]
  return {**results, **report_splits(evaluator, exp.prepared, splits, choice, config.data.cache_cases)}


def report_splits(
  evaluator: Evaluator,
  prepared: pipeline.PreparedDataset,
  splits: Sequence[str],
  choice: postprocess.Postprocessing,
  cache_cases: int,
) -> dict[str, Any]:
  """Scores and reports each split with cases ({split: summary}); empty splits are logged and skipped."""
  results = {}
  for split in splits:
    source = pipeline.CaseSource(prepared, split, cache_cases)
    if len(source) == 0:
      logging.warning("Split %r has no cases; nothing to evaluate.", split)
      continue
    results[split] = evaluator.report(split, evaluator.score_split(source, choice), choice)
  return results


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """`--mode=evaluate`: evaluates `config.eval.checkpoint` of a trained workdir, or of an ensemble of them
  (several comma-separated workdirs or a folds directory: `evaluate_ensemble`)."""
  members = ensemble.find_members(workdir)
  if members is not None:
    return evaluate_ensemble(config, members)
  exp = experiment.setup(config, workdir)
  checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
  try:
    return evaluate_checkpoint(exp, checkpoints, exp.config.eval.checkpoint)
  finally:
    checkpoints.close()


def evaluate_ensemble(config: ml_collections.ConfigDict, members: ensemble.Members) -> dict[str, Any]:
  """`--mode=evaluate` of several workdirs (`jaxseg.ensemble`): the summary over folds of cross-validation
  members and the averaged-softmax ensemble on the splits no member trained on.

  Returns {'cross_validation': cv summary (folds only), split: summary}.
  """
  exps = experiment.setup_members(config, members)
  out_dir = experiment.ensure_workdir(members.output_dir)
  folds = [str(e.config.data.fold) for e in exps]
  results: dict[str, Any] = {}
  if all(f in ensemble_folds() for f in folds) and len(set(folds)) == len(folds) > 1:
    summaries = []
    for exp in exps:
      path = exp.workdir / "results" / "validation" / "summary.json"
      if not path.exists():
        logging.info("%s has no validation results yet: evaluating it", exp.workdir)
        own = ml_collections.ConfigDict(exp.config.to_dict())
        own.eval.splits = ("validation",)
        checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
        try:
          evaluate_checkpoint(dataclasses.replace(exp, config=own), checkpoints, own.eval.checkpoint)
        finally:
          checkpoints.close()
      summaries.append(json.loads(path.read_text()))
    cv = ensemble.cross_validation_summary(summaries, list(exps[0].prepared.foreground), members.workdirs, folds)
    if jax.process_index() == 0:
      ensemble.write_json_and_markdown(
        out_dir, "cv_summary", cv, ensemble.cv_markdown(cv, list(exps[0].prepared.foreground))
      )
    logging.info(
      "Cross-validation over %d folds: mean foreground Dice %s +- %s (%s)",
      len(folds),
      cv["mean_foreground"]["dice"]["mean"],
      cv["mean_foreground"]["dice"]["std"],
      out_dir / ensemble.CV_SUMMARY,
    )
    results["cross_validation"] = cv
  functions, steps = experiment.restore_members(exps, "eval")
  ensemble.log_members(members, steps)
  trained_on_validation = any(f != "" for f in folds)
  splits = [s for s in config.eval.splits if not (s == "validation" and trained_on_validation)]
  base = exps[0]
  ens_config = ml_collections.ConfigDict(base.config.to_dict())
  ens_config.eval.postprocess = False
  ens_exp = dataclasses.replace(base, config=ens_config, workdir=out_dir)
  evaluator = Evaluator(
    ens_exp,
    None,
    min(steps),
    probabilities=ensemble.average(functions),
    extra_summary={
      "ensemble": [{"workdir": str(w), "step": s, "fold": f} for w, s, f in zip(members.workdirs, steps, folds)]
    },
  )
  choice = postprocess.Postprocessing(step=min(steps))
  results.update(report_splits(evaluator, base.prepared, splits, choice, config.data.cache_cases))
  return results


def ensemble_folds() -> tuple[str, ...]:
  from jaxseg.data import folds  # pylint: disable=g-import-not-at-top

  return folds.FOLDS[:-1]
