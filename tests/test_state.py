"""jaxseg.state: the fresh train state (shapes, dtypes, seeds), the optional adversary and the pytree layout
that checkpoints rely on."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import experiment, state as state_lib
from jaxseg.config import base_config

INPUT_SHAPE = (1, 8, 8, 2)
NUM_CLASSES = 3


class TinyNet(nn.Module):
  """Conv, batch norm, 1x1 conv: `params` and `batch_stats`."""

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    return nn.Conv(NUM_CLASSES, (1, 1))(h)


def tiny_config(adversarial=False, seed=0):
  config = base_config()
  config.seed = seed
  config.model.num_classes = NUM_CLASSES
  config.data.patch_size = INPUT_SHAPE[1:3]
  config.adversarial.update(enabled=adversarial, features=4, num_layers=2, spectral_norm=True)
  return config


def create(config, tx=None, with_discriminator=True):
  discriminator = disc_tx = None
  if with_discriminator:
    discriminator = experiment.create_discriminator(config.adversarial)
    disc_tx = optax.adam(1e-3)
  fn = functools.partial(
    state_lib.create_train_state, config, TinyNet(), tx or optax.adam(1e-3), INPUT_SHAPE, discriminator, disc_tx
  )
  with jax.threefry_partitionable(False):
    return jax.jit(fn)()


def leaf_names(tree):
  return [
    "/".join(str(getattr(k, "name", getattr(k, "key", k))) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def test_fresh_state_shapes_and_dtypes():
  state = create(tiny_config())
  assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.params["Conv_0"]["kernel"].shape == (3, 3, 2, 4)
  assert state.params["Conv_1"]["kernel"].shape == (1, 1, 4, NUM_CLASSES)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  np.testing.assert_array_equal(state.batch_stats["BatchNorm_0"]["mean"], np.zeros(4))
  np.testing.assert_array_equal(state.batch_stats["BatchNorm_0"]["var"], np.ones(4))
  # The optimiser state is tx.init(params): Adam's moments start at zero, with the params' shapes.
  adam = state.opt_state[0]
  assert int(adam.count) == 0
  assert jax.tree.map(jnp.shape, adam.mu) == jax.tree.map(jnp.shape, state.params)
  assert not any(np.asarray(x).any() for x in jax.tree.leaves((adam.mu, adam.nu)))
  assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)  # Raw threefry key data.
  assert state.adversary is None


def test_same_seed_same_state_other_seed_other_weights():
  a, b, c = create(tiny_config(seed=0)), create(tiny_config(seed=0)), create(tiny_config(seed=1))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.params["Conv_0"]["kernel"], c.params["Conv_0"]["kernel"])
  assert not np.array_equal(a.rng, c.rng)


def test_seed_key_argument_gives_the_config_seed_state_from_one_program():
  """`seed_key=jax.random.key(config.seed)` passed to a jitted call (as `Experiment.init_state` does) gives
  the state of the constant seed, bit for bit, adversary included; the program it compiles is the same for
  every seed, so the persistent cache serves runs that differ only in seed. A seed beyond 32 bits, and the next."""
  seed = 2**40 + 3
  config = tiny_config(adversarial=True, seed=seed)
  discriminator, disc_tx = experiment.create_discriminator(config.adversarial), optax.adam(1e-3)

  def fn(seed_key):
    return state_lib.create_train_state(
      config, TinyNet(), optax.adam(1e-3), INPUT_SHAPE, discriminator, disc_tx, seed_key
    )

  with jax.threefry_partitionable(False):
    programs = {jax.jit(fn).lower(jax.random.key(s)).as_text() for s in (seed, seed + 1)}
    from_keys = [jax.jit(fn)(jax.random.key(s)) for s in (seed, seed + 1)]
  assert len(programs) == 1
  for s, from_key in zip((seed, seed + 1), from_keys):
    expected = create(tiny_config(adversarial=True, seed=s))
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(from_key), strict=True):
      np.testing.assert_array_equal(x, y)


def test_adversary_only_when_enabled_and_the_segmenter_part_is_unchanged():
  plain = create(tiny_config(adversarial=False))  # A discriminator passed without the switch is ignored.
  adv = create(tiny_config(adversarial=True))
  assert plain.adversary is None
  assert isinstance(adv.adversary, state_lib.AdversaryState)
  # Image and label channels multiplied ('product' input): 2 x 3 channels into the first 4x4 convolution.
  assert adv.adversary.params["conv0"]["kernel"].shape == (4, 4, 2 * NUM_CLASSES, 4)
  assert jax.tree.leaves(adv.adversary.batch_stats)  # Spectral norm's power-iteration vectors.
  assert jax.tree.map(jnp.shape, adv.adversary.opt_state[0].mu) == jax.tree.map(jnp.shape, adv.adversary.params)
  for x, y in zip(
    jax.tree.leaves((plain.step, plain.params, plain.batch_stats, plain.opt_state, plain.rng)),
    jax.tree.leaves((adv.step, adv.params, adv.batch_stats, adv.opt_state, adv.rng)),
  ):
    np.testing.assert_array_equal(x, y)


def test_enabled_without_a_discriminator_is_refused():
  with pytest.raises(ValueError, match="needs the discriminator and its optimiser"):
    create(tiny_config(adversarial=True), with_discriminator=False)


def test_pytree_layout_is_the_checkpoint_layout():
  """Checkpoints name arrays by pytree path: the adversary's parts stay the children disc_params,
  disc_batch_stats and disc_opt_state (None, so absent, without a discriminator)."""
  plain, adv = create(tiny_config()), create(tiny_config(adversarial=True))
  names = leaf_names(plain)
  assert names[0] == "step" and names[-1] == "rng"
  assert {n.split("/")[0] for n in names} == {"step", "params", "batch_stats", "opt_state", "rng"}
  adv_names = leaf_names(adv)
  assert adv_names[: len(names)] == names
  assert {n.split("/")[0] for n in adv_names[len(names) :]} == {"disc_params", "disc_batch_stats", "disc_opt_state"}
  assert "disc_params/conv0/kernel" in adv_names
  with_none = jax.tree_util.tree_flatten_with_path(plain, is_leaf=lambda x: x is None)[0]
  assert [path[0].name for path, leaf in with_none if leaf is None and len(path) == 1] == [
    "disc_params",
    "disc_batch_stats",
    "disc_opt_state",
  ]


def test_tree_operations_keep_the_adversary_grouped():
  adv = create(tiny_config(adversarial=True))
  doubled = jax.tree.map(lambda x: x * 2, adv)
  assert isinstance(doubled, state_lib.TrainState) and isinstance(doubled.adversary, state_lib.AdversaryState)
  np.testing.assert_array_equal(
    doubled.adversary.params["conv0"]["kernel"], 2 * adv.adversary.params["conv0"]["kernel"]
  )
  assert jax.tree.map(lambda x: x, create(tiny_config())).adversary is None
  replaced = adv.replace(adversary=None)
  assert replaced.adversary is None and replaced.params is adv.params
  assert len(jax.tree.leaves(replaced)) == len(jax.tree.leaves(adv)) - len(jax.tree.leaves(adv.adversary))
