"""The training loop: `train_and_evaluate(config, workdir)`.

One process per host; the jitted train step runs over every device of the
mesh. Periodic actions: progress report (steps/s, images/s, ETA), optional
profile, TensorBoard scalars and overlay images, validation Dice, the latest
and best checkpoints. Rerunning in a workdir that has checkpoints resumes from
the newest one and ends exactly as an uninterrupted run would. Ctrl-C raises
`console.Interrupted` (a KeyboardInterrupt) whose message names the step
reached and the checkpoint step a rerun resumes from.

With `config.adversarial.enabled` the step also trains a patch discriminator
(`steps.make_adversarial_train_step`) and TensorBoard gets its scalars too:
`train/disc_loss`, `train/disc_accuracy_real`, `train/disc_accuracy_fake`,
`train/adversarial_loss` (unweighted), `train/adversarial_weight` (0 during
the warm-up) and `train/segmentation_loss` (`train/loss` is then the
segmenter's whole objective).

Transfer learning: a fresh run with `config.train.init_from` (a trained
workdir) starts from that run's checkpoint wherever names and shapes match
(`init_from_workdir`); `config.model.pretrained` loads torchvision backbone
weights instead. Either applies only when the workdir has no checkpoint: a
resumed run continues from its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import signal
import threading
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxseg import checkpointing, console, evaluate, experiment, metrics, models, parallel, paths, steps, writers
from jaxseg import config as config_lib, state as state_lib
from jaxseg.data import device_augment, device_cache, pipeline
from jaxseg.errors import CheckpointError, ConfigError, TrainingError

# Step metrics that stop training when not finite (the discriminator's loss only in adversarial training).
_CHECKED_LOSSES = ("loss", "disc_loss")


class MetricsBuffer:
  """Per-step train metrics kept on device until the next flush.

  `flush` fetches them once, stops training on a non-finite loss or
  discriminator loss (naming the first bad step) and returns the means to log. It runs before every
  checkpoint, so no checkpoint ever holds a state that produced a NaN.
  """

  def __init__(self, checkpoints: checkpointing.Checkpoints):
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._checkpoints = checkpoints
    self._last_time = time.time()
    self._images = 0

  def add(self, step: int, step_metrics: dict[str, jax.Array], images: int) -> None:
    self._pending.append((step, step_metrics))
    self._images += images

  def flush(self) -> dict[str, float]:
    if not self._pending:
      return {}
    pending = jax.device_get(self._pending)
    self._pending = []
    for step, values in pending:
      for name in _CHECKED_LOSSES:
        if name in values and not np.isfinite(values[name]):
          last = self._checkpoints.latest_step()
          kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was saved"
          raise TrainingError(
            f"{name} became {values[name]} at step {step}; training stopped and {kept} in {self._checkpoints.directory}"
          )
    counts = sum(values["counts"] for _, values in pending)
    dice = np.asarray(metrics.scores_from_counts(counts)["dice"])
    now = time.time()
    summary = {
      name: float(np.mean([values[name] for _, values in pending])) for name in pending[0][1] if name != "counts"
    }
    summary["dice_foreground"] = float(np.mean(dice[1:])) if len(dice) > 1 else float(dice[0])
    summary["images_per_sec"] = self._images / max(now - self._last_time, 1e-9)
    self._last_time, self._images = now, 0
    return {f"train/{k}": v for k, v in summary.items()}


def make_step(exp: experiment.Experiment, batch_fn: steps.BatchFn | None = None) -> steps.StepFn:
  """The train step: adversarial when `config.adversarial.enabled`, else the plain one."""
  config = exp.config
  weights = models.output_weights(config.model)
  if not config.adversarial.enabled:
    return steps.make_train_step(exp.model, exp.tx, exp.schedule, config.train.loss, weights, batch_fn)
  adv = config.adversarial
  return steps.make_adversarial_train_step(
    exp.model,
    exp.tx,
    exp.schedule,
    config.train.loss,
    weights,
    exp.discriminator,
    exp.disc_tx,
    adversarial_weight=adv.weight,
    warmup_steps=adv.warmup_steps,
    disc_every_steps=adv.disc_every_steps,
    label_smoothing=adv.label_smoothing,
    batch_fn=batch_fn,
  )


def train_inputs(
  exp: experiment.Experiment, train_source: pipeline.CaseSource, start_step: int, local_batch: int
) -> tuple[steps.BatchFn | None, Any, Iterator[Any]]:
  """(batch_fn, input sharding, iterator of the step's second argument) for the configured input path.

  Host path: augmented host batches. `config.data.device_augment`: host crops,
  augmented in the step. `config.data.device_cache`: the training split on the
  devices, passed to every step, which samples and augments its own batch.
  """
  config = exp.config
  if config.data.device_cache:
    cache, layout = device_cache.build(train_source, exp.mesh, config.data.patch_size)
    batch_fn = device_cache.make_batch_fn(config, layout, parallel.batch_sharding(exp.mesh))
    return batch_fn, device_cache.cache_sharding(cache), itertools.repeat(cache)
  host = pipeline.train_batches(config, train_source, start_step=start_step, local_batch_size=local_batch)
  batches = (parallel.global_batch(batch, exp.mesh) for batch in host)
  batch_fn = device_augment.make_batch_fn(config) if config.data.device_augment else None
  return batch_fn, parallel.batch_sharding(exp.mesh), batches


@dataclasses.dataclass
class _Progress:
  """How far a run got, for the line Ctrl-C leaves (`train_and_evaluate`), and Ctrl-C deferred in the loop.

  While the loop runs (`defer_ctrl_c` .. `restore_ctrl_c`), a first Ctrl-C only asks it to stop: `check`
  raises KeyboardInterrupt at the next step boundary, so a checkpoint is never left half-written (orbax's
  writer threads would print tracebacks); a second Ctrl-C interrupts at once.
  """

  checkpoints: checkpointing.Checkpoints | None = None
  step: int | None = None  # The last step trained; None before the loop.
  evaluating: bool = False  # Training finished; the final evaluation runs.
  stop_requested: bool = False
  _handler: Any = None  # The SIGINT handler to restore; None when not deferring.

  def defer_ctrl_c(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # Only the main thread may set signal handlers (and receives SIGINT).
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:
      return  # A background job of a shell: Ctrl-C is not for it.
    self._handler = handler if handler is not None else signal.default_int_handler
    signal.signal(signal.SIGINT, self._on_ctrl_c)

  def _on_ctrl_c(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.stop_requested = True
    self.restore_ctrl_c()  # A second Ctrl-C interrupts at once.

  def restore_ctrl_c(self) -> None:
    if self._handler is not None:
      signal.signal(signal.SIGINT, self._handler)
      self._handler = None

  def check(self) -> None:
    if self.stop_requested:
      raise KeyboardInterrupt

  def interrupted(self) -> str:
    resume = self.checkpoints.latest_step() if self.checkpoints is not None else None
    if self.evaluating:
      return (
        f"interrupted during the final evaluation (training finished at step {self.step}); rerun the "
        "same command to evaluate again"
      )
    where = f"at step {self.step}" if self.step is not None else "before training started"
    return f"interrupted {where}; rerun the same command to resume from step {resume or 0}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes), then evaluates the best checkpoint on `config.eval.splits`.

  Returns {split: summary} as written to `results/<split>/summary.json`.

  Raises:
    console.Interrupted: Ctrl-C (a KeyboardInterrupt); its message says at which step and from which
      checkpoint step rerunning resumes.
  """
  progress = _Progress()
  try:
    return _train_and_evaluate(config, workdir, progress)
  except KeyboardInterrupt as e:
    if isinstance(e, console.Interrupted):
      raise
    raise console.Interrupted(progress.interrupted()) from e
  finally:
    progress.restore_ctrl_c()


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: _Progress
) -> dict[str, Any]:
  exp = experiment.setup(config, workdir)
  config = exp.config
  checkpoints = checkpointing.Checkpoints(exp.workdir, keep=config.train.keep_checkpoints)
  progress.checkpoints = checkpoints
  state = exp.init_state()
  if checkpoints.latest_step() is not None:
    state, _ = checkpoints.restore(exp.abstract_state(), "latest")
    logging.info("Resumed from checkpoint step %d in %s", int(state.step), checkpoints.directory)
  elif config.train.init_from:  # Only a fresh run: a resumed one has its own weights (above).
    state = jax.device_put(init_from_workdir(exp, parallel.host_copy(state)), exp.state_shardings())
  elif config.model.pretrained:
    state = jax.device_put(
      state_lib.load_pretrained(parallel.host_copy(state), config.model, exp.tx), exp.state_shardings()
    )
  experiment.write_config(exp)
  start_step = int(state.step)

  writer = writers.create_default_writer(exp.workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  num_steps = config.train.num_steps
  report = writers.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=config.train.log_every_steps)
  profile = None
  if config.train.profile_steps and jax.process_index() == 0:
    warmup = max(1, min(10, num_steps - start_step - config.train.profile_steps))  # Past compilation.
    profile = writers.Profile(
      logdir=exp.workdir, num_profile_steps=config.train.profile_steps, first_step=start_step + warmup
    )

  train_source = pipeline.CaseSource(exp.prepared, "train", config.data.cache_cases)
  val_source = pipeline.CaseSource(exp.prepared, "validation", config.data.cache_cases)
  local_batch = parallel.check_batch_size(config.train.batch_size, exp.mesh)
  batch_fn, input_sharding, batches = train_inputs(exp, train_source, start_step, local_batch)
  train_step = jax.jit(
    make_step(exp, batch_fn),
    in_shardings=(exp.state_shardings(), input_sharding),
    out_shardings=(exp.state_shardings(), None),
    donate_argnums=0,
  )
  if jax.process_count() > 1:  # Compile, then meet: a peer's gloo set-up waits only 30 s for a slow compile.
    first = next(batches)
    batches = itertools.chain([first], batches)
    train_step = parallel.compile_together(train_step, state, first)
  buffer = MetricsBuffer(checkpoints)

  logging.info(
    "Training %s on %s from step %d to %d on %d devices",
    config.model.name,
    exp.prepared.name,
    start_step,
    num_steps,
    exp.mesh.devices.size,
  )
  progress.step = start_step
  progress.defer_ctrl_c()
  for step in range(start_step + 1, num_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next(batches)
      state, step_metrics = train_step(state, batch)
      buffer.add(step, step_metrics, config.train.batch_size)
    progress.step = step
    is_last = step == num_steps
    log_now = step % config.train.log_every_steps == 0 or is_last
    every = config.train.eval_every_steps  # 0: no validation during training.
    eval_now = every > 0 and (step % every == 0 or is_last) and len(val_source) > 0
    save_now = step % config.train.checkpoint_every_steps == 0 or is_last
    train_scalars = buffer.flush() if log_now or eval_now or save_now else {}
    writer.write_scalars(step, train_scalars)  # flush() waits for the device: the hooks below time real work.
    report(step, metrics=train_scalars)
    if profile is not None:
      profile(step)
    progress.check()  # Ctrl-C: stop before a validation.
    if eval_now:
      dice, scores, picture = evaluate.validation_dice(
        exp.predictor(state), val_source, config, exp.prepared.num_classes
      )
      names = list(exp.prepared.labels)
      writer.write_scalars(
        step,
        {
          "validation/dice_foreground": dice,
          **{f"validation/dice_{names[k]}": float(scores["dice"][k]) for k in range(1, len(names))},
        },
      )
      writer.write_images(step, {"validation/image_reference_prediction": picture[None]})
      best = checkpoints.save_best(step, state, dice)
      logging.info(
        "Step %d: validation Dice %.4f (%s)%s",
        step,
        dice,
        ", ".join(f"{names[k]} {float(scores['dice'][k]):.3f}" for k in range(1, len(names))),
        ", new best" if best else "",
      )
    if save_now:
      checkpoints.save(step, state)
    progress.check()  # Ctrl-C: stop here, with every checkpoint written.
  progress.restore_ctrl_c()
  writer.flush()
  if profile is not None:
    profile.close()

  progress.step, progress.evaluating = num_steps, True
  results = evaluate.evaluate_checkpoint(exp, checkpoints, config.eval.checkpoint)
  checkpoints.close()
  writer.close()
  return results


INIT_FROM_RECORD = "init_from.json"


def source_variables(config: ml_collections.ConfigDict, source: pathlib.Path) -> tuple[dict[str, Any], int]:
  """({'params', 'batch_stats'} as host arrays, step) of checkpoint `config.train.init_from_checkpoint` of the
  trained workdir `source`, restored with the config it was trained with (its config.json), as evaluation does.

  Raises:
    ConfigError: `source` is not a directory.
    CheckpointError: it has no config.json or no such checkpoint, or the checkpoint is unreadable.
  """
  from jaxseg import ensemble  # pylint: disable=g-import-not-at-top  (evaluation restores members the same way)

  key = f"config.train.init_from={source}"
  if not source.is_dir():
    raise ConfigError(f"{key}: not a directory; give the workdir of a trained jaxseg run")
  try:
    source_config = ensemble.trained_config(source, config)
    source_config.train.init_from = ""  # Its own initialisation is in its checkpoint already.
    source_exp = experiment.setup(source_config, source)
    checkpoints = checkpointing.Checkpoints(source, read_only=True)
    try:
      state, step = experiment.restore_state(source_exp, checkpoints, config.train.init_from_checkpoint)
    finally:
      checkpoints.close()
  except CheckpointError as e:
    raise CheckpointError(f"{key}: {e}") from e
  return parallel.host_copy({"params": state.params, "batch_stats": state.batch_stats}), step


def init_from_workdir(exp: experiment.Experiment, state: state_lib.TrainState) -> state_lib.TrainState:
  """The fresh host-side `state` initialised from `config.train.init_from` (transfer learning).

  Copies every params / batch_stats array whose name and shape match (`state_lib.init_from_variables`),
  logs how many were copied and names the kept ones, and records both in `<workdir>/init_from.json`.

  Raises:
    ConfigError: the source is this run's own workdir, or no array matches.
    CheckpointError: see `source_variables`.
  """
  config = exp.config
  source = pathlib.Path(config.train.init_from).expanduser()
  if isinstance(exp.workdir, pathlib.Path) and source.resolve() == exp.workdir.resolve():
    raise ConfigError(f"config.train.init_from={source} is this run's own workdir; rerunning there resumes it")
  variables, step = source_variables(config, source)
  exclude = config_lib.split_names(config.train.init_from_exclude)
  state, record = state_lib.init_from_variables(state, variables, exp.tx, f"config.train.init_from={source}", exclude)
  logging.info(
    "Initialised from %s (checkpoint step %d): copied %d arrays, kept the new initialisation of %d%s",
    source,
    step,
    record["num_copied"],
    record["num_kept"],
    f": {'; '.join(record['kept'])}" if record["kept"] else "",
  )
  if jax.process_index() == 0:
    paths.write_text_atomic(
      exp.workdir / INIT_FROM_RECORD,
      json.dumps(
        {
          "workdir": str(source.resolve()),
          "checkpoint": str(config.train.init_from_checkpoint),
          "step": step,
          "exclude": list(exclude),
          **record,
        },
        indent=2,
      ),
    )
  return state


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) else value
  return flat
