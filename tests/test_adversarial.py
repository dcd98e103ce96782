"""Adversarial training: discriminator, the two-network step, its state, checkpoints and the train switch.

The step tests share one compiled adversarial step (a tiny segmenter, SGD with
momentum for both networks so updates can be written out by hand) run for
three steps: t=0 in the warm-up (lambda_t = 0) with a discriminator update,
t=1 with the adversarial term and no discriminator update, t=2 with both.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import checkpointing, experiment, state as state_lib, steps, train, writers
from jaxseg.config import base_config, validate
from jaxseg.errors import ConfigError
from jaxseg.models import discriminator as discriminator_lib

NUM_CLASSES = 3
CHANNELS = 2
SPATIAL = (16, 16)
INPUT_SHAPE = (1, *SPATIAL, CHANNELS)
OUTPUT_WEIGHTS = (0.75, 0.25)
LEARNING_RATE = 0.1


class TinySegmenter(nn.Module):
  """Conv, batch norm, dropout, 1x1 conv; train mode returns deep-supervision style `[full, half]` logits."""

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    h = nn.Dropout(0.2, deterministic=not train)(h)
    logits = nn.Conv(NUM_CLASSES, (1, 1))(h)
    return [logits, logits[:, ::2, ::2]] if train else logits


def adversarial_config(**overrides):
  config = base_config()
  config.model.num_classes = NUM_CLASSES
  config.data.patch_size = SPATIAL
  config.adversarial.update(
    enabled=True,
    features=4,
    num_layers=2,
    weight=0.5,
    warmup_steps=1,
    disc_every_steps=2,
    spectral_norm=True,
    label_smoothing=0.1,
  )
  config.adversarial.update(**overrides)
  return config


def sgd():
  return optax.sgd(LEARNING_RATE, momentum=0.9)


def create_state(config, model, tx, disc_tx=None):
  """A state committed to the first device, as restored checkpoints are (so the step compiles once)."""
  create = functools.partial(
    state_lib.create_train_state,
    config,
    model,
    tx,
    INPUT_SHAPE,
    experiment.create_discriminator(config.adversarial),
    disc_tx,
  )
  with jax.threefry_partitionable(False):  # As experiment.init_state: compiles several times faster on CPU.
    return jax.device_put(jax.jit(create)(), jax.devices()[0])


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b):
  """Equal to float32 rounding (a few ulp): for two programs that XLA fuses differently."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)


def trees_differ(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def run():
  """Three adversarial steps and, from each state, the plain step."""
  config = adversarial_config()
  model, tx, disc_tx = TinySegmenter(), sgd(), sgd()
  schedule = optax.constant_schedule(LEARNING_RATE)
  adv = config.adversarial
  step = jax.jit(
    steps.make_adversarial_train_step(
      model,
      tx,
      schedule,
      "dice_ce",
      OUTPUT_WEIGHTS,
      experiment.create_discriminator(adv),
      disc_tx,
      adversarial_weight=adv.weight,
      warmup_steps=adv.warmup_steps,
      disc_every_steps=adv.disc_every_steps,
      label_smoothing=adv.label_smoothing,
    )
  )
  plain_step = jax.jit(steps.make_train_step(model, tx, schedule, "dice_ce", OUTPUT_WEIGHTS))
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(2, *SPATIAL, CHANNELS)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (2, *SPATIAL)), jnp.int32),
  }
  states, metrics, plain = [create_state(config, model, tx, disc_tx)], [], []
  for _ in range(3):
    plain.append(plain_step(states[-1], batch))
    new_state, step_metrics = step(states[-1], batch)
    states.append(new_state)
    metrics.append(step_metrics)
  return dict(config=config, model=model, tx=tx, step=step, batch=batch, states=states, metrics=metrics, plain=plain)


# Discriminator.


def test_discriminator_input_forms_match_hand_computation():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(1, 2, 3, 2)).astype(np.float32)
  labels = rng.random(size=(1, 2, 3, 3)).astype(np.float32)
  product = np.asarray(discriminator_lib.discriminator_input(image, labels, "product"))
  assert product.shape == (1, 2, 3, 6)
  for c in range(2):
    for k in range(3):
      np.testing.assert_allclose(product[..., c * 3 + k], image[..., c] * labels[..., k], rtol=1e-6)
  concat = np.asarray(discriminator_lib.discriminator_input(image, labels, "concat"))
  np.testing.assert_array_equal(concat, np.concatenate([image, labels], -1))
  with pytest.raises(ValueError, match="differ in batch or spatial shape"):
    discriminator_lib.discriminator_input(image, labels[:, :1], "concat")


@pytest.mark.parametrize(
  "spatial,form,spectral_norm,in_channels",
  [
    ((16, 24), "product", False, CHANNELS * NUM_CLASSES),
    ((16, 24), "concat", True, CHANNELS + NUM_CLASSES),
    ((8, 16, 12), "product", True, CHANNELS * NUM_CLASSES),
    ((8, 16, 12), "concat", False, CHANNELS + NUM_CLASSES),
  ],
)
def test_discriminator_output_shapes(spatial, form, spectral_norm, in_channels):
  disc = discriminator_lib.PatchDiscriminator(features=4, num_layers=2, input_form=form, spectral_norm=spectral_norm)
  image = jax.ShapeDtypeStruct((3, *spatial, CHANNELS), jnp.float32)
  label_map = jax.ShapeDtypeStruct((3, *spatial, NUM_CLASSES), jnp.float32)
  variables = jax.eval_shape(disc.init, jax.random.key(0), image, label_map)
  assert jax.eval_shape(disc.apply, variables, image, label_map).shape == (3, *(s // 4 for s in spatial), 1)
  ndim = len(spatial)
  params = variables["params"]
  assert params["conv0"]["kernel"].shape == (4,) * ndim + (in_channels, 4)
  assert params["conv1"]["kernel"].shape == (4,) * ndim + (4, 8)
  assert params["logits"]["kernel"].shape == (3,) * ndim + (8, 1)
  assert ("norm1" in params) == (not spectral_norm)
  assert sorted(variables.get("batch_stats", {})) == (["conv0_sn", "conv1_sn", "logits_sn"] if spectral_norm else [])


def test_spectral_norm_estimates_largest_singular_value(run):
  disc = experiment.create_discriminator(run["config"].adversarial)
  params, image = run["states"][0].adversary.params, run["batch"]["image"]
  label_map = jax.nn.one_hot(run["batch"]["label"], NUM_CLASSES)

  @jax.jit
  def power_iterations(batch_stats):
    def body(_, stats):
      _, updates = disc.apply(
        {"params": params, "batch_stats": stats}, image, label_map, update_stats=True, mutable=["batch_stats"]
      )
      return updates["batch_stats"]

    return jax.lax.fori_loop(0, 50, body, batch_stats)

  batch_stats = power_iterations(run["states"][0].adversary.batch_stats)
  for name in ("conv0", "conv1"):
    kernel = np.asarray(params[name]["kernel"], np.float64)
    sigma = float(batch_stats[f"{name}_sn"][f"{name}/kernel/sigma"])
    np.testing.assert_allclose(sigma, np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]))[1][0], rtol=1e-3)


# Train state and config.


def test_discriminator_only_when_enabled_and_segmenter_unchanged(run):
  plain = create_state(adversarial_config(enabled=False), run["model"], run["tx"])
  assert plain.adversary is None
  adv = run["states"][0]
  assert_trees_equal(
    (plain.step, plain.params, plain.batch_stats, plain.opt_state, plain.rng),
    (adv.step, adv.params, adv.batch_stats, adv.opt_state, adv.rng),
  )
  assert adv.adversary.params["conv0"]["kernel"].shape == (4, 4, CHANNELS * NUM_CLASSES, 4)
  assert jax.tree.leaves(adv.adversary.batch_stats) and jax.tree.leaves(adv.adversary.opt_state)


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("input", "sum", "config.adversarial.input='sum': unknown input form"),
    ("num_layers", 0, "config.adversarial.num_layers=0: must be an integer >= 1"),
    ("disc_every_steps", 0, "config.adversarial.disc_every_steps=0: must be an integer >= 1"),
    ("label_smoothing", 1.0, "config.adversarial.label_smoothing=1.0: must be in \\[0, 1\\)"),
    ("weight", -0.1, "config.adversarial.weight=-0.1: must be >= 0"),
    ("num_layers", 5, "config.data.patch_size=\\(16, 16\\) is smaller than the 32 voxels"),
  ],
)
def test_bad_adversarial_config_names_the_key(key, value, message):
  with pytest.raises(ConfigError, match=message):
    validate(adversarial_config(**{key: value}))


# The adversarial step.


def test_step_is_the_hand_computed_update_of_both_networks(run):
  """t=2 (adversarial term on, discriminator updated): both updates follow objectives written out here."""
  t, config, model, batch = 2, run["config"], run["model"], run["batch"]
  state, new_state, step_metrics = run["states"][t], run["states"][t + 1], run["metrics"][t]
  disc = experiment.create_discriminator(config.adversarial)
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), t)
  onehot = jax.nn.one_hot(batch["label"], NUM_CLASSES)

  def forward(params):
    outputs, _ = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    return outputs

  def d(params, label_map):
    return disc.apply({"params": params, "batch_stats": state.adversary.batch_stats}, batch["image"], label_map)

  def dice_ce(logits, y):
    log_p = jax.nn.log_softmax(logits)
    p = jnp.exp(log_p)
    dice = [
      (2 * jnp.sum(p[..., k] * y[..., k]) + 1e-5) / (jnp.sum(p[..., k]) + jnp.sum(y[..., k]) + 1e-5)
      for k in range(1, NUM_CLASSES)
    ]
    return -jnp.mean(jnp.sum(y * log_p, -1)) + 1 - sum(dice) / len(dice)

  def segmenter_objective(params):
    full, half = forward(params)
    adversarial = jnp.mean(jnp.logaddexp(0.0, -d(state.adversary.params, jax.nn.softmax(full))))  # -log sigmoid.
    return 0.75 * dice_ce(full, onehot) + 0.25 * dice_ce(half, onehot[:, ::2, ::2]) + 0.5 * adversarial

  def disc_objective(params):
    bce = lambda x, target: jnp.mean(jnp.logaddexp(0.0, x) - target * x)
    real_logits, fake_logits = d(params, onehot), d(params, jax.nn.softmax(forward(state.params)[0]))
    return 0.5 * (bce(real_logits, 0.9) + bce(fake_logits, 0.0)), (real_logits, fake_logits)

  loss, grads = jax.jit(jax.value_and_grad(segmenter_objective))(state.params)
  (disc_loss, (real_logits, fake_logits)), disc_grads = jax.jit(jax.value_and_grad(disc_objective, has_aux=True))(
    state.adversary.params
  )
  for new, old, opt_state, g in (
    (new_state.params, state.params, state.opt_state, grads),
    (new_state.adversary.params, state.adversary.params, state.adversary.opt_state, disc_grads),
  ):
    expected = optax.apply_updates(old, sgd().update(g, opt_state, old)[0])
    assert trees_differ(new, old)
    jax.tree.map(lambda n, e: np.testing.assert_allclose(n, e, rtol=1e-4, atol=1e-6), new, expected)
  np.testing.assert_allclose(step_metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(step_metrics["disc_loss"], disc_loss, rtol=1e-5)
  np.testing.assert_allclose(
    step_metrics["loss"], step_metrics["segmentation_loss"] + 0.5 * step_metrics["adversarial_loss"], rtol=1e-6
  )
  np.testing.assert_allclose(step_metrics["disc_accuracy_real"], np.mean(real_logits > 0), atol=1e-6)
  np.testing.assert_allclose(step_metrics["disc_accuracy_fake"], np.mean(fake_logits < 0), atol=1e-6)


def test_with_lambda_zero_the_segmenter_update_is_the_plain_step(run):
  """t=0 is in the warm-up (lambda_t = 0, as at every step with `adversarial.weight=0`). Equal to float32
  rounding: the adversarial program also feeds the softmax to the discriminator, and XLA fuses the loss
  differently there (2-3 ulp in some parameters after one step)."""
  (plain_state, plain_metrics), adv_state, adv_metrics = run["plain"][0], run["states"][1], run["metrics"][0]
  assert float(adv_metrics["adversarial_weight"]) == 0.0
  assert int(adv_state.step) == int(plain_state.step)
  assert_trees_close(
    (adv_state.params, adv_state.batch_stats, adv_state.opt_state),
    (plain_state.params, plain_state.batch_stats, plain_state.opt_state),
  )
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(adv_metrics[name], plain_metrics[name], rtol=1e-6)
  np.testing.assert_array_equal(adv_metrics["counts"], plain_metrics["counts"])
  assert trees_differ(run["states"][1].adversary.params, run["states"][0].adversary.params)  # D learnt.
  assert trees_differ(run["states"][2].params, run["plain"][1][0].params)  # From t=1 lambda_t > 0.


def test_warmup_and_update_ratio_follow_the_step_without_recompiling(run):
  states = run["states"]
  assert [float(m["adversarial_weight"]) for m in run["metrics"]] == [0.0, 0.5, 0.5]
  for t, updated in enumerate([True, False, True]):  # disc_every_steps=2.
    before, after = states[t], states[t + 1]
    parts = lambda s: (s.adversary.params, s.adversary.batch_stats, s.adversary.opt_state)
    if updated:
      assert trees_differ(parts(after)[0], parts(before)[0]) and trees_differ(parts(after)[1], parts(before)[1])
    else:
      assert_trees_equal(parts(after), parts(before))
  assert [int(s.step) for s in states] == [0, 1, 2, 3]
  assert run["step"]._cache_size() == 1  # pylint: disable=protected-access


def test_checkpoint_restores_both_networks_and_training_continues_identically(run, tmp_path):
  states = run["states"]
  checkpoints = checkpointing.Checkpoints(tmp_path)
  checkpoints.save(1, states[1])
  checkpoints.close()
  abstract = jax.eval_shape(
    functools.partial(
      state_lib.create_train_state,
      run["config"],
      run["model"],
      run["tx"],
      INPUT_SHAPE,
      experiment.create_discriminator(run["config"].adversarial),
      sgd(),
    )
  )
  checkpoints = checkpointing.Checkpoints(tmp_path, read_only=True)
  restored, step = checkpoints.restore(abstract, "latest")
  checkpoints.close()
  assert step == 1
  assert_trees_equal(restored, states[1])
  assert_trees_equal(run["step"](restored, run["batch"])[0], states[2])
  assert run["step"]._cache_size() == 1  # pylint: disable=protected-access


# The switch in train.py, end to end (a tiny U-Net on a tiny phantom).


@pytest.fixture
def tiny_train_config(phantom_config):
  """`tiny_train_config(data_dir)`: the tiny phantom config (64 x 64 patches) with a tiny discriminator."""

  def make(data_dir):
    return phantom_config(
      data_dir,
      data={"patch_size": (64, 64)},
      train={"eval_every_steps": 4},
      eval={"checkpoint": "latest"},
      adversarial=dict(enabled=True, warmup_steps=1, weight=0.1, features=4, num_layers=2),
    )

  return make


def scalar_tags(workdir):
  return set(writers.read_scalars(workdir))


@pytest.mark.slow  # Three short runs with evaluation: about 80 s of CPU time (6 minutes on 2 loaded cores).
def test_adversarial_training_logs_and_resumes_both_networks(
  tmp_path, tiny_train_config, interrupt_training, restore_latest
):
  config = tiny_train_config(tmp_path / "data")
  reference = train.train_and_evaluate(config, tmp_path / "uninterrupted")
  assert {
    "train/disc_loss",
    "train/disc_accuracy_real",
    "train/disc_accuracy_fake",
    "train/adversarial_loss",
    "train/adversarial_weight",
    "train/segmentation_loss",
  } <= scalar_tags(tmp_path / "uninterrupted")
  assert json.loads((tmp_path / "uninterrupted" / "config.json").read_text())["adversarial"]["enabled"]

  interrupt_training(config, tmp_path / "resumed", after_batches=3)  # Step 3 is computed but never checkpointed.
  assert train.train_and_evaluate(config, tmp_path / "resumed") == reference

  restored = [restore_latest(config, tmp_path / name)[0] for name in ("uninterrupted", "resumed")]
  assert int(restored[0].step) == 4
  assert jax.tree.leaves(restored[0].adversary.params)
  assert_trees_equal(restored[0], restored[1])
