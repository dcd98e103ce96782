"""Model defects found in review (issue 12), each pinned by a test that failed before its fix.

(1) DeepLab's image-pooling branch with instance norm gave the same output for every image;
(2) FCN-16s/8s on a dilated backbone (the model default) had no coarse-to-fine skips;
(4) AdamW (and SGD's decayed weights) decayed biases and normalisation scales.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import models
from jaxseg import optimizer as optimizer_lib
from jaxseg.config import base_config
from jaxseg.models.deeplab import ASPP

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _fast_random_compile():
  with jax.threefry_partitionable(False):
    yield


# (1) ASPP image pooling.


@pytest.mark.parametrize("norm", ["instance", "none", "group", "layer", "batch"])
def test_aspp_image_pooling_branch_sees_the_image(norm):
  aspp = ASPP(rates=(1, 2, 3), features=8, norm=norm, norm_groups=4)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 16)) + np.array([0.0, 3.0])[:, None, None, None], jnp.float32)
  variables = aspp.init(jax.random.key(0), x, train=False)
  _, state = aspp.apply(variables, x, train=False, capture_intermediates=lambda module, _: module.name == "pooling")
  pooled = np.asarray(state["intermediates"]["pooling"]["__call__"][0])
  assert pooled.shape == (2, 1, 1, 8)
  # The two images have different global averages: the branch must say so (before the fix, instance
  # norm made both outputs ReLU(offset) = 0).
  assert np.abs(pooled[0] - pooled[1]).max() > 1e-3


def test_aspp_image_pooling_keeps_torchvision_layout_for_batch_norm():
  """Batch norm (torchvision's, and what its weights hold) stays: conv without bias + norm."""
  x = jnp.zeros((2, 4, 4, 16))
  batch = ASPP(rates=(1,), features=8, norm="batch").init(jax.random.key(0), x, train=False)
  assert set(batch["params"]["pooling"]) == {"conv", "norm"} and "bias" not in batch["params"]["pooling"]["conv"]
  instance = ASPP(rates=(1,), features=8, norm="instance").init(jax.random.key(0), x, train=False)
  assert set(instance["params"]["pooling"]) == {"conv"} and "bias" in instance["params"]["pooling"]["conv"]
  assert set(instance["params"]["conv1x1"]) == {"conv", "norm"}  # The other branches keep their norm.


# (2) FCN-16s / FCN-8s skips.


def load_config(spec: str) -> ml_collections.ConfigDict:
  name, sep, arg = spec.partition(":")
  return config_lib.load(f"{CONFIGS / name}.py{sep}{arg}")


def param_tree(cfg, shape):
  model = models.create_model(cfg)
  return model, jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape), train=False))


@pytest.mark.parametrize("name,upsamplers", [("fcn8s", {"upscore0", "upscore1"}), ("fcn16s", {"upscore0"})])
def test_msd_fcn_configs_have_coarse_to_fine_skips(name, upsamplers):
  config = load_config(f"msd:{name}")
  config.model.num_classes = 3
  assert config.model.output_stride == 8  # The model default, kept by configs/msd.py.
  _, variables = param_tree(config.model, (1, 256, 256, 1))
  assert {k for k in variables["params"] if k.startswith("upscore")} == upsamplers


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_fcn8s_fuses_strides_32_16_8_whatever_the_output_stride(output_stride):
  cfg = models.default_model_config()
  cfg.update(name="fcn8s", backbone="resnet18", backbone_width=4, num_classes=3, output_stride=output_stride)
  model = models.create_model(cfg)
  variables = jax.jit(lambda key: model.init({"params": key}, jnp.zeros((1, 64, 96, 1)), train=False))(
    jax.random.key(0)
  )
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 96, 1)), jnp.float32)
  names = ("classifier", "upscore0", "score_layer3", "upscore1", "score_layer2")
  logits, state = jax.jit(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=lambda m, _: m.name in names)
  )(variables, x)
  shapes = {name: state["intermediates"][name]["__call__"][0].shape[1:3] for name in names}
  assert shapes == {
    "classifier": (2, 3),
    "upscore0": (4, 6),
    "score_layer3": (4, 6),
    "upscore1": (8, 12),
    "score_layer2": (8, 12),
  }
  assert logits.shape == (1, 64, 96, 3)


def test_fcn32s_still_follows_output_stride():
  cfg = models.default_model_config()
  cfg.update(name="fcn32s", backbone="resnet18", backbone_width=4, num_classes=3, output_stride=8)
  model, variables = param_tree(cfg, (1, 64, 64, 1))
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=lambda m, _: m.name == "classifier"),
    variables,
    jnp.zeros((1, 64, 64, 1)),
  )
  assert state["intermediates"]["classifier"]["__call__"][0].shape[1:3] == (8, 8)  # Dilated: stride 8.


# (4) Weight decay only on kernels.


class ConvNormNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    x = nn.GroupNorm(num_groups=2, name="norm")(x)
    x = nn.Dense(2, name="dense")(x)
    return nn.ConvTranspose(2, (2, 2), strides=(2, 2), name="up")(x)


def params_for_decay():
  params = ConvNormNet().init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
  return jax.tree.map(lambda p: p + 1.0, params)  # Non-zero biases and scales.


def train_config(optimizer, **overrides):
  config = base_config().train
  config.update(optimizer=optimizer, learning_rate=0.1, warmup_steps=0, weight_decay=0.5, **overrides)
  return config


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("overrides", [{}, {"backbone_lr_multiplier": 0.5}])
def test_weight_decay_spares_biases_and_norm_scales(optimizer, overrides):
  params = params_for_decay()
  tx = optimizer_lib.create_optimizer(train_config(optimizer, **overrides))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  flat = {"/".join(k.key for k in path): np.asarray(u) for path, u in jax.tree_util.tree_leaves_with_path(updates)}
  assert set(flat) == {
    "conv/kernel",
    "conv/bias",
    "norm/scale",
    "norm/bias",
    "dense/kernel",
    "dense/bias",
    "up/kernel",
    "up/bias",
  }
  for name, update in flat.items():
    if name.endswith("kernel"):  # With zero gradients the update is the decay alone: -lr * wd * w,
      value = np.asarray(params[name.split("/")[0]]["kernel"])  # times 1 + momentum for Nesterov SGD.
      factor = 1.0 if optimizer == "adamw" else 1.0 + base_config().train.momentum
      np.testing.assert_allclose(update, -0.1 * 0.5 * factor * value, rtol=1e-5)
    else:
      assert not update.any(), f"{name} was decayed"


def test_decay_mask_marks_only_kernels():
  mask = optimizer_lib.decay_mask(params_for_decay())
  assert {"/".join(k.key for k in path): bool(v) for path, v in jax.tree_util.tree_leaves_with_path(mask)} == {
    "conv/kernel": True,
    "conv/bias": False,
    "norm/scale": False,
    "norm/bias": False,
    "dense/kernel": True,
    "dense/bias": False,
    "up/kernel": True,
    "up/bias": False,
  }
