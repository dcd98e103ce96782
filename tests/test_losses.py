"""Losses against hand computation (float64 numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def example():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 3, 4)).astype(np.int32)
  return logits, labels


def test_cross_entropy_matches_numpy(example):
  logits, labels = example
  p = _softmax(logits.astype(np.float64))
  expected = -np.log(np.take_along_axis(p, labels[..., None], -1)).mean()
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)


def test_cross_entropy_gradient_matches_numpy(example):
  """d CE / d logits = (softmax - one-hot) / number of voxels, float64 by hand."""
  logits, labels = example
  expected = (_softmax(logits.astype(np.float64)) - np.eye(3)[labels]) / labels.size
  grad = jax.grad(losses.cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["ce", "focal", "dice_ce"])
def test_loss_gradients_compile_without_gather_or_scatter(name):
  """The label's value is picked by a one-hot product: a gather's gradient would be a scatter of constants that
  XLA folds at compile time (30 s for a 2 x 128^3 batch)."""
  logits = jax.ShapeDtypeStruct((2, 8, 8, 8, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((2, 8, 8, 8), jnp.int32)
  hlo = jax.jit(jax.grad(losses.LOSSES[name])).lower(logits, labels).as_text()
  assert "gather" not in hlo and "scatter" not in hlo


def test_soft_dice_is_batch_dice_over_foreground(example):
  logits, labels = example
  p = _softmax(logits.astype(np.float64))
  y = np.eye(3)[labels]
  dice = [(2 * (p[..., k] * y[..., k]).sum() + 1e-5) / (p[..., k].sum() + y[..., k].sum() + 1e-5) for k in (1, 2)]
  np.testing.assert_allclose(
    losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels)), 1 - np.mean(dice), rtol=1e-5
  )


def test_perfect_prediction_has_near_zero_dice_loss():
  labels = np.array([[0, 1, 2, 2]], np.int32)
  logits = 50.0 * np.eye(3, dtype=np.float32)[labels]
  assert float(losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))) < 1e-6
  assert float(losses.dice_ce(jnp.asarray(logits), jnp.asarray(labels))) < 1e-6


def test_focal_loss_with_gamma_zero_is_cross_entropy(example):
  logits, labels = example
  np.testing.assert_allclose(
    losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=0.0),
    losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
    rtol=1e-6,
  )


def test_focal_loss_down_weights_easy_voxels():
  labels = np.array([[0, 1]], np.int32)
  logits = np.array([[[4.0, 0.0], [0.0, 0.1]]], np.float32)  # An easy and a hard voxel.
  p_t = _softmax(logits.astype(np.float64))[0, [0, 1], [0, 1]]
  expected = np.mean(-((1 - p_t) ** 2) * np.log(p_t))
  np.testing.assert_allclose(losses.focal_loss(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)


def test_resize_labels_nearest_takes_strided_voxels():
  labels = jnp.arange(16).reshape(1, 4, 4)
  np.testing.assert_array_equal(losses.resize_labels_nearest(labels, (2, 2)), [[[0, 2], [8, 10]]])
  np.testing.assert_array_equal(losses.resize_labels_nearest(labels, (4, 4)), labels)


def test_multi_output_loss_weights_each_resolution(example):
  logits, labels = example
  full = jnp.asarray(logits)
  half = jnp.asarray(logits[:, ::2, ::2])
  expected = 0.75 * losses.dice_ce(full, labels) + 0.25 * losses.dice_ce(half, jnp.asarray(labels[:, ::2, ::2]))
  got = losses.multi_output_loss(losses.dice_ce, [full, half], jnp.asarray(labels), [0.75, 0.25])
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="2 model outputs but 1 loss weights"):
    losses.multi_output_loss(losses.dice_ce, [full, half], jnp.asarray(labels), [1.0])


def test_losses_are_differentiable(example):
  logits, labels = example
  for name, fn in losses.LOSSES.items():
    grad = jax.grad(lambda x, f=fn: f(x, jnp.asarray(labels)))(jnp.asarray(logits))
    assert np.all(np.isfinite(grad)), name


def _bce(x, t):
  """Binary cross-entropy with the sigmoid written out, float64."""
  s = 1.0 / (1.0 + np.exp(-x))
  return -(t * np.log(s) + (1 - t) * np.log(1 - s))


def test_discriminator_loss_matches_hand_computation():
  real = np.array([[2.0, -1.0], [0.5, 3.0]], np.float32)
  fake = np.array([[-2.0, 0.25], [1.0, -0.5]], np.float32)
  expected = 0.5 * (_bce(real.astype(np.float64), 0.9).mean() + _bce(fake.astype(np.float64), 0.0).mean())
  np.testing.assert_allclose(
    losses.discriminator_loss(jnp.asarray(real), jnp.asarray(fake), label_smoothing=0.1), expected, rtol=1e-6
  )


def test_generator_adversarial_loss_is_non_saturating():
  fake = np.array([-8.0, -1.0, 0.0, 3.0], np.float32)
  np.testing.assert_allclose(
    losses.generator_adversarial_loss(jnp.asarray(fake)), _bce(fake.astype(np.float64), 1.0).mean(), rtol=1e-6
  )
  # Where the discriminator confidently rejects a fake (logit -8), the gradient of -log s(x) stays near
  # -1 per element, while that of the saturating log(1 - s(x)) would vanish (-s(-8) = -3e-4).
  grad = jax.grad(lambda x: losses.generator_adversarial_loss(x) * x.size)(jnp.asarray(fake))
  np.testing.assert_allclose(grad, -1.0 / (1.0 + np.exp(fake.astype(np.float64))), rtol=1e-5)
  assert grad[0] < -0.99
