"""Per-axis pooling of the U-Nets (config.model.pool_factors / kernel_sizes), as nnU-Net's plan wants it.

Shapes are checked by abstract evaluation (`jax.eval_shape`: nothing is compiled); one test compiles and runs a
training step of a tiny anisotropic 3D U-Net with deep supervision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import losses, models, plan
from jaxseg.errors import ConfigError
from jaxseg.models import layers
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.unet import ConvBlock, UNet

# A thick-slice topology on a (D, H, W) = (8, 32, 32) patch: z is pooled only at the last downsampling.
FACTORS = ((1, 2, 2), (1, 2, 2), (2, 2, 2))
KERNELS = ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3))
PATCH = (8, 32, 32)


def _model_config(name="unet3d", **kwargs):
  cfg = models.default_model_config()
  cfg.update({"name": name, "num_classes": 3, "features": 4, "depth": 3, "norm": "instance", **kwargs})
  return cfg


def _shapes(variables):
  return {jax.tree_util.keystr(k): x.shape for k, x in jax.tree_util.tree_leaves_with_path(variables)}


def _init(model, x):
  """Abstract variables of `model` for inputs like `x` (shapes only, nothing computed)."""
  return jax.eval_shape(lambda y: model.init(jax.random.key(0), y, train=False), x)


def _apply(model, variables, x, **kwargs):
  """Abstract `model.apply(variables, x, **kwargs)` (shapes only)."""
  return jax.eval_shape(lambda v, y: model.apply(v, y, **kwargs), variables, x)


def _block_outputs(model, x):
  """Output shape of every ConvBlock (encoder, bottleneck, decoder) by module name."""
  _, state = _apply(
    model,
    _init(model, x),
    x,
    train=False,
    capture_intermediates=lambda mdl, _: isinstance(mdl, ConvBlock),
    mutable=["intermediates"],
  )
  return {
    name: value["__call__"][0].shape[1:-1]
    for name, value in state["intermediates"].items()
    if isinstance(value, dict) and "__call__" in value
  }


def test_unet3d_pools_and_upsamples_per_axis():
  model = models.create_model(_model_config(pool_factors=FACTORS, kernel_sizes=KERNELS, deep_supervision=True))
  x = jax.ShapeDtypeStruct((2, *PATCH, 1), jnp.float32)
  blocks = _block_outputs(model, x)
  assert blocks == {
    "down0": (8, 32, 32),
    "down1": (8, 16, 16),
    "down2": (8, 8, 8),
    "bottleneck": (4, 4, 4),
    "up2": (8, 8, 8),
    "up1": (8, 16, 16),
    "up0": (8, 32, 32),
  }
  variables = _init(model, x)
  shapes = _shapes(variables["params"])
  assert shapes["['upconv0']['kernel']"][:3] == (1, 2, 2) and shapes["['upconv2']['kernel']"][:3] == (2, 2, 2)
  assert shapes["['down1']['conv0']['kernel']"][:3] == (1, 3, 3)  # Strided (1, 2, 2) with a 1x3x3 kernel.
  assert shapes["['bottleneck']['conv0']['kernel']"][:3] == (3, 3, 3)
  logits = _apply(model, variables, x, train=False)
  assert logits.shape == (2, *PATCH, 3) and logits.dtype == jnp.float32
  outputs = _apply(model, variables, x, train=True)
  assert [o.shape[1:-1] for o in outputs] == [(8, 32, 32), (8, 16, 16), (8, 8, 8)]
  # Deep supervision targets: the loss subsamples labels per axis exactly as the model downsampled.
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, *PATCH)))
  for output, step in zip(outputs, [(1, 1, 1), (1, 2, 2), (1, 4, 4)]):
    expected = labels[:, :: step[0], :: step[1], :: step[2]]
    np.testing.assert_array_equal(losses.resize_labels_nearest(labels, output.shape[1:-1]), expected)


def test_odd_sizes_are_padded_per_axis_and_cropped_back():
  model = UNet(
    num_classes=2, features=4, depth=2, ndim=3, pool_factors=((1, 2, 2), (2, 2, 2)), norm="none", deep_supervision=True
  )
  x = jax.ShapeDtypeStruct((1, 5, 13, 11, 1), jnp.float32)
  outputs = _apply(model, _init(model, x), x, train=True)
  # Level 1 is downsampled by (1, 2, 2): ceil(5 / 1), ceil(13 / 2), ceil(11 / 2).
  assert [o.shape[1:-1] for o in outputs] == [(5, 13, 11), (5, 7, 6)]
  assert model.scale(2) == (2, 4, 4)


def test_attention_unet_gates_follow_the_pooling_factors():
  model = AttentionUNet(num_classes=2, features=4, depth=3, ndim=3, pool_factors=FACTORS, norm="instance")
  x = jax.ShapeDtypeStruct((1, *PATCH, 1), jnp.float32)
  variables = _init(model, x)
  logits, state = _apply(model, variables, x, train=False, mutable=["intermediates"])
  assert logits.shape == (1, *PATCH, 2)
  gates = state["intermediates"]["attention_gates"]
  assert [g.shape[1:-1] for g in gates] == [(8, 8, 8), (8, 16, 16), (8, 32, 32)]  # Level 2, 1, 0.
  shapes = _shapes(variables["params"])
  assert shapes["['gate0']['theta']['kernel']"][:3] == (1, 2, 2)
  assert shapes["['gate2']['theta']['kernel']"][:3] == (2, 2, 2)
  # The 2D registry model too, e.g. an (H, W) patch whose H is pooled once only.
  cfg = _model_config("attention_unet", depth=2, pool_factors=((2, 2), (1, 2)))
  model2d = models.create_model(cfg)
  y = jax.ShapeDtypeStruct((1, 8, 32, 1), jnp.float32)
  assert _apply(model2d, _init(model2d, y), y, train=False).shape == (1, 8, 32, 3)


@pytest.mark.parametrize(
  "name, shape", [("unet", (1, 32, 32, 2)), ("unet3d", (1, 16, 16, 16, 1)), ("attention_unet", (1, 32, 32, 1))]
)
def test_default_is_the_isotropic_network_of_before(name, shape):
  """() = 2 and 3 on every axis: the parameter tree (old checkpoints) is unchanged."""
  ndim = len(shape) - 2
  default = models.create_model(_model_config(name, deep_supervision=True))
  explicit = models.create_model(
    _model_config(name, deep_supervision=True, pool_factors=((2,) * ndim,) * 3, kernel_sizes=((3,) * ndim,) * 4)
  )
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = _init(default, x)
  assert _shapes(variables) == _shapes(_init(explicit, x))
  # The isotropic layout as it always was: 3^n kernels, 2^n transposed convolutions, no other parameters.
  shapes = _shapes(variables["params"])
  assert shapes["['upconv1']['kernel']"] == (2,) * ndim + (16, 8)
  assert shapes["['down0']['conv0']['kernel']"] == (3,) * ndim + (shape[-1], 4)
  assert [o.shape for o in _apply(default, variables, x, train=True)] == [
    o.shape for o in _apply(explicit, variables, x, train=True)
  ]


def _train_one_step(config):
  """One jitted training step of `config`'s model on random data; returns the model."""
  import functools
  from jaxseg import optimizer as optimizer_lib, state as state_lib, steps

  model = models.create_model(config.model)
  tx = optimizer_lib.create_optimizer(config.train)
  schedule = optimizer_lib.learning_rate_schedule(config.train)
  step = jax.jit(steps.make_train_step(model, tx, schedule, config.train.loss, models.output_weights(config.model)))
  patch = tuple(config.data.patch_size)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.standard_normal((2, *patch, 1)).astype(np.float32),
    "label": rng.integers(0, config.model.num_classes, (2, *patch)).astype(np.int32),
  }
  # The 'rbg' generator: XLA:CPU compiles threefry initialisers of a 3D U-Net ~10x slower (tens of seconds).
  with jax.default_prng_impl("rbg"):
    state = jax.jit(functools.partial(state_lib.create_train_state, config, model, tx, (1, *patch, 1)))()
    _, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  return model


def test_deep_supervision_loss_and_gradient_line_up_per_axis():
  """Abstractly (no compilation): every deep-supervision output meets labels of its shape in the loss."""
  model = models.create_model(_model_config(pool_factors=FACTORS, kernel_sizes=KERNELS, deep_supervision=True))
  x = jax.ShapeDtypeStruct((2, *PATCH, 1), jnp.float32)
  variables = _init(model, x)
  weights = models.output_weights(_model_config(pool_factors=FACTORS, deep_supervision=True))
  assert len(weights) == 3
  batch = {"image": x, "label": jax.ShapeDtypeStruct((2, *PATCH), jnp.int32)}

  def loss(params, batch):
    outputs = model.apply({"params": params}, batch["image"], train=True)
    return losses.multi_output_loss(losses.LOSSES["dice_ce"], outputs, batch["label"], weights)

  value, grads = jax.eval_shape(jax.value_and_grad(loss), variables["params"], batch)
  assert value.shape == () and _shapes(grads) == _shapes(variables["params"])


@pytest.mark.slow  # Compiles a train step: 65 s wall (about 15 s of CPU) on 2 cores at load average 18.
def test_2d_unet_with_anisotropic_pooling_and_deep_supervision_trains_a_step():
  """(H, W) = (8, 32): H is pooled at the second downsampling only; the deep-supervision loss gets labels
  subsampled by (1, 2) and (2, 4)."""
  config = config_lib.base_config()
  config.data.patch_size = (8, 32)
  config.model.update(
    {
      "name": "unet",
      "num_classes": 3,
      "features": 4,
      "depth": 2,
      "norm": "instance",
      "deep_supervision": True,
      "pool_factors": ((1, 2), (2, 2)),
      "kernel_sizes": ((1, 3), (3, 3), (3, 3)),
    }
  )
  config_lib.validate(config)
  model = _train_one_step(config)
  x = jax.ShapeDtypeStruct((2, 8, 32, 1), jnp.float32)
  assert [o.shape[1:-1] for o in _apply(model, _init(model, x), x, train=True)] == [(8, 32), (8, 16)]


@pytest.mark.slow  # Compiles a 3D U-Net train step: 65 s wall (about 15 s of CPU) at load average 18.
def test_anisotropic_plan_builds_and_trains_one_step_with_deep_supervision():
  """A thick-slice fingerprint: the plan pools z last, the config validates, the U-Net trains a step."""
  s = plan.DatasetSummary((8, 16, 16), (2.0, 1.0, 1.0), 20, 1, 3, 3, 2, 2)
  p = plan.make_plan(s, plan.Devices("gpu", 1, 8.0, "test GPU"), "unet3d")
  values = p["values"]
  assert values["data.patch_size"] == (8, 16, 16) and values["model.depth"] == 2
  assert values["model.pool_factors"] == ((1, 2, 2), (2, 2, 2))
  assert values["model.kernel_sizes"] == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
  config = config_lib.base_config()
  config.model.name = "unet3d"
  config.model.num_classes = 3
  config.model.deep_supervision = True
  config.model.norm = "instance"
  config.model.features = 4
  config.train.batch_size = 2
  config, record = plan.apply_plan(config, p, fixed=("model.features", "train.batch_size"))
  config_lib.validate(config)
  assert record["model.pool_factors"]["used"] == [[1, 2, 2], [2, 2, 2]]
  assert "config.model.pool_factors = [[1, 2, 2], [2, 2, 2]]" in plan.format_plan(p, record)
  model = _train_one_step(config)  # Deep supervision: logits at (8, 16, 16) and (8, 8, 8), labels subsampled so.
  assert model.factors() == ((1, 2, 2), (2, 2, 2)) and len(models.output_weights(config.model)) == 2


def _config(**model):
  config = config_lib.base_config()
  config.model.name = "unet3d"
  config.data.patch_size = PATCH
  config.model.depth = 3
  config.model.update(model)
  return config


@pytest.mark.parametrize(
  "model, patch, message",
  [
    (
      {"pool_factors": FACTORS[:2]},
      PATCH,
      r"config.model.pool_factors=.* must be 3 tuples \(one per "
      r"downsampling, config.model.depth=3\) of 3 integers",
    ),
    ({"pool_factors": ((1, 2), (1, 2), (2, 2))}, PATCH, r"must be 3 tuples .* of 3 integers .* 3D model 'unet3d'"),
    (
      {"pool_factors": ((1, 3, 2),) + FACTORS[1:]},
      PATCH,
      r"downsampling 0 has factors \(1, 3, 2\); each axis is "
      r"pooled by 1 or 2",
    ),
    (
      {"pool_factors": FACTORS},
      (8, 32, 36),
      r"config.data.patch_size=\(8, 32, 36\) is not divisible by the "
      r"product of config.model.pool_factors per axis, \(2, 8, 8\) \(axis 2\)",
    ),
    ({"pool_factors": FACTORS}, (7, 32, 32), r"\(axis 0\)"),
    ({"kernel_sizes": KERNELS[:3]}, PATCH, r"config.model.kernel_sizes=.* must be 4 tuples"),
    ({"kernel_sizes": ((2, 3, 3),) + KERNELS[1:]}, PATCH, r"level 0 has kernel \(2, 3, 3\); sizes must be odd"),
  ],
)
def test_validation_names_the_key_and_the_numbers(model, patch, message):
  config = _config(**model)
  config.data.patch_size = patch
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_models_other_than_unets_refuse_pooling_factors():
  config = config_lib.base_config()
  config.model.name = "deeplabv3plus"
  config.model.pool_factors = ((1, 2),)
  with pytest.raises(ConfigError, match=r"config.model.pool_factors=\(\(1, 2\),\) is only used by the U-Nets"):
    config_lib.validate(config)
  with pytest.raises(ConfigError, match="only used by the U-Nets"):
    models.create_model(config.model)
  config.model.pool_factors = ()
  config.model.kernel_sizes = ((3, 3),)
  with pytest.raises(ConfigError, match=r"config.model.kernel_sizes=.* only used by the U-Nets"):
    models.create_model(config.model)


def test_overridden_depth_keeps_the_plans_first_levels_and_a_deeper_one_is_refused():
  s = plan.DatasetSummary((20, 320, 319), (3.6, 0.625, 0.625), 32, 2, 3, 3, 4, 8)
  p = plan.make_plan(s, plan.Devices("gpu", 1, 8.0), "unet3d")
  assert len(p["values"]["model.pool_factors"]) == 6
  config = config_lib.base_config()
  config.model.name = "unet3d"
  config.model.depth = 3
  out, record = plan.apply_plan(config, p, fixed=("model.depth",))
  assert out.model.pool_factors == ((1, 2, 2), (1, 2, 2), (2, 2, 2))
  assert out.model.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3))
  assert "first 3 levels, for config.model.depth=3" in record["model.pool_factors"]["adjusted"]
  config_lib.validate(out)
  config.model.depth = 7
  with pytest.raises(
    ConfigError,
    match=r"config.model.depth=7 \(command line\) is deeper than the plan's 6 "
    r"levels of config.model.pool_factors .* use config.model.depth <= 6",
  ):
    plan.apply_plan(config, p, fixed=("model.depth",))
  # An overridden patch the planned pooling does not divide is refused with the numbers.
  config.model.depth = 4
  config.data.patch_size = (20, 320, 250)
  with pytest.raises(ConfigError, match=r"config.data.patch_size=\(20, 320, 250\) is not divisible .* \(4, 64, 64\)"):
    plan.apply_plan(config, p, fixed=("data.patch_size",))


def test_stored_plan_json_lists_become_tuples():
  """plan.json holds lists: a reused plan sets the same tuples as a fresh one."""
  import json

  s = plan.DatasetSummary((8, 32, 32), (4.0, 1.0, 1.0), 20, 1, 3, 3, 2, 2)
  p = plan.make_plan(s, plan.Devices("gpu", 1, 8.0), "unet3d")
  config = config_lib.base_config()
  config.model.name = "unet3d"
  fresh, _ = plan.apply_plan(config, p)
  stored, _ = plan.apply_plan(config, json.loads(json.dumps(p)))
  assert stored.model.pool_factors == fresh.model.pool_factors == FACTORS
  assert stored.model.kernel_sizes == KERNELS and stored.data.patch_size == PATCH


def test_per_axis_layer_helpers():
  x = jnp.ones((1, 5, 13, 2))
  padded, spatial = layers.pad_to_multiple(x, (1, 4))
  assert padded.shape == (1, 5, 16, 2) and spatial == (5, 13)
  assert layers.crop_to_downsampled(padded, spatial, (1, 2)).shape == (1, 5, 7, 2)
  conv = layers.conv(3, (1, 3), ndim=2, strides=(1, 2))
  y, variables = jax.eval_shape(
    lambda z: conv.init_with_output(jax.random.key(0), z), jax.ShapeDtypeStruct((1, 6, 8, 2), jnp.float32)
  )
  assert y.shape == (1, 6, 4, 3) and variables["params"]["kernel"].shape == (1, 3, 2, 3)
  with pytest.raises(ValueError, match=r"kernel_size \(1, 3, 3\) needs 2 entries"):
    layers.conv(3, (1, 3, 3), ndim=2)
