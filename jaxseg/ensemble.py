"""Ensembles of trained workdirs (cross-validation folds or different models) and the summary over folds.

`--mode=evaluate` and `--mode=predict` take, instead of one workdir:

- `--workdir=DIR1,DIR2,...`: any trained workdirs of the same prepared dataset
  and label set (for example a 2D and a 3D U-Net), or
- `--workdir=FOLDS_DIR`: a directory whose subdirectories are trained workdirs
  (`fold_0` .. `fold_4`, one per `config.data.fold`, all of one config).

Each member runs with the config it was trained with (`<member>/config.json`;
`eval.*` and `predict.*` come from the command line) and its
`config.eval.checkpoint` / `config.predict.checkpoint`; the ensemble averages
the members' softmax probabilities on the preprocessed grid (members share
the prepared dataset, hence its preprocessing), then maps them back to the
original grid and takes the argmax. No post-processing is applied to an
ensemble (each member's was chosen for that member alone).

Refused, naming the workdir: a member that is not a trained workdir, folds of
different configs in a folds directory (any key but `data.fold` and
`plan.fixed`), members trained on other label sets or another prepared
dataset.

Outputs of `--mode=evaluate` go to `<FOLDS_DIR>/ensemble/` (a folds directory)
or `<parent of DIR1>/ensemble_<names>/` (a list): `results/<split>/` as for
one workdir, for the splits of `config.eval.splits` that no member trained on
(folds train on each other's validation cases, so only 'test'), and, when the
members are cross-validation folds, `cv_summary.json` / `cv_summary.md`: per
class and metric the mean and std over folds of each fold's mean over its own
validation cases (`<member>/results/validation/summary.json`, evaluated first
where missing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from jaxseg import config as config_lib
from jaxseg.errors import CheckpointError, ConfigError, DataError, WorkdirError

CV_SUMMARY = "cv_summary.json"
# Keys folds of one config may differ in.
FOLD_KEYS = ("data.fold", "plan.fixed")
# Keys an ensemble member takes from the command line's config instead of its config.json.
COMMAND_LINE_SECTIONS = ("eval", "predict")


@dataclasses.dataclass(frozen=True)
class Members:
  """Trained workdirs to combine: `workdirs` and whether they came from a folds directory (`folds_dir`)."""

  workdirs: tuple[pathlib.Path, ...]
  folds_dir: pathlib.Path | None

  @property
  def output_dir(self) -> pathlib.Path:
    if self.folds_dir is not None:
      return self.folds_dir / "ensemble"
    return self.workdirs[0].parent / ("ensemble_" + "+".join(w.name for w in self.workdirs))


def find_members(workdir: str | os.PathLike[str]) -> Members | None:
  """The members named by `--workdir` (module doc), or None for a single trained workdir.

  Raises:
    CheckpointError: a listed workdir has no checkpoints.
  """
  text = os.fspath(workdir)
  if "," in text:
    paths = tuple(pathlib.Path(p).expanduser() for p in text.split(",") if p)
    for path in paths:
      if not (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path}: not a trained workdir (no checkpoints/); an ensemble takes trained workdirs")
    if len(set(paths)) != len(paths):
      raise ConfigError(f"--workdir={text} names a workdir twice")
    return Members(paths, None)
  path = pathlib.Path(text).expanduser()
  if not path.is_dir() or (path / "checkpoints").is_dir():
    return None
  subdirs = tuple(sorted(d for d in path.iterdir() if d.is_dir() and (d / "checkpoints").is_dir()))
  return Members(subdirs, path) if subdirs else None


def _assign(config: ml_collections.ConfigDict, values: dict[str, Any], path: str, prefix: str = "") -> None:
  for key, value in values.items():
    if key not in config:
      raise ConfigError(f"{path}: unknown config key {prefix}{key} (written by another jaxseg version?)")
    if isinstance(config[key], ml_collections.ConfigDict):
      _assign(config[key], value, path, f"{prefix}{key}.")
    else:
      config[key] = tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def trained_config(workdir: pathlib.Path, command_line: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json), with `eval.*` / `predict.*` of `command_line`.

  Planning is off: config.json holds the planned values already.

  Raises:
    CheckpointError: the workdir has no readable config.json.
  """
  path = workdir / "config.json"
  try:
    values = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot read the trained config ({e}); is {workdir} a trained workdir?") from e
  config = config_lib.base_config()
  for section in COMMAND_LINE_SECTIONS:
    values.pop(section, None)
  _assign(config, values, str(path))
  for section in COMMAND_LINE_SECTIONS:
    config[section] = ml_collections.ConfigDict(command_line[section].to_dict())
  config.plan.enabled = False
  return config


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = value

  walk(json.loads(config_lib.to_json(config)), "")
  return flat


def check_same_config(members: Members, configs: Sequence[ml_collections.ConfigDict]) -> None:
  """A folds directory must hold folds of one config (any key but FOLD_KEYS may not differ).

  Raises:
    ConfigError: naming the member workdir and the keys that differ.
  """
  if members.folds_dir is None:
    return
  first = _flat(configs[0])
  for workdir, config in zip(members.workdirs[1:], configs[1:]):
    other = _flat(config)
    diffs = [k for k in sorted(set(first) | set(other)) if k not in FOLD_KEYS and first.get(k) != other.get(k)]
    if diffs:
      shown = ", ".join(f"{k}={other.get(k)!r} (not {first.get(k)!r})" for k in diffs[:4])
      raise ConfigError(
        f"{workdir}: trained with another config than {members.workdirs[0]}: {shown}"
        f"{' ...' if len(diffs) > 4 else ''}; a folds directory must hold the folds of one config"
      )
  folds = [str(c.data.fold) for c in configs]
  if len(set(folds)) != len(folds):
    raise ConfigError(
      f"{members.folds_dir}: several workdirs were trained on the same fold "
      f"({', '.join(f'{w.name}: {f!r}' for w, f in zip(members.workdirs, folds))})"
    )


def check_compatible(members: Members, prepared: Sequence[Any]) -> None:
  """Members must share the label set and the prepared dataset.

  Raises:
    DataError: naming the member workdir that differs from the first.
  """
  first = prepared[0]
  for workdir, p in zip(members.workdirs[1:], prepared[1:]):
    if p.labels != first.labels:
      raise DataError(
        f"{workdir}: trained on labels {p.labels} but {members.workdirs[0]} on {first.labels}; "
        "an ensemble needs models of one label set"
      )
    if str(p.builder.data_dir) != str(first.builder.data_dir):
      raise DataError(
        f"{workdir}: trained on the prepared dataset {p.builder.data_dir} but "
        f"{members.workdirs[0]} on {first.builder.data_dir}; an ensemble averages probabilities of "
        "one preprocessing"
      )


def average(probabilities: Sequence[Callable[[np.ndarray], np.ndarray]]) -> Callable[[np.ndarray], np.ndarray]:
  """`image -> mean over members of their softmax probabilities [..., K]`."""

  def predict(image: np.ndarray) -> np.ndarray:
    total = None
    for fn in probabilities:
      p = fn(image)
      total = p.astype(np.float32) if total is None else total + p
    return total / len(probabilities)

  return predict


def cross_validation_summary(
  summaries: Sequence[dict[str, Any]],
  class_names: Sequence[str],
  workdirs: Sequence[pathlib.Path],
  folds: Sequence[str],
) -> dict[str, Any]:
  """Mean and std over folds of each fold's validation means (per class and metric, and mean_foreground)."""
  from jaxseg import metrics  # pylint: disable=g-import-not-at-top

  out: dict[str, Any] = {
    "num_folds": len(summaries),
    "folds": [
      {"workdir": str(w), "fold": f, "step": s["step"], "num_cases": s["num_cases"]}
      for w, f, s in zip(workdirs, folds, summaries)
    ],
  }
  for name in (*class_names, "mean_foreground"):
    out[name] = {}
    for metric in metrics.METRIC_NAMES:
      values = [s[name][metric] for s in summaries if s.get(name, {}).get(metric) is not None]
      out[name][metric] = {
        "mean": float(np.mean(values)) if values else None,
        "std": float(np.std(values)) if values else None,
        "folds": len(values),
      }
  return out


def cv_markdown(summary: dict[str, Any], class_names: Sequence[str]) -> str:
  from jaxseg import metrics  # pylint: disable=g-import-not-at-top

  lines = [
    f"# Cross-validation: {summary['num_folds']} folds",
    "",
    "Mean ± std over folds of each fold's mean over its own validation cases (original geometry).",
    "",
    "| class | " + " | ".join(metrics.METRIC_NAMES) + " |",
    "|---" * (len(metrics.METRIC_NAMES) + 1) + "|",
  ]
  for name in (*class_names, "mean_foreground"):
    cells = []
    for m in metrics.METRIC_NAMES:
      v = summary[name][m]
      cells.append("n/a" if v["mean"] is None else f"{v['mean']:.4f} ± {v['std']:.4f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "| fold | workdir | step | validation cases |", "|---|---|---|---|"]
  lines += [f"| {f['fold']} | {f['workdir']} | {f['step']} | {f['num_cases']} |" for f in summary["folds"]]
  return "\n".join(lines) + "\n"


def write_json_and_markdown(directory: pathlib.Path, name: str, content: dict[str, Any], markdown: str) -> None:
  from jaxseg import paths  # pylint: disable=g-import-not-at-top

  try:
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in (
      (directory / f"{name}.json", json.dumps(content, indent=2, allow_nan=False)),
      (directory / f"{name}.md", markdown),
    ):
      paths.write_text_atomic(path, text)  # Local (tmp + rename) or gs://.
  except OSError as e:
    raise WorkdirError(f"cannot write {name} to {directory}: {e.strerror or e}") from e


def log_members(members: Members, steps: Sequence[int]) -> None:
  logging.info(
    "Ensemble of %d models: %s",
    len(members.workdirs),
    ", ".join(f"{w} (step {s})" for w, s in zip(members.workdirs, steps)),
  )
