"""Pure training and evaluation steps (no I/O; jitted with shardings by train.py)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxseg import losses, metrics
from jaxseg.state import TrainState

Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def main_output(outputs: jax.Array | Sequence[jax.Array]) -> jax.Array:
  """The full-resolution logits of a model's train-mode output(s)."""
  return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def segmentation_forward(model: nn.Module, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
                         loss_fn: losses.LossFn, weights: Sequence[float]):
  """Train-mode forward pass and loss. Returns (loss, (outputs, new_batch_stats))."""
  outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                 mutable=["batch_stats"], rngs={"dropout": rng})
  loss = losses.multi_output_loss(loss_fn, outputs, batch["label"], weights)
  return loss, (outputs, updates.get("batch_stats", batch_stats))


def step_metrics(loss: jax.Array, grads: Any, logits: jax.Array, labels: jax.Array,
                 learning_rate: jax.Array) -> dict[str, jax.Array]:
  num_classes = logits.shape[-1]
  return {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": learning_rate,
      "counts": metrics.confusion_counts(jnp.argmax(logits, -1), labels, num_classes),
  }


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    loss_name: str, weights: Sequence[float]) -> StepFn:
  """Builds `train_step(state, batch) -> (state, metrics)`.

  `batch` holds `image` `[B, *spatial, C]` float32 and `label` `[B, *spatial]`
  int32. Metrics: `loss`, `grad_norm`, `learning_rate` (scalars) and `counts`
  (`[K, 4]` TP/FP/FN/TN of the batch's argmax prediction).
  """
  loss_fn = losses.LOSSES[loss_name]
  weights = tuple(weights)

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(segmentation_forward, argnums=1, has_aux=True)
    (loss, (outputs, batch_stats)), grads = grad_fn(model, state.params, state.batch_stats, batch, rng,
                                                    loss_fn, weights)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, step_metrics(loss, grads, main_output(outputs), batch["label"], schedule(state.step))

  return train_step


def make_predict_fn(model: nn.Module) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """Builds `predict(params, batch_stats, images) -> logits` (eval mode, float32)."""

  def predict(params, batch_stats, images):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    return logits.astype(jnp.float32)

  return predict
