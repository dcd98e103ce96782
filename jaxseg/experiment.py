"""An experiment as built from a config: dataset, model, optimiser, mesh, workdir.

`setup(config, workdir)` validates the config, checks the workdir, prepares the
dataset, fills in what the dataset decides (the number of classes) and, with
`config.plan.enabled`, what the plan decides (`jaxseg.plan`: patch, batch,
network size, steps, evaluation cadence; recorded in `<workdir>/plan.json`
and reused from there); train, evaluate and predict modes all start from it.
With `config.adversarial.enabled` the experiment also holds the discriminator
and its optimiser, built here once for the train state and the train step.

`restore_state(exp, checkpoints, which)` restores a checkpoint of the
experiment's workdir onto its state; a checkpoint of another model config is
refused with what differs (`trained_config_hint`). For ensembles
(`jaxseg.ensemble`), `setup_members` builds each member's experiment with the
config it was trained with and `restore_members` gives each member's
probability function; evaluate and predict modes share them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from absl import logging

from jaxseg import config as config_lib
from jaxseg import checkpointing, ensemble, inference, models, optimizer, parallel, paths, plan as plan_lib
from jaxseg import state as state_lib, steps
from jaxseg.data import folds, pipeline
from jaxseg.errors import ConfigError, WorkdirError
from jaxseg.models import discriminator as discriminator_lib


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  prepared: pipeline.PreparedDataset
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  input_shape: tuple[int, ...]
  # The discriminator of adversarial training and its optimiser (None unless `config.adversarial.enabled`).
  discriminator: nn.Module | None = None
  disc_tx: optax.GradientTransformation | None = None

  @functools.cached_property
  def forward(self):
    """jit(`predict(params, batch_stats, images) -> logits`), compiled once per window shape."""
    return jax.jit(steps.make_predict_fn(self.model))

  def create_state(self, seed_key: jax.Array | None = None) -> state_lib.TrainState:
    """A fresh train state from `seed_key` or `config.seed` (`state.create_train_state`; pure: jit or eval_shape it)."""
    return state_lib.create_train_state(
      self.config, self.model, self.tx, self.input_shape, self.discriminator, self.disc_tx, seed_key
    )

  def init_state(self) -> state_lib.TrainState:
    """A fresh, replicated train state."""
    # The replicated init needs no partitionable random bits; the classic threefry lowering
    # compiles several times faster on CPU (8 s instead of 52 s for the default U-Net).
    with jax.threefry_partitionable(False):
      # The seed is an argument, not a constant: runs that differ only in seed compile the same program.
      return jax.jit(self.create_state, out_shardings=self.state_shardings())(jax.random.key(self.config.seed))

  def state_shardings(self) -> Any:
    """Sharding of every train-state leaf: replicated, or split over the mesh's fsdp axis (`parallel`)."""
    return parallel.state_shardings(jax.eval_shape(self.create_state), self.mesh, self.config.mesh)

  def abstract_state(self) -> Any:
    """Shapes, dtypes and shardings of the train state, without allocating it."""
    shapes = jax.eval_shape(self.create_state)
    return jax.tree.map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes,
      parallel.state_shardings(shapes, self.mesh, self.config.mesh),
    )

  def predictor(self, state: state_lib.TrainState) -> inference.DevicePredictor:
    """`predict(images [N, *window, C]) -> logits [N, *window, K]` with `state`'s weights on this process's
    devices; the sliding window runs on the device when `config.eval.placement` chooses it
    (`inference.DevicePredictor`). Each process evaluates its own cases, so the mesh is the local one."""
    params, batch_stats = parallel.host_copy((state.params, state.batch_stats))  # Gathers fsdp-split arrays.
    return inference.DevicePredictor(
      self.forward, (params, batch_stats), placement=self.config.eval.placement, mesh=parallel.local_mesh()
    )


def create_discriminator(adversarial_config: ml_collections.ConfigDict) -> discriminator_lib.PatchDiscriminator:
  """The patch discriminator described by `config.adversarial`."""
  return discriminator_lib.PatchDiscriminator(
    features=adversarial_config.features,
    num_layers=adversarial_config.num_layers,
    input_form=adversarial_config.input,
    spectral_norm=adversarial_config.spectral_norm,
  )


def ensure_workdir(workdir: str | pathlib.Path) -> paths.Path:
  """Creates the workdir (a local directory or a gs:// bucket prefix, `jaxseg.paths`) and checks it can be written."""
  return paths.ensure_dir(workdir, "workdir")


def resolve_config(config: ml_collections.ConfigDict, prepared: pipeline.PreparedDataset) -> ml_collections.ConfigDict:
  """A copy of `config` with values that come from the dataset filled in."""
  config = ml_collections.ConfigDict(config.to_dict())  # Deep copy, same keys.
  config.lock()
  if config.model.num_classes == 0:
    config.model.num_classes = prepared.num_classes
  elif config.model.num_classes != prepared.num_classes:
    raise ConfigError(
      f"config.model.num_classes={config.model.num_classes} but dataset {prepared.name!r} has "
      f"{prepared.num_classes} classes ({', '.join(prepared.labels)}); set it to 0 to follow "
      "the dataset"
    )
  return config


def setup(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Experiment:
  config_lib.validate(config)
  parallel.configure_determinism(config.deterministic)  # A no-op when cli.run has set the flags.
  parallel.check_same_config(config)
  workdir = ensure_workdir(workdir)
  prepared = folds.select(pipeline.prepare(config), config.data.fold, config.data.max_train_cases)
  config = resolve_config(config, prepared)
  if config.plan.enabled:
    config = planned_config(config, workdir, prepared)
    config_lib.validate_adversarial(config)  # The planned patch must suit the discriminator too.
  mesh = parallel.create_mesh(config.mesh)
  parallel.check_batch_size(config.train.batch_size, mesh)
  model = models.create_model(config.model)
  schedule = optimizer.learning_rate_schedule(config.train)
  tx = optimizer.create_optimizer(config.train)
  input_shape = (1, *config.data.patch_size, prepared.num_channels)
  discriminator = disc_tx = None
  if config.adversarial.enabled:
    discriminator = create_discriminator(config.adversarial)
    disc_tx = optimizer.create_discriminator_optimizer(config.adversarial)
  return Experiment(config, workdir, prepared, model, tx, schedule, mesh, input_shape, discriminator, disc_tx)


def trained_config_hint(exp: Experiment) -> str:
  """How the model settings of `<workdir>/config.json` (the training run) differ from `exp.config`."""
  path = exp.workdir / "config.json"
  try:
    trained = json.loads(path.read_text())
  except (OSError, ValueError):
    return "was it trained with another config.model or dataset?"
  current = json.loads(config_lib.to_json(exp.config))
  diffs = [
    f"model.{key}={trained['model'][key]!r} (this config: {current['model'].get(key)!r})"
    for key in sorted(trained.get("model", {}))
    if trained["model"][key] != current["model"].get(key)
  ]
  if trained.get("data", {}).get("name") != current["data"]["name"]:
    diffs.append(f"data.name={trained['data'].get('name')!r} (this config: {current['data']['name']!r})")
  if not diffs:
    return f"its model settings in {path} equal this config's"
  return f"it was trained with {', '.join(diffs)} according to {path}"


def restore_state(
  exp: Experiment, checkpoints: checkpointing.Checkpoints, which: str | int
) -> tuple[state_lib.TrainState, int]:
  """(state, step) of checkpoint `which` ('latest', 'best' or a step) on `exp`'s state shardings.

  Raises:
    CheckpointError: no such checkpoint, an unreadable one, or one of another model config (saying how the
      workdir's config.json differs from `exp.config`).
  """
  return checkpoints.restore(exp.abstract_state(), which, mismatch_hint=trained_config_hint(exp))


def restore_members(
  exps: Sequence[Experiment], which: str
) -> tuple[list[Callable[[np.ndarray], np.ndarray]], list[int]]:
  """Each member's `image -> softmax [Z, Y, X, K]` (its own window settings) and checkpoint step."""
  functions, steps = [], []
  for exp in exps:
    checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
    try:
      state, step = restore_state(exp, checkpoints, exp.config[which].checkpoint)
    finally:
      checkpoints.close()
    predict = exp.predictor(state)
    functions.append(
      lambda image, predict=predict, config=exp.config: inference.predict_probabilities(
        predict, image, config, config.model.num_classes
      )
    )
    steps.append(int(step))
  return functions, steps


def setup_members(config: ml_collections.ConfigDict, members: ensemble.Members) -> list[Experiment]:
  """Each member's experiment with the config it was trained with; refuses mixed folds or label sets."""
  configs = [ensemble.trained_config(w, config) for w in members.workdirs]
  ensemble.check_same_config(members, configs)
  exps = [setup(c, w) for c, w in zip(configs, members.workdirs)]
  ensemble.check_compatible(members, [e.prepared for e in exps])
  return exps


def write_config(exp: Experiment) -> None:
  if jax.process_index() == 0:
    paths.write_text_atomic(exp.workdir / "config.json", config_lib.to_json(exp.config))


PLAN_FILE = "plan.json"


def dataset_summary(config: ml_collections.ConfigDict, prepared: pipeline.PreparedDataset) -> plan_lib.DatasetSummary:
  """What planning needs from the prepared dataset's fingerprint (`plan.summarize_dataset`)."""
  from jaxseg.data import preprocess  # pylint: disable=g-import-not-at-top

  fingerprint = preprocess.Fingerprint.from_dict(prepared.builder.info.metadata["fingerprint"])
  return plan_lib.summarize_dataset(
    fingerprint,
    prepared.plan.target_spacing,
    num_classes=prepared.num_classes,
    ndim=prepared.ndim,
    validation_cases=len(prepared.splits.get("validation", [])),
    test_cases=len(prepared.splits.get("test", [])),
  )


def measure_step_time(
  config: ml_collections.ConfigDict, num_channels: int, candidate: plan_lib.Candidate, steps_timed: int = 2
) -> tuple[float, float]:
  """(Seconds per jitted training step of `candidate` on one local device after compiling, seconds that
  compiling and the first step took).

  The network is `config.model` with the candidate's depth and features; the batch is random data of the
  candidate's patch and per-device batch size. An adversarial run's discriminator is not included.
  """
  values = plan_lib.network_values(candidate.network, config.model.name, candidate.dim, 1)
  cfg, _ = plan_lib.apply_plan(config, {"values": values})
  model = models.create_model(cfg.model)
  tx = optimizer.create_optimizer(cfg.train)
  batch_size, patch = candidate.network.batch_size, tuple(candidate.network.patch_size)
  with cfg.unlocked():
    cfg.adversarial.enabled = False
  train_step = jax.jit(
    steps.make_train_step(
      model, tx, optimizer.learning_rate_schedule(cfg.train), cfg.train.loss, models.output_weights(cfg.model)
    ),
    donate_argnums=0,
  )
  with jax.threefry_partitionable(False):
    state = jax.jit(functools.partial(state_lib.create_train_state, cfg, model, tx, (1, *patch, num_channels)))()
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.standard_normal((batch_size, *patch, num_channels)).astype(np.float32),
    "label": rng.integers(0, cfg.model.num_classes, (batch_size, *patch)).astype(np.int32),
  }
  compile_start = time.perf_counter()
  state, metrics = train_step(state, batch)  # Compiles.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps_timed):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps_timed
  logging.info(
    "Plan: measured %s: %.3f s/step (compiling and the first step took %.1f s)",
    candidate.describe(),
    seconds,
    start - compile_start,
  )
  return seconds, start - compile_start


def _plan_inputs(
  config: ml_collections.ConfigDict, summary: plan_lib.DatasetSummary, devices: plan_lib.Devices
) -> dict[str, Any]:
  """What a stored plan must have been made from to be reused."""
  return {
    "dataset": summary.to_dict(),
    "devices": devices.to_dict(),
    "model": config.model.name,
    "time_budget_min": config.plan.time_budget_min if devices.kind == "cpu" else None,
    "mirror_axes": [int(a) for a in config.eval.mirror_axes],
  }


def make_plan(config: ml_collections.ConfigDict, prepared: pipeline.PreparedDataset) -> dict[str, Any]:
  """A new plan for this dataset and these devices (on a CPU: measures candidate step times)."""
  summary = dataset_summary(config, prepared)
  devices = plan_lib.detect_devices(config.plan.memory_gb)
  measure = functools.partial(measure_step_time, config, prepared.num_channels)
  plan = plan_lib.make_plan(
    summary,
    devices,
    config.model.name,
    time_budget_min=config.plan.time_budget_min,
    measure=measure,
    step_fraction=config.eval.step_fraction,
  )
  plan["inputs"] = _plan_inputs(config, summary, devices)
  return plan


def load_or_make_plan(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, prepared: pipeline.PreparedDataset, *, replan: bool = False
) -> dict[str, Any]:
  """`<workdir>/plan.json`'s plan when it was made from the same dataset, devices and model; else a new one."""
  path = workdir / PLAN_FILE
  if path.exists() and not replan:
    try:
      stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise WorkdirError(f"{path}: cannot read the stored plan ({e}); delete it to plan again") from e
    summary = dataset_summary(config, prepared)
    devices = plan_lib.detect_devices(config.plan.memory_gb)
    if stored.get("inputs") == json.loads(json.dumps(_plan_inputs(config, summary, devices))):
      logging.info("Using the plan in %s", path)
      return stored
    logging.info("The plan in %s was made for another dataset, model or machine; planning again", path)
  return make_plan(config, prepared)


def write_plan(workdir: pathlib.Path, plan: dict[str, Any], record: dict[str, Any]) -> None:
  """Writes `<workdir>/plan.json`: the plan and, per planned key, the planned and used value (process 0)."""
  if jax.process_index() != 0:
    return
  paths.write_text_atomic(workdir / PLAN_FILE, json.dumps({**plan, "keys": record}, indent=2, sort_keys=True))


def planned_config(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, prepared: pipeline.PreparedDataset, *, replan: bool = False
) -> ml_collections.ConfigDict:
  """`config` with the plan applied (keys in `config.plan.fixed` keep their value); writes plan.json.

  With several processes, process 0 plans (a CPU plan measures step times, which differ between hosts)
  and the others read its plan.json from the shared workdir, so every process runs the same plan.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    if jax.process_index() == 0:
      plan = load_or_make_plan(config, workdir, prepared, replan=replan)
      write_plan(workdir, plan, plan_lib.apply_plan(config, plan, tuple(config.plan.fixed))[1])
    multihost_utils.sync_global_devices("jaxseg plan written")
    if jax.process_index() != 0:
      try:
        plan = json.loads((workdir / PLAN_FILE).read_text())
      except (OSError, ValueError) as e:
        raise WorkdirError(
          f"{workdir / PLAN_FILE}: process {jax.process_index()} cannot read process 0's plan "
          f"({e}); the workdir must be on a file system every process sees"
        ) from e
  else:
    plan = load_or_make_plan(config, workdir, prepared, replan=replan)
  config, record = plan_lib.apply_plan(config, plan, tuple(config.plan.fixed))
  overridden = [k for k, r in record.items() if r["overridden"]]
  logging.info("%s%s", plan["reason"], f"; kept from the command line: {', '.join(overridden)}" if overridden else "")
  write_plan(workdir, plan, record)
  return config


def plan_workdir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
  """`--mode=plan`: plans (whatever `config.plan.enabled` says; a matching plan.json is reused), writes
  plan.json and returns the plan as text."""
  config_lib.validate(config)
  workdir = ensure_workdir(workdir)
  prepared = folds.select(pipeline.prepare(config), config.data.fold, config.data.max_train_cases)
  config = resolve_config(config, prepared)
  plan = load_or_make_plan(config, workdir, prepared)
  _, record = plan_lib.apply_plan(config, plan, tuple(config.plan.fixed))
  write_plan(workdir, plan, record)
  return plan_lib.format_plan(plan, record) + f"\nWritten to {workdir / PLAN_FILE}"
