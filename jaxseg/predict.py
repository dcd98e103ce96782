"""`--mode=predict`: label maps of new images, each in its own original geometry.

  python -m jaxseg.main --config=configs/NAME.py --workdir=runs/NAME --mode=predict \\
      --config.predict.input=PATH --config.predict.output=DIR

Inputs (`config.predict.input`): one NIfTI file or a directory of them, in
either raw layout of `jaxseg.data.nifti`:

- MSD: one file per case, `(x, y, z)` for one channel or `(x, y, z, channel)`;
  the case id is the file name without `.nii.gz` / `.nii`.
- nnU-Net: one file per channel, `CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ...;
  the case id is CASE. In a directory, files `CASE_dddd` are grouped into one
  case when `CASE_0000` is among them, and must then be exactly the channels
  `_0000` .. `_{C-1}` of the model; a file path naming `CASE_0000` takes its
  sibling channel files.

Every case is checked (channels and dimensionality against the training data,
no NaN or infinite voxel), preprocessed with the prepared dataset's `Plan`
(`jaxseg.data.preprocess`), predicted with sliding windows (`config.eval`
window settings), mapped back to the input's voxel grid (class probabilities
resampled, then argmax: `inference.to_original_labels`), post-processed as
recorded in `<workdir>/postprocessing.json` (`jaxseg.postprocess`) and written
atomically with the input's affine:

  <output>/<case>.nii.gz                labels (uint8; uint16 above 256 classes), the
                                        input's spatial shape
  <output>/<case>_probabilities.nii.gz  with `predict.save_probabilities`: float32
                                        softmax `[X, Y, Z, K]` (before post-processing)

The checkpoint is `config.predict.checkpoint` ('best', 'latest' or a step).
With several processes (a multi-host launch) each process predicts and writes
every n-th case, so the output must be a directory every host sees (a shared
file system or a gs:// bucket, `jaxseg.paths`).

`--workdir=DIR1,DIR2,...` or a folds directory predicts with an ensemble
(`jaxseg.ensemble`): the members' softmax probabilities are averaged, and no
post-processing is applied.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import ml_collections
import nibabel as nib
import numpy as np
from absl import logging

from jaxseg import ensemble, experiment, inference, parallel, paths, postprocess
from jaxseg.data import nifti, pipeline, preprocess
from jaxseg.errors import CheckpointError, ConfigError, DataError, WorkdirError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class InputCase:
  """One case to predict: its id, its files and their layout ('msd' or 'nnunetv2')."""

  case_id: str
  paths: tuple[pathlib.Path, ...]
  layout: str


def _split_name(path: pathlib.Path) -> tuple[str, str] | None:
  """(stem, ending) of a NIfTI file name, or None for other files."""
  for ending in nifti.NIFTI_ENDINGS:
    if path.name.endswith(ending) and len(path.name) > len(ending):
      return path.name[: -len(ending)], ending
  return None


def _channel_files(case_id: str, found: dict[int, pathlib.Path], channel_names: tuple[str, ...]) -> InputCase:
  expected = set(range(len(channel_names)))
  if set(found) != expected:
    have = ", ".join(f"_{c:04d}" for c in sorted(found))
    raise DataError(
      f"{found[min(found)].parent}: case {case_id!r} has channel files {have} but the model takes "
      f"{len(channel_names)} channel(s) ({', '.join(channel_names)}): _0000 .. "
      f"_{len(channel_names) - 1:04d}"
    )
  return InputCase(case_id, tuple(found[c] for c in sorted(found)), "nnunetv2")


def find_cases(input_path: pathlib.Path, channel_names: tuple[str, ...]) -> list[InputCase]:
  """The cases of a NIfTI file or directory (module docstring).

  Raises:
    DataError: the path does not exist, holds no NIfTI file, a case lacks channel files, or two
      files give the same case id.
  """
  if input_path.is_file():
    parts = _split_name(input_path)
    if parts is None:
      raise DataError(f"config.predict.input: {input_path} is not a NIfTI file (.nii.gz or .nii)")
    match = _CHANNEL_FILE.match(parts[0])
    if not match or int(match["channel"]) != 0:
      return [InputCase(parts[0], (input_path,), "msd")]
    siblings = {c: input_path.with_name(f"{match['case']}_{c:04d}{parts[1]}") for c in range(len(channel_names))}
    return [_channel_files(match["case"], {c: p for c, p in siblings.items() if p.exists()}, channel_names)]
  if not input_path.is_dir():
    raise DataError(f"config.predict.input: {input_path} does not exist")
  files = sorted(p for p in input_path.iterdir() if p.is_file() and _split_name(p) is not None)
  if not files:
    raise DataError(f"config.predict.input: {input_path} holds no NIfTI file (.nii.gz or .nii)")
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for path in files:
    match = _CHANNEL_FILE.match(_split_name(path)[0])
    if match:
      groups.setdefault(match["case"], {})[int(match["channel"])] = path
  cases, grouped = [], set()
  for case_id, found in groups.items():
    if 0 in found:
      cases.append(_channel_files(case_id, found, channel_names))
      grouped.update(found.values())
  cases += [InputCase(_split_name(p)[0], (p,), "msd") for p in files if p not in grouped]
  seen: dict[str, InputCase] = {}
  for case in cases:
    if case.case_id in seen:
      raise DataError(
        f"config.predict.input: {case.paths[0]} and {seen[case.case_id].paths[0]} are both case {case.case_id!r}"
      )
    seen[case.case_id] = case
  return sorted(cases, key=lambda c: c.case_id)


def check_header(path: pathlib.Path, layout: str, channel_names: tuple[str, ...], ndim: int) -> tuple[int, ...]:
  """Checks a file's channels and dimensionality from its header; returns its spatial shape.

  Raises:
    DataError: naming the file, when its channels or dimensionality do not match the training data.
  """
  try:
    shape = tuple(int(s) for s in nib.load(path).shape)
  except Exception as e:  # nibabel raises many types for files that are not NIfTI.
    raise DataError(f"{path}: cannot read NIfTI header ({' '.join(str(e).split())})") from e
  if len(shape) not in (2, 3, 4):
    raise DataError(f"{path}: image has shape {shape}; expected (x, y), (x, y, z) or (x, y, z, channel)")
  channels = shape[3] if len(shape) == 4 else 1
  wanted = len(channel_names) if layout == "msd" else 1
  if channels != wanted:
    what = "the model takes" if layout == "msd" else "an nnU-Net channel file holds"
    raise DataError(
      f"{path}: image has {channels} channel(s) (shape {shape}) but {what} {wanted}"
      + (f" ({', '.join(channel_names)})" if layout == "msd" else "")
    )
  is_2d = len(shape) == 2 or shape[2] == 1
  if is_2d != (ndim == 2):
    raise DataError(
      f"{path}: image is {2 if is_2d else 3}D (shape {shape}) but the model was trained on {ndim}D images"
    )
  return shape[:3] if len(shape) >= 3 else shape


def check_output_dir(output: pathlib.Path) -> pathlib.Path:
  """Creates the output directory and checks it can be written.

  Raises:
    WorkdirError: naming the directory.
  """
  try:
    output.mkdir(parents=True, exist_ok=True)
    probe = output / f".write_test_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"config.predict.output: {output} cannot be written: {e.strerror or e}") from e
  return output


def _paths(config: ml_collections.ConfigDict) -> tuple[pathlib.Path, pathlib.Path]:
  for key in ("input", "output"):
    if not config.predict[key]:
      raise ConfigError(f"config.predict.{key} is empty; set --config.predict.{key}=PATH")
  return (
    pathlib.Path(config.predict.input).expanduser(),
    paths.resolve(config.predict.output, "config.predict.output"),
  )  # May be gs://.


def _load_postprocessing(workdir: pathlib.Path, step: int) -> postprocess.Postprocessing:
  choice = postprocess.load(workdir)
  if choice is None:
    logging.warning(
      "No %s in %s: predicting without post-processing (run --mode=evaluate to choose it).",
      postprocess.FILENAME,
      workdir,
    )
    return postprocess.Postprocessing()
  if choice.step != step:
    logging.warning(
      "%s was chosen for checkpoint step %s but step %d predicts; applying it anyway.",
      postprocess.FILENAME,
      choice.step,
      step,
    )
  return choice


def predict_case(
  predict: inference.PredictFn | None,
  loaded: nifti.LoadedCase,
  prepared: pipeline.PreparedDataset,
  config: ml_collections.ConfigDict,
  choice: postprocess.Postprocessing,
  *,
  with_probabilities: bool,
  probabilities_fn=None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Labels `[X, Y, Z]` (and float32 probabilities `[X, Y, Z, K]`) of a loaded case on its own grid.

  `probabilities_fn(image [Z, Y, X, C]) -> [Z, Y, X, K]` (an ensemble's) replaces `predict`'s sliding window.
  """
  case = preprocess.preprocess_case(loaded, prepared.plan)
  if probabilities_fn is not None:
    probabilities = probabilities_fn(case.image)
  else:
    probabilities = inference.predict_probabilities(predict, case.image, config, prepared.num_classes)
  labels, restored = inference.to_original_labels(
    probabilities, case.meta, prepared.num_classes, config.eval.resample, keep_probabilities=with_probabilities
  )
  return choice.apply(labels, prepared.labels), restored


def predict_workdir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """`--mode=predict`: writes a label map per input case; returns their paths.

  Raises:
    ConfigError: input or output not set, or an output would overwrite an input.
    DataError: a bad input (missing, channels or dimensionality that differ from the training
      data, NaN voxels), naming the file.
    CheckpointError: no checkpoint, or one of another model config.
    WorkdirError: the output directory cannot be written.
  """
  input_path, output = _paths(config)
  members = ensemble.find_members(workdir)
  workdir = paths.resolve(workdir, "workdir")
  if members is None and not (workdir / "checkpoints").is_dir():
    raise CheckpointError(f"no checkpoints in {workdir}: train first, or pass the --workdir of a trained run")
  if not input_path.exists():
    raise DataError(f"config.predict.input: {input_path} does not exist")
  check_output_dir(output)
  exps = experiment.setup_members(config, members) if members else [experiment.setup(config, workdir)]
  exp = exps[0]
  prepared = exp.prepared
  ndim = int(prepared.builder.info.metadata["ndim"])
  cases = find_cases(input_path, prepared.channel_names)
  shapes = {}
  inputs = {p.resolve() for case in cases for p in case.paths}
  for case in cases:
    file_shapes = [check_header(p, case.layout, prepared.channel_names, ndim) for p in case.paths]
    shapes[case.case_id] = file_shapes[0]
    for name in (f"{case.case_id}.nii.gz", f"{case.case_id}_probabilities.nii.gz"):
      if (output / name).resolve() in inputs:
        raise ConfigError(
          f"config.predict.output: writing {output / name} would overwrite an input; choose another directory"
        )
  functions, steps = experiment.restore_members(exps, "predict")
  if members is None:
    step = steps[0]
    choice = _load_postprocessing(exp.workdir, step)
    probabilities_fn = functions[0]
  else:
    ensemble.log_members(members, steps)
    step = min(steps)
    choice = postprocess.Postprocessing()
    probabilities_fn = ensemble.average(functions)
  raw = {
    layout: nifti.RawDataset(
      root=input_path,
      name=prepared.name,
      description="",
      format=layout,
      channel_names=prepared.channel_names,
      labels=prepared.labels,
      ndim=ndim,
      training=(),
      test=(),
      splits=None,
    )
    for layout in ("msd", "nnunetv2")
  }
  written = []
  for case in parallel.split_for_process(cases):  # With several processes each predicts and writes every n-th case.
    loaded = nifti.load_case(nifti.RawCase(case.case_id, case.paths, None), raw[case.layout])
    labels, probabilities = predict_case(
      None,
      loaded,
      prepared,
      exp.config,
      choice,
      with_probabilities=config.predict.save_probabilities,
      probabilities_fn=probabilities_fn,
    )
    shape = shapes[case.case_id]
    path = output / f"{case.case_id}.nii.gz"
    paths.write_via_local(path, lambda p: nifti.save_nifti(p, labels.reshape(shape), loaded.affine))
    if probabilities is not None:
      paths.write_via_local(
        output / f"{case.case_id}_probabilities.nii.gz",
        lambda p: nifti.save_nifti(
          p, probabilities.reshape(shape + (1,) * (3 - len(shape)) + probabilities.shape[-1:]), loaded.affine
        ),
      )
    logging.info("%s -> %s (checkpoint step %d)", ", ".join(str(p) for p in case.paths), path, step)
    written.append(path)
  return parallel.gather_split(written)  # Every case's output, in input order, on every process.
