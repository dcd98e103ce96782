"""Pure step functions: the train steps (plain, adversarial) and the eval-mode forward pass; no I/O.

- `make_train_step`: one optimiser update of the segmenter; `make_adversarial_train_step`: the
  segmenter and the discriminator of `state.adversary` (`jaxseg.state.AdversaryState`) together.
  `train.py` jits them with the state's shardings and donates the state.
- `make_predict_fn`: `predict(params, batch_stats, images) -> logits` in eval mode, what evaluation,
  validation and prediction run on every window (`Experiment.forward` jits it; `jaxseg.inference`
  tiles whole images with it). There is no separate evaluation step: evaluation scores whole cases on
  the host (`jaxseg.evaluate`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxseg import losses, metrics
from jaxseg.state import AdversaryState, TrainState

Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
# `batch_fn(inputs, step) -> batch`: builds the training batch inside the step from what the host passed
# (device augmentation of host crops, or patches sampled from a device-resident cache); None: use it as is.
BatchFn = Callable[[Any, jax.Array], Batch]


def main_output(outputs: jax.Array | Sequence[jax.Array]) -> jax.Array:
  """The full-resolution logits of a model's train-mode output(s)."""
  return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def segmentation_forward(
  model: nn.Module,
  params: Any,
  batch_stats: Any,
  batch: Batch,
  rng: jax.Array,
  loss_fn: losses.LossFn,
  weights: Sequence[float],
):
  """Train-mode forward pass and loss. Returns (loss, (outputs, new_batch_stats))."""
  outputs, updates = model.apply(
    {"params": params, "batch_stats": batch_stats},
    batch["image"],
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": rng},
  )
  loss = losses.multi_output_loss(loss_fn, outputs, batch["label"], weights)
  return loss, (outputs, updates.get("batch_stats", batch_stats))


def step_metrics(
  loss: jax.Array, grads: Any, logits: jax.Array, labels: jax.Array, learning_rate: jax.Array
) -> dict[str, jax.Array]:
  num_classes = logits.shape[-1]
  return {
    "loss": loss,
    "grad_norm": optax.global_norm(grads),
    "learning_rate": learning_rate,
    "counts": metrics.confusion_counts(jnp.argmax(logits, -1), labels, num_classes),
  }


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  loss_name: str,
  weights: Sequence[float],
  batch_fn: BatchFn | None = None,
) -> StepFn:
  """Builds `train_step(state, batch) -> (state, metrics)`.

  `batch` holds `image` `[B, *spatial, C]` float32 and `label` `[B, *spatial]`
  int32, or, with `batch_fn`, whatever `batch_fn(batch, state.step)` turns into
  that before the forward pass (`jaxseg.data.device_augment`,
  `jaxseg.data.device_cache`). Metrics: `loss`, `grad_norm`, `learning_rate`
  (scalars) and `counts` (`[K, 4]` TP/FP/FN/TN of the batch's argmax prediction).
  """
  loss_fn = losses.LOSSES[loss_name]
  weights = tuple(weights)

  def train_step(state: TrainState, batch: Batch):
    if batch_fn is not None:
      batch = batch_fn(batch, state.step)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(segmentation_forward, argnums=1, has_aux=True)
    (loss, (outputs, batch_stats)), grads = grad_fn(
      model, state.params, state.batch_stats, batch, rng, loss_fn, weights
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
    )
    return new_state, step_metrics(loss, grads, main_output(outputs), batch["label"], schedule(state.step))

  return train_step


def make_adversarial_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  loss_name: str,
  weights: Sequence[float],
  discriminator: nn.Module,
  disc_tx: optax.GradientTransformation,
  *,
  adversarial_weight: float,
  warmup_steps: int,
  disc_every_steps: int,
  label_smoothing: float,
  batch_fn: BatchFn | None = None,
) -> StepFn:
  """Builds `train_step(state, batch) -> (state, metrics)` updating the segmenter and the discriminator.

  `state.adversary` holds the discriminator (`create_train_state` with
  `config.adversarial.enabled`); `batch` and `batch_fn` are as for `make_train_step`. Both
  networks step from the state before this step (simultaneous updates); with
  t = `state.step` (a traced value: the step compiles once):

  - segmenter: one `tx` step on `seg_loss + lambda_t * adv_loss`, where
    `adv_loss = mean(-log sigmoid(D(image, softmax(logits))))` is the
    non-saturating adversarial loss through the discriminator D (whose
    parameters this gradient does not change) and `lambda_t` is
    `adversarial_weight` from t = `warmup_steps` on, 0 before. With
    `lambda_t = 0` the update is exactly `make_train_step`'s.
  - discriminator, when t % `disc_every_steps` == 0: one `disc_tx` step on
    `losses.discriminator_loss` with real = one-hot labels (target
    1 - `label_smoothing`) and fake = the segmenter's softmax with gradients
    stopped; it is trained during the warm-up as well.

  Deep-supervision / auxiliary-head models are judged by the discriminator on
  their full-resolution output (`main_output`). Metrics: those of
  `make_train_step` (`loss` is the segmenter's whole objective) plus
  `segmentation_loss`, `adversarial_loss` (unweighted), `adversarial_weight`
  (`lambda_t`), `disc_loss` and `disc_accuracy_real` / `disc_accuracy_fake`
  (share of patch logits on the right side of 0), all of D before this step.
  """
  loss_fn = losses.LOSSES[loss_name]
  weights = tuple(weights)

  def segmenter_objective(params, state: TrainState, batch: Batch, rng: jax.Array, adv_weight: jax.Array):
    seg_loss, (outputs, batch_stats) = segmentation_forward(
      model, params, state.batch_stats, batch, rng, loss_fn, weights
    )
    probs = jax.nn.softmax(main_output(outputs).astype(jnp.float32), axis=-1)
    adversary = state.adversary
    fake_logits = discriminator.apply(
      {"params": adversary.params, "batch_stats": adversary.batch_stats}, batch["image"], probs
    )
    adv_loss = losses.generator_adversarial_loss(fake_logits)
    return seg_loss + adv_weight * adv_loss, (seg_loss, adv_loss, probs, outputs, batch_stats)

  def discriminator_objective(disc_params, disc_batch_stats, image, real, fake, update_stats: bool):
    """Real and fake in one batch `[2B, ...]`: D has no batch-coupled layers, so this equals two calls."""
    logits, updates = discriminator.apply(
      {"params": disc_params, "batch_stats": disc_batch_stats},
      jnp.concatenate([image, image]),
      jnp.concatenate([real, fake]),
      update_stats=update_stats,
      mutable=["batch_stats"],
    )
    real_logits, fake_logits = jnp.split(logits, 2)
    loss = losses.discriminator_loss(real_logits, fake_logits, label_smoothing=label_smoothing)
    return loss, (real_logits, fake_logits, updates.get("batch_stats", disc_batch_stats))

  def train_step(state: TrainState, batch: Batch):
    if batch_fn is not None:
      batch = batch_fn(batch, state.step)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    adv_weight = jnp.where(state.step >= warmup_steps, adversarial_weight, 0.0).astype(jnp.float32)
    grad_fn = jax.value_and_grad(segmenter_objective, has_aux=True)
    (loss, (seg_loss, adv_loss, probs, outputs, batch_stats)), grads = grad_fn(
      state.params, state, batch, rng, adv_weight
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)

    real = jax.nn.one_hot(batch["label"], probs.shape[-1], dtype=jnp.float32)
    fake = jax.lax.stop_gradient(probs)

    def update_discriminator():
      adversary = state.adversary
      disc_grad_fn = jax.value_and_grad(discriminator_objective, has_aux=True)
      (disc_loss, (real_logits, fake_logits, disc_batch_stats)), disc_grads = disc_grad_fn(
        adversary.params, adversary.batch_stats, batch["image"], real, fake, True
      )
      disc_updates, disc_opt_state = disc_tx.update(disc_grads, adversary.opt_state, adversary.params)
      updated = AdversaryState(
        params=optax.apply_updates(adversary.params, disc_updates),
        batch_stats=disc_batch_stats,
        opt_state=disc_opt_state,
      )
      return updated, disc_loss, real_logits, fake_logits

    def keep_discriminator():
      adversary = state.adversary
      disc_loss, (real_logits, fake_logits, _) = discriminator_objective(
        adversary.params, adversary.batch_stats, batch["image"], real, fake, False
      )
      return adversary, disc_loss, real_logits, fake_logits

    adversary, disc_loss, real_logits, fake_logits = jax.lax.cond(
      state.step % disc_every_steps == 0, update_discriminator, keep_discriminator
    )
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
      adversary=adversary,
    )
    logged = step_metrics(loss, grads, main_output(outputs), batch["label"], schedule(state.step))
    logged.update(
      segmentation_loss=seg_loss,
      adversarial_loss=adv_loss,
      adversarial_weight=adv_weight,
      disc_loss=disc_loss,
      disc_accuracy_real=jnp.mean(real_logits > 0, dtype=jnp.float32),
      disc_accuracy_fake=jnp.mean(fake_logits < 0, dtype=jnp.float32),
    )
    return new_state, logged

  return train_step


def make_predict_fn(model: nn.Module) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """Builds `predict(params, batch_stats, images) -> logits` (eval mode, float32)."""

  def predict(params, batch_stats, images):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    return logits.astype(jnp.float32)

  return predict
