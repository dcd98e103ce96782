"""Interpretability maps: hand-computed values on linear models, completeness, shapes on the zoo."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import interpret, models
from jaxseg.errors import ConfigError


class LinearSeg(nn.Module):
  """logits = x @ W + b per voxel (a 1x1 convolution): every map has a closed form."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)


class FeatureThenHead(nn.Module):
  """A 3x3 feature layer named `feat`, then a 1x1 head: Grad-CAM at `feat` has a closed form."""

  @nn.compact
  def __call__(self, x, train=False):
    features = nn.Conv(6, (3, 3), name="feat")(nn.relu(x))
    return nn.Conv(3, (1, 1), name="head")(features)


def _init(model, shape, seed=0):
  images = jax.random.normal(jax.random.key(seed + 100), shape)
  return model.init(jax.random.key(seed), images, train=False), images


def _tiny(name, **overrides):
  cfg = models.default_model_config()
  cfg.update(dict(name=name, num_classes=3, features=4, depth=2, max_features=8, norm="batch"), **overrides)
  return models.create_model(cfg)


def test_saliency_of_a_linear_model_is_the_largest_weight_magnitude():
  model = LinearSeg()
  variables, images = _init(model, (2, 8, 8, 4))
  kernel = np.asarray(variables["params"]["head"]["kernel"])[0, 0]  # [C_in, K]
  got = interpret.saliency(model, variables, images, class_index=1, region="all")
  np.testing.assert_allclose(got, np.full((2, 8, 8), np.abs(kernel[:, 1]).max()), rtol=1e-6)
  # With the predicted region, voxels outside it get no gradient.
  mask = np.asarray(jnp.argmax(model.apply(variables, images), -1) == 1)
  got = interpret.saliency(model, variables, images, class_index=1)
  np.testing.assert_allclose(got, np.where(mask, np.abs(kernel[:, 1]).max(), 0.0), rtol=1e-6)


def test_one_compilation_serves_every_class():
  model = LinearSeg(num_classes=4)
  variables, images = _init(model, (1, 5, 7, 2))
  kernel = np.asarray(variables["params"]["head"]["kernel"])[0, 0]
  before = interpret._saliency._cache_size()  # pylint: disable=protected-access
  for k in range(4):  # Each class still gets its own map.
    got = interpret.saliency(model, variables, images, class_index=k, region="all")
    np.testing.assert_allclose(got, np.full((1, 5, 7), np.abs(kernel[:, k]).max()), rtol=1e-6)
  assert interpret._saliency._cache_size() == before + 1  # pylint: disable=protected-access


def test_integrated_gradients_of_a_linear_model_is_exact_and_complete():
  model = LinearSeg()
  variables, images = _init(model, (1, 6, 6, 2))
  kernel = np.asarray(variables["params"]["head"]["kernel"])[0, 0]
  got = interpret.integrated_gradients(model, variables, images, 2, region="all", steps=3)
  np.testing.assert_allclose(got, np.asarray(images) @ kernel[:, 2], rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_on_a_unet():
  model = _tiny("unet")
  variables, images = _init(model, (1, 16, 16, 1))
  logits = model.apply(variables, images, train=False)
  mask = interpret.region_mask(logits, 1, "all")
  gap = float(
    interpret.class_score(logits, 1, mask)[0]
    - interpret.class_score(model.apply(variables, jnp.zeros_like(images), train=False), 1, mask)[0]
  )
  attribution = interpret.integrated_gradients(model, variables, images, 1, region="all", steps=64)
  assert float(attribution.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3)


def test_smoothgrad_without_noise_is_saliency():
  model = _tiny("unet")
  variables, images = _init(model, (1, 16, 16, 1))
  plain = interpret.saliency(model, variables, images, 0, region="all")
  smooth = interpret.smoothgrad(
    model, variables, images, 0, region="all", rng=jax.random.key(1), num_samples=3, noise_level=0.0
  )
  np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-7)
  noisy = interpret.smoothgrad(model, variables, images, 0, region="all", rng=jax.random.key(1), num_samples=3)
  assert noisy.shape == (1, 16, 16) and not np.allclose(noisy, plain)


def test_grad_cam_at_the_layer_before_a_1x1_head_is_the_relu_of_the_class_logit_minus_bias():
  model = FeatureThenHead()
  variables, images = _init(model, (2, 8, 8, 1))
  assert interpret.layers(model, variables, images) == ["feat", "head"]
  assert interpret.default_layer(model, variables, images) == "feat"
  logits = model.apply(variables, images)
  bias = variables["params"]["head"]["bias"][1]
  # dS/dA_c = W[c, k] at every voxel, so the weights are W[:, k] and the map is relu(logit_k - b_k).
  cam = interpret.grad_cam(model, variables, images, 1, region="all", layer="feat")
  assert cam.shape == (2, 8, 8)
  np.testing.assert_allclose(cam, np.maximum(np.asarray(logits[..., 1] - bias), 0), rtol=1e-5, atol=1e-6)
  # At the head itself the weights are one-hot on class k: relu(logit_k).
  cam_head = interpret.grad_cam(model, variables, images, 1, region="all", layer="head")
  np.testing.assert_allclose(cam_head, np.maximum(np.asarray(logits[..., 1]), 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "name",
  [
    "unet",
    "attention_unet",
    pytest.param("fcn8s", marks=pytest.mark.slow),
    pytest.param("deeplabv3plus", marks=pytest.mark.slow),
  ],
)
def test_every_map_on_the_zoo_2d(name):
  overrides = {}
  if name.startswith(("fcn", "deeplab")):
    overrides = dict(backbone="resnet18", backbone_width=4)
  model = _tiny(name, **overrides)
  variables, images = _init(model, (1, 32, 32, 1))
  for method in ("saliency", "integrated_gradients", "grad_cam"):
    got = interpret.compute(
      method, model, variables, images, 1, region="all", **({"steps": 4} if method == "integrated_gradients" else {})
    )
    assert got.shape == (1, 32, 32) and bool(jnp.all(jnp.isfinite(got))), method
  assert len(interpret.layers(model, variables, images)) > 3


def test_attention_maps_and_their_absence():
  model = _tiny("attention_unet")
  variables, images = _init(model, (2, 16, 16, 1))
  gates = interpret.attention_maps(model, variables, images)
  assert len(gates) == 2 and all(g.shape == (2, 16, 16) for g in gates)
  assert all(float(g.min()) >= 0 and float(g.max()) <= 1 for g in gates)
  with pytest.raises(ConfigError, match="no attention gates"):
    interpret.attention_maps(_tiny("unet"), *_init(_tiny("unet"), (1, 16, 16, 1)))


@pytest.mark.slow
def test_3d_saliency_and_grad_cam():
  model = _tiny("unet3d")
  variables, images = _init(model, (1, 8, 16, 16, 1))
  assert interpret.saliency(model, variables, images, 2, region="all").shape == (1, 8, 16, 16)
  assert interpret.grad_cam(model, variables, images, 2, region="all").shape == (1, 8, 16, 16)


def test_bad_inputs_name_what_is_wrong():
  model = LinearSeg()
  variables, images = _init(model, (1, 4, 4, 1))
  with pytest.raises(ConfigError, match="class index 3 is outside 0..2"):
    interpret.saliency(model, variables, images, 3)
  with pytest.raises(ConfigError, match="region 'inside'"):
    interpret.saliency(model, variables, images, 0, region="inside")
  with pytest.raises(ConfigError, match="layer 'nope' .* layers: head"):
    interpret.grad_cam(model, variables, images, 0, layer="nope")
  with pytest.raises(ConfigError, match="method 'lime'"):
    interpret.compute("lime", model, variables, images, 0)


def test_sanity_check_helpers():
  a = np.arange(20.0).reshape(4, 5)
  assert interpret.rank_correlation(a, a**3) == pytest.approx(1.0)
  assert interpret.rank_correlation(a, -a) == pytest.approx(-1.0)
  assert np.isnan(interpret.rank_correlation(a, np.ones_like(a)))
  attribution = np.zeros((5, 5))
  attribution[2, 2], attribution[2, 4], attribution[0, 0] = 3.0, 1.0, -5.0  # The negative value is ignored.
  reference = np.zeros((5, 5), bool)
  reference[2, 2] = True
  assert interpret.localisation_score(attribution, reference) == pytest.approx(0.75)
  assert interpret.localisation_score(attribution, reference, margin=2) == pytest.approx(1.0)
  model = _tiny("unet")
  variables, images = _init(model, (1, 16, 16, 1))
  fresh = interpret.randomized_variables(model, variables, images, seed=7)
  assert jax.tree.structure(fresh) == jax.tree.structure(variables)
  assert not np.allclose(
    fresh["params"]["head"]["kernel"] if "head" in fresh["params"] else jax.tree.leaves(fresh["params"])[0],
    jax.tree.leaves(variables["params"])[0],
  )
