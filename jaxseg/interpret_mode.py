"""`--mode=interpret`: interpretability maps of a trained workdir, as overlay figures and scores.

For each chosen case of `config.interpret.split` and each chosen class, the
model's input is the axial slice with the most reference voxels of the class
(2D models) or the `config.data.patch_size` window centred on the class's
centre of mass (3D models, shown at the window's slice with the most class
voxels). Every method of `config.interpret.methods` (`jaxseg.interpret`)
explains the class score over `config.interpret.region`: the voxels the model
assigns to the class (`predicted`), the reference structure (`reference`) or
the whole input (`all`).

Writes, under `<workdir>/interpret/<split>/`:
- `<case>_<class>.png`: image, reference, prediction, then one heat map per
  method over the image (radiological view, as in `results/<split>/figures/`);
- `scores.json`: per case and class the number of voxels the model assigns to
  the class in the shown input (`predicted_voxels`; with
  `interpret.region=predicted`, the default, a class the model does not
  predict there has all-zero maps), and per method the localisation score (share of
  the map's positive mass inside the reference structure dilated by
  `config.interpret.margin_voxels`) and the Spearman rank correlation with
  the same map of the same architecture with randomised weights (Adebayo et
  al., 2018: it should be low for a map that depends on what the model
  learned); plus the checkpoint step and the settings used.
"""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxseg import checkpointing, config as config_lib, experiment, interpret, models, paths, visualize
from jaxseg.data import pipeline, sampling
from jaxseg.errors import ConfigError


def _class_input(case: sampling.Case, value: int, patch_size, ndim: int):
  """(image [*S, C], reference [*S], index along z of the slice to show) around class `value`."""
  where = np.argwhere(case.label == value)
  if ndim == 2:
    z = visualize.most_foreground_slice(case.label == value)
    return case.image[z], case.label[z], None
  center = np.round(where.mean(axis=0)).astype(np.int64)
  image, label = sampling.extract_patch(case, center, patch_size)
  z = visualize.most_foreground_slice(label == value)
  return image, label, z


def _methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  methods = config_lib.split_names(config.interpret.methods)
  if "attention" in methods and config.model.name != "attention_unet":
    raise ConfigError(
      f"config.interpret.methods has 'attention' but model.name={config.model.name!r} has no "
      "attention gates (use attention_unet)"
    )
  return methods


def _maps(config, model, variables, images, class_index, region, rng) -> dict[str, np.ndarray]:
  out = {}
  for method in _methods(config):
    options = {}
    if method == "smoothgrad":
      options = dict(num_samples=config.interpret.smoothgrad_samples, noise_level=config.interpret.smoothgrad_noise)
    elif method == "integrated_gradients":
      options = dict(steps=config.interpret.ig_steps)
    out[method] = np.asarray(
      interpret.compute(
        method,
        model,
        variables,
        images,
        class_index,
        region=region,
        rng=rng,
        layer=config.interpret.layer or None,
        **options,
      )
    )[0]
  return out


def _finite_or_none(value: float) -> float | None:
  """JSON has no NaN: a map without positive mass, or a constant one, is recorded as null."""
  return None if np.isnan(value) else round(float(value), 6)


def _view(array: np.ndarray, z: int | None) -> np.ndarray:
  picture = array if z is None else array[z]
  return picture[::-1, ::-1]  # Radiological view (see visualize.axial_view).


def save_figure(
  path: paths.Path,
  image: np.ndarray,
  reference: np.ndarray,
  prediction: np.ndarray,
  maps: dict[str, np.ndarray],
  title: str,
) -> None:
  """One row: image, reference, prediction, then each map as a heat map over the image (2D arrays)."""
  plt = visualize._pyplot()  # pylint: disable=protected-access
  panels = 3 + len(maps)
  fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 3.0), squeeze=False)
  gray = visualize.to_gray(image)
  axes[0, 0].imshow(gray, cmap="gray")
  axes[0, 0].set_title("image", fontsize=8)
  axes[0, 1].imshow(visualize.overlay(image, reference))
  axes[0, 1].set_title("reference", fontsize=8)
  axes[0, 2].imshow(visualize.overlay(image, prediction))
  axes[0, 2].set_title("prediction", fontsize=8)
  for ax, (method, values) in zip(axes[0, 3:], maps.items()):
    ax.imshow(gray, cmap="gray")
    if method == "integrated_gradients":
      limit = float(np.abs(values).max()) or 1.0
      ax.imshow(values, cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.6)
    else:
      ax.imshow(values, cmap="inferno", vmin=0, vmax=float(values.max()) or 1.0, alpha=0.6)
    ax.set_title(method, fontsize=8)
  for ax in axes[0]:
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90)
  plt.close(fig)
  paths.write_bytes_atomic(path, buffer.getvalue())


def interpret_workdir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs `--mode=interpret` and returns what `scores.json` holds."""
  exp = experiment.setup(config, workdir)
  config = exp.config
  settings = config.interpret
  methods = _methods(config)
  checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
  try:
    state, step = experiment.restore_state(exp, checkpoints, settings.checkpoint)
  finally:
    checkpoints.close()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  source = pipeline.CaseSource(exp.prepared, settings.split, config.data.cache_cases)
  if len(source) == 0:
    raise ConfigError(
      f"config.interpret.split={settings.split!r}: the dataset {exp.prepared.name!r} has no cases in that split"
    )
  wanted = list(config_lib.split_names(settings.cases)) or source.case_ids[: settings.num_cases]
  unknown = [c for c in wanted if c not in source.case_ids]
  if unknown:
    raise ConfigError(
      f"config.interpret.cases: {', '.join(unknown)} not in split {settings.split!r} "
      f"(cases: {', '.join(source.case_ids[:10])}{'...' if len(source.case_ids) > 10 else ''})"
    )
  foreground = {n: v for n, v in exp.prepared.labels.items() if v != 0}
  classes = list(config_lib.split_names(settings.classes)) or list(foreground)
  bad = [c for c in classes if c not in foreground]
  if bad:
    raise ConfigError(
      f"config.interpret.classes: {', '.join(bad)} not a foreground class of "
      f"{exp.prepared.name!r} ({', '.join(foreground)})"
    )
  ndim = models.spatial_dims(config.model.name)
  out_dir = exp.workdir / "interpret" / settings.split
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  random_variables = None
  scores: dict[str, Any] = {}
  rng = jax.random.key(config.seed)
  for case_id in wanted:
    case = source[source.case_ids.index(case_id)]
    for name in classes:
      value = foreground[name]
      if not np.any(case.label == value):
        logging.info("interpret: case %s has no %s in its reference; skipped", case_id, name)
        scores.setdefault(case_id, {})[name] = "absent in the reference"
        continue
      image, reference, z = _class_input(case, value, config.data.patch_size, ndim)
      images = jnp.asarray(image[None], jnp.float32)
      region = (reference[None] == value) if settings.region == "reference" else settings.region
      maps = _maps(config, exp.model, variables, images, value, region, rng)
      if random_variables is None:
        random_variables = interpret.randomized_variables(exp.model, variables, images, config.seed + 1)
      random_maps = _maps(config, exp.model, random_variables, images, value, region, rng)
      prediction = np.asarray(jnp.argmax(exp.forward(state.params, state.batch_stats, images), -1))[0]
      predicted_voxels = int(np.sum(prediction == value))
      scores.setdefault(case_id, {})[name] = {
        "predicted_voxels": predicted_voxels,
        "maps": {
          method: {
            "localisation": _finite_or_none(
              interpret.localisation_score(maps[method], reference == value, settings.margin_voxels)
            ),
            "randomized_rank_correlation": _finite_or_none(
              interpret.rank_correlation(maps[method], random_maps[method])
            ),
          }
          for method in methods
        },
      }
      note = ""
      if settings.region == "predicted" and not predicted_voxels:
        note = f"; the model predicts no {name} here, so every map is zero (try interpret.region=reference)"
        logging.warning("interpret: %s: the model predicts no %s in the shown input; maps are zero", case_id, name)
      if jax.process_index() == 0:
        save_figure(
          out_dir / f"{case_id}_{name}.png",
          _view(image[..., 0], z),
          _view(reference, z),
          _view(prediction, z),
          {m: _view(v, z) for m, v in maps.items()},
          f"{case_id}, class {name} (step {step}): maps of the class score over the {settings.region} {name}{note}",
        )
      logging.info(
        "interpret: %s %s: localisation %s",
        case_id,
        name,
        ", ".join(f"{m} {s['localisation']}" for m, s in scores[case_id][name]["maps"].items()),
      )
  result = {
    "step": step,
    "split": settings.split,
    "methods": list(methods),
    "region": settings.region,
    "margin_voxels": settings.margin_voxels,
    "layer": settings.layer or "default",
    "cases": scores,
  }
  if jax.process_index() == 0:
    paths.write_text_atomic(out_dir / "scores.json", json.dumps(result, indent=2))
    logging.info("interpret: figures and scores in %s", out_dir)
  return result
