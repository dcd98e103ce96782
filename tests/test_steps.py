"""jaxseg.steps on a tiny model: the plain step is the hand-rolled optax update, training lowers the loss
on a fixed batch, `batch_fn` builds the batch inside the step, the adversarial step updates the
discriminator only when scheduled, and the predict function is the eval-mode forward pass.

(tests/test_adversarial.py writes out both networks' updates of the adversarial step by hand.)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import experiment, metrics, state as state_lib, steps
from jaxseg.config import base_config

NUM_CLASSES = 3
SPATIAL = (8, 8)
INPUT_SHAPE = (1, *SPATIAL, 1)
LEARNING_RATE = 0.1


class TinyNet(nn.Module):
  """Conv, batch norm, 1x1 conv."""

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    return nn.Conv(NUM_CLASSES, (1, 1))(h)


def tiny_config(**adversarial):
  config = base_config()
  config.model.num_classes = NUM_CLASSES
  config.data.patch_size = SPATIAL
  config.adversarial.update(features=4, num_layers=2, **adversarial)
  return config


def fixed_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.normal(size=(2, *SPATIAL, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (2, *SPATIAL)), jnp.int32),
  }


def fresh_state(config, tx, discriminator=None, disc_tx=None):
  create = functools.partial(state_lib.create_train_state, config, TinyNet(), tx, INPUT_SHAPE, discriminator, disc_tx)
  with jax.threefry_partitionable(False):
    return jax.jit(create)()


def sgd():
  return optax.sgd(LEARNING_RATE, momentum=0.9)


def test_plain_step_is_the_hand_rolled_optax_update():
  model, tx, batch = TinyNet(), sgd(), fixed_batch()
  schedule = optax.constant_schedule(LEARNING_RATE)
  state = fresh_state(tiny_config(), tx)
  new_state, step_metrics = jax.jit(steps.make_train_step(model, tx, schedule, "ce", (1.0,)))(state, batch)

  def loss_fn(params):  # Mean softmax cross-entropy, written out.
    logits, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    onehot = jax.nn.one_hot(batch["label"], NUM_CLASSES)
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  expected = optax.apply_updates(state.params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.params, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.opt_state, opt_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.batch_stats, batch_stats)
  assert int(new_state.step) == 1 and new_state.adversary is None
  np.testing.assert_array_equal(new_state.rng, state.rng)  # Per-step keys are folded in, the key stays.
  np.testing.assert_allclose(step_metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(step_metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5)
  np.testing.assert_allclose(step_metrics["learning_rate"], LEARNING_RATE)
  np.testing.assert_array_equal(
    step_metrics["counts"], metrics.confusion_counts(jnp.argmax(logits, -1), batch["label"], NUM_CLASSES)
  )


def test_plain_steps_lower_the_loss_on_a_fixed_batch():
  model, tx, batch = TinyNet(), sgd(), fixed_batch()
  batch["label"] = jnp.digitize(batch["image"][..., 0], jnp.array([-0.5, 0.5])).astype(jnp.int32)  # Learnable.
  step = jax.jit(steps.make_train_step(model, tx, optax.constant_schedule(LEARNING_RATE), "dice_ce", (1.0,)))
  state, losses = fresh_state(tiny_config(), tx), []
  for _ in range(8):
    state, step_metrics = step(state, batch)
    losses.append(float(step_metrics["loss"]))
  assert int(state.step) == 8
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


def test_batch_fn_builds_the_batch_inside_the_step():
  model, tx, batch = TinyNet(), sgd(), fixed_batch()
  schedule = optax.constant_schedule(LEARNING_RATE)
  seen_steps = []

  def batch_fn(inputs, step):
    seen_steps.append(step)  # Traced once.
    return {"image": inputs["raw"] * 2.0 + step.astype(jnp.float32), "label": inputs["label"]}

  state = fresh_state(tiny_config(), tx)
  with_fn, _ = jax.jit(steps.make_train_step(model, tx, schedule, "ce", (1.0,), batch_fn))(
    state, {"raw": batch["image"], "label": batch["label"]}
  )
  direct, _ = jax.jit(steps.make_train_step(model, tx, schedule, "ce", (1.0,)))(
    state, {"image": batch["image"] * 2.0, "label": batch["label"]}
  )  # step 0: + 0.
  assert len(seen_steps) == 1
  for a, b in zip(jax.tree.leaves(with_fn), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(a, b)


def test_adversarial_step_updates_the_discriminator_only_when_scheduled():
  config = tiny_config(enabled=True, disc_every_steps=3, warmup_steps=0, weight=0.5, spectral_norm=True)
  model, tx, disc_tx = TinyNet(), sgd(), optax.adam(1e-2)
  discriminator = experiment.create_discriminator(config.adversarial)
  adv = config.adversarial
  step = jax.jit(
    steps.make_adversarial_train_step(
      model,
      tx,
      optax.constant_schedule(LEARNING_RATE),
      "ce",
      (1.0,),
      discriminator,
      disc_tx,
      adversarial_weight=adv.weight,
      warmup_steps=adv.warmup_steps,
      disc_every_steps=adv.disc_every_steps,
      label_smoothing=adv.label_smoothing,
    )
  )
  states, batch = [fresh_state(config, tx, discriminator, disc_tx)], fixed_batch()
  for _ in range(4):
    new_state, step_metrics = step(states[-1], batch)
    assert np.isfinite(step_metrics["disc_loss"])
    states.append(new_state)
  for t, scheduled in enumerate([True, False, False, True]):  # t % 3 == 0.
    before, after = states[t], states[t + 1]
    changed = [
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.adversary), jax.tree.leaves(after.adversary))
    ]
    assert any(changed) == scheduled, t
    assert int(after.adversary.opt_state[0].count) == int(before.adversary.opt_state[0].count) + scheduled
    assert not np.array_equal(after.params["Conv_0"]["kernel"], before.params["Conv_0"]["kernel"])  # Every step.
  assert step._cache_size() == 1  # pylint: disable=protected-access  (the schedule is traced, not recompiled)


def test_adversarial_step_needs_the_adversary():
  config = tiny_config(enabled=True)
  step = steps.make_adversarial_train_step(
    TinyNet(),
    sgd(),
    optax.constant_schedule(LEARNING_RATE),
    "ce",
    (1.0,),
    experiment.create_discriminator(config.adversarial),
    optax.adam(1e-2),
    adversarial_weight=0.5,
    warmup_steps=0,
    disc_every_steps=1,
    label_smoothing=0.0,
  )
  with pytest.raises(AttributeError):
    step(fresh_state(tiny_config(), sgd()), fixed_batch())  # A state built without the switch.


def test_predict_fn_is_the_eval_mode_forward_pass_in_float32():
  model, batch = TinyNet(), fixed_batch()
  state = fresh_state(tiny_config(), sgd())
  state = state.replace(batch_stats=jax.tree.map(lambda x: x + 0.5, state.batch_stats))  # Running stats used.
  logits = jax.jit(steps.make_predict_fn(model))(state.params, state.batch_stats, batch["image"])
  expected = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
  assert logits.dtype == jnp.float32 and logits.shape == (2, *SPATIAL, NUM_CLASSES)
  np.testing.assert_allclose(logits, expected, rtol=1e-6)
