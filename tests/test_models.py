"""Registry, config validation, shapes, parameter counts and training.

Inits are jitted under `jax.threefry_partitionable(False)`: on XLA:CPU the
partitionable threefry makes compiling an init of a dozen kernels take tens
of seconds (a few seconds without it). The flag only changes which random
numbers an init draws, not what the tests check.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.errors import ConfigError
from jaxseg.models import backbones
from jaxseg.models import layers
from model_helpers import FAST_COMPILE, init_variables, make_config, run_jitted


pytestmark = pytest.mark.usefixtures("fast_random_compile")


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def param_count(cfg, shape) -> int:
  """Parameter count without allocating: shapes from `jax.eval_shape`."""
  model = models.create_model(cfg)
  variables = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape, jnp.float32), train=False)
  )
  return num_params(variables["params"])


# Registry and config.


def test_registry_is_one_table_and_models_its_read_only_view():
  assert list(models.MODELS) == list(models.REGISTRY)
  for name, entry in models.REGISTRY.items():
    assert models.MODELS[name] is entry.create
    assert models.spatial_dims(name) == entry.spatial_dims in (2, 3)
  with pytest.raises(TypeError):
    models.MODELS["mine"] = models.unet  # type: ignore[index]


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ConfigError, match=r"config\.model\.name.*unet"):
    models.create_model(make_config(name="vnet"))
  with pytest.raises(ConfigError, match=r"config\.model\.name"):
    models.spatial_dims("vnet")


@pytest.mark.parametrize(
  "key,value",
  [
    ("norm", "weight"),
    ("activation", "tanh"),
    ("dtype", "int8"),
    ("features", 0),
    ("depth", -1),
    ("dropout", 1.0),
    ("num_classes", True),
  ],
)
def test_bad_values_name_the_key(key, value):
  cfg = make_config()
  with cfg.unlocked():
    cfg[key] = value
  with pytest.raises(ConfigError, match=rf"config\.model\.{key}="):
    models.create_model(cfg)


def test_missing_key_is_a_config_error():
  cfg = make_config()
  del cfg["norm"]
  with pytest.raises(ConfigError, match=r"config\.model\.norm is missing"):
    models.create_model(cfg)


def test_group_norm_groups_must_divide_widths():
  with pytest.raises(ConfigError, match=r"config\.model\.norm_groups=8"):
    models.create_model(make_config(norm="group", features=4))


def test_unet_rejects_aux_head():
  with pytest.raises(ConfigError, match=r"config\.model\.aux_head"):
    models.create_model(make_config(aux_head=True))


def test_default_config_is_lockable_and_complete():
  cfg = models.default_model_config()
  cfg.lock()
  for name in models.MODELS:
    cfg.name = name
    models.create_model(cfg)


def test_output_weights():
  assert models.output_weights(make_config()) == [1.0]
  weights = models.output_weights(make_config(deep_supervision=True, depth=4))
  # 1, 1/2, 1/4 and 0 for the lowest resolution, normalised by 1.75.
  np.testing.assert_allclose(weights, [4 / 7, 2 / 7, 1 / 7, 0.0])
  assert models.output_weights(make_config(deep_supervision=True, depth=1)) == [1.0]


# U-Net.


def test_unet_odd_size_and_deep_supervision_shapes():
  cfg = make_config(features=4, depth=2, num_classes=3, deep_supervision=True)
  model = models.create_model(cfg)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 97, 113, 1)), jnp.float32)
  variables = init_variables(model, x.shape)
  logits = run_jitted(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (2, 97, 113, 3) and logits.dtype == jnp.float32
  assert bool(jnp.isfinite(logits).all())
  outputs, _ = jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"]))
  assert [o.shape for o in outputs] == [(2, 97, 113, 3), (2, 49, 57, 3)]
  # Train mode without deep supervision: a single array.
  plain = models.create_model(make_config(features=4, depth=2, num_classes=3))
  out, _ = jax.eval_shape(lambda: plain.apply(variables, x, train=True, mutable=["batch_stats"]))
  assert out.shape == (2, 97, 113, 3)


def test_unet_parameter_count_by_hand():
  f, c_in, k = 4, 3, 5

  def block(c_from, c_to):  # Two 3x3 convs without bias, two batch norms.
    return 9 * c_from * c_to + 9 * c_to * c_to + 4 * c_to

  expected = (
    block(c_in, f)
    + block(f, 2 * f)
    + block(2 * f, 4 * f)
    + (4 * 4 * f * 2 * f + 2 * f)
    + block(4 * f, 2 * f)  # Level 1.
    + (4 * 2 * f * f + f)
    + block(2 * f, f)  # Level 0.
    + f * k
    + k
  )  # 1x1 head.
  got = param_count(make_config(features=f, depth=2, num_classes=k), (1, 32, 32, c_in))
  assert got == expected


def test_unet_max_features_caps_widths():
  cfg = make_config(features=8, depth=3, max_features=16)
  variables = jax.eval_shape(
    lambda: models.create_model(cfg).init({"params": jax.random.key(0)}, jnp.zeros((1, 16, 16, 1)), train=False)
  )
  assert variables["params"]["bottleneck"]["conv1"]["kernel"].shape == (3, 3, 16, 16)


def test_init_is_deterministic():
  model = models.create_model(make_config(features=4, depth=1))
  a = init_variables(model, (1, 8, 8, 1), seed=0)
  b = init_variables(model, (1, 8, 8, 1), seed=0)
  c = init_variables(model, (1, 8, 8, 1), seed=1)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a["params"]["down0"]["conv0"]["kernel"], c["params"]["down0"]["conv0"]["kernel"])


@pytest.mark.parametrize("norm", ["instance", "group", "layer", "none"])
def test_unet_norms_run(norm):
  cfg = make_config(features=8, depth=1, norm=norm, norm_groups=4, activation="leaky_relu")
  model = models.create_model(cfg)
  variables = init_variables(model, (1, 9, 10, 2))
  assert ("batch_stats" in variables) == (norm == "batch")
  out = run_jitted(lambda v, x: model.apply(v, x, train=False), variables, jnp.ones((1, 9, 10, 2)))
  assert out.shape == (1, 9, 10, 5) and bool(jnp.isfinite(out).all())


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create_model(make_config(features=4, depth=1, dtype="bfloat16"))
  variables = init_variables(model, (1, 8, 8, 1))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda: model.apply(variables, jnp.ones((1, 8, 8, 1)), train=False))
  assert out.dtype == jnp.float32


# Attention U-Net and 3D U-Net.


def test_attention_unet_sows_gate_maps():
  cfg = make_config(name="attention_unet", features=4, depth=2, num_classes=2)
  model = models.create_model(cfg)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 37, 30, 1)), jnp.float32)
  variables = init_variables(model, x.shape)
  logits, state = run_jitted(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables, x)
  assert logits.shape == (1, 37, 30, 2)
  gates = state["intermediates"]["attention_gates"]
  # Decoder order: level 1 (half resolution) first, then full resolution.
  assert [g.shape for g in gates] == [(1, 19, 15, 1), (1, 37, 30, 1)]
  for gate in gates:
    assert bool(((gate > 0) & (gate < 1)).all())
  assert set(variables["params"]["gate0"]) == {"theta", "phi", "psi"}


def test_unet3d_odd_size_and_deep_supervision():
  cfg = make_config(
    name="unet3d",
    features=32,
    depth=5,
    max_features=320,
    norm="instance",
    activation="leaky_relu",
    deep_supervision=True,
  )
  model = models.create_model(cfg)
  x = jax.ShapeDtypeStruct((1, 37, 41, 29, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)
  assert [o.shape for o in outputs] == [
    (1, 37, 41, 29, 5),
    (1, 19, 21, 15, 5),
    (1, 10, 11, 8, 5),
    (1, 5, 6, 4, 5),
    (1, 3, 3, 2, 5),
  ]
  single = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert single.shape == (1, 37, 41, 29, 5)
  params = variables["params"]
  # nnU-Net widths 32, 64, 128, 256, 320, 320; strided-conv downsampling.
  assert [params[f"down{i}"]["conv0"]["kernel"].shape[-1] for i in range(5)] == [32, 64, 128, 256, 320]
  assert params["bottleneck"]["conv0"]["kernel"].shape == (3, 3, 3, 320, 320)
  assert "batch_stats" not in variables
  np.testing.assert_allclose(models.output_weights(cfg), np.array([16, 8, 4, 2, 0]) / 30)


# FCN and DeepLab.


@pytest.mark.parametrize(
  "name,backbone,aux,expected",
  [
    # torchvision deeplabv3_resnet50 / _resnet101 and fcn_resnet50 /
    # _resnet101, num_classes=21, aux_loss as given, sum of p.numel().
    ("deeplabv3", "resnet50", True, 42_004_074),
    ("deeplabv3", "resnet50", False, 39_638_869),
    ("deeplabv3", "resnet101", True, 60_996_202),
    ("fcn32s", "resnet50", True, 35_322_218),
    ("fcn32s", "resnet101", True, 54_314_346),
  ],
)
def test_parameter_counts_match_torchvision(name, backbone, aux, expected):
  cfg = make_config(name=name, backbone=backbone, aux_head=aux, num_classes=21, output_stride=8)
  assert param_count(cfg, (1, 64, 64, 3)) == expected


def test_fcn_vgg16_parameter_counts_by_hand():
  cfg = make_config(name="fcn32s", backbone="vgg16", num_classes=21)
  vgg_convs = 14_714_688  # torchvision vgg16().features.
  fc6 = 7 * 7 * 512 * 4096 + 4096
  fc7 = 4096 * 4096 + 4096
  score_fr = 4096 * 21 + 21
  fcn32s = vgg_convs + fc6 + fc7 + score_fr  # 134,346,581: "134M", Long et al.
  assert param_count(cfg, (1, 64, 64, 3)) == fcn32s
  upscore = 4 * 4 * 21 * 21
  cfg.name = "fcn16s"
  fcn16s = fcn32s + 512 * 21 + 21 + upscore
  assert param_count(cfg, (1, 64, 64, 3)) == fcn16s
  cfg.name = "fcn8s"
  assert param_count(cfg, (1, 64, 64, 3)) == fcn16s + 256 * 21 + 21 + upscore


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_output_stride_and_dilation(output_stride):
  def features(x):
    module = backbones.ResNet((3, 4, 6, 3), True, output_stride=output_stride)
    variables = module.init({"params": jax.random.key(0)}, x, train=False)
    return module.apply(variables, x, train=False), variables

  out, variables = jax.eval_shape(features, jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32))
  strides = {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
  for key, stride in strides.items():
    assert out[key].shape[1:3] == (64 // stride, 96 // stride)
  assert out["layer4"].shape[-1] == 2048
  assert num_params(variables["params"]) == 23_508_032  # resnet50 minus fc.


def test_deeplab_rejects_bad_output_stride_and_vgg():
  with pytest.raises(ConfigError, match=r"config\.model\.output_stride=32"):
    models.create_model(make_config(name="deeplabv3", output_stride=32))
  with pytest.raises(ConfigError, match=r"config\.model\.backbone='vgg16'"):
    models.create_model(make_config(name="deeplabv3plus", backbone="vgg16"))
  with pytest.raises(ConfigError, match=r"config\.model\.aux_head"):
    models.create_model(make_config(name="fcn8s", backbone="vgg16", aux_head=True))
  with pytest.raises(ConfigError, match=r"config\.model\.deep_supervision"):
    models.create_model(make_config(name="fcn8s", deep_supervision=True))


@pytest.mark.parametrize("name", [n for n in models.MODELS if models.spatial_dims(n) == 2])
def test_default_2d_models_keep_odd_input_sizes(name):
  cfg = make_config(name=name, num_classes=4)
  aux = name.startswith(("fcn", "deeplab"))
  with cfg.unlocked():
    cfg.aux_head = aux
  if name == "deeplabv3plus":
    cfg.output_stride = 16
  model = models.create_model(cfg)
  x = jax.ShapeDtypeStruct((2, 97, 113, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (2, 97, 113, 4) and out.dtype == jnp.float32
  if aux:
    outs, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}),
      variables,
      x,
    )
    assert [o.shape for o in outs] == [(2, 97, 113, 4)] * 2
    assert models.output_weights(cfg) == [1.0, 0.5]
    assert "backbone" in variables["params"]


# Layers against independent references.


def test_atrous_conv_matches_direct_float64_sum():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 9, 11, 2))
  rate = 3
  conv = layers.atrous_conv(4, rate)
  variables = conv.init(jax.random.key(0), jnp.zeros((1, 9, 11, 2)))
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  padded = np.pad(x, [(0, 0), (rate, rate), (rate, rate), (0, 0)])
  expected = np.zeros((1, 9, 11, 4))
  for i in range(3):
    for j in range(3):
      window = padded[:, i * rate : i * rate + 9, j * rate : j * rate + 11]
      expected += window @ kernel[i, j]
  got = conv.apply(variables, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_learned_upsampling_starts_as_bilinear_interpolation():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 7, 3)), jnp.float32)
  layer = layers.upsample_2x_learned(3, dtype=jnp.float32)
  variables = layer.init(jax.random.key(0), x)
  up = layer.apply(variables, x)
  reference = jax.image.resize(x, (1, 12, 14, 3), "bilinear")
  assert up.shape == reference.shape
  # Equal away from the border, where the transposed conv sees zero padding.
  np.testing.assert_allclose(up[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1], atol=1e-6)


def test_pad_and_crop_round_trip():
  x = jnp.arange(2 * 5 * 7 * 1, dtype=jnp.float32).reshape(2, 5, 7, 1)
  padded, spatial = layers.pad_to_multiple(x, 4)
  assert padded.shape == (2, 8, 8, 1) and spatial == (5, 7)
  assert float(padded[:, 5:].sum()) == 0 and float(padded[:, :, 7:].sum()) == 0
  np.testing.assert_array_equal(layers.crop_spatial(padded, spatial), x)
  assert layers.crop_to_downsampled(padded, spatial, 2).shape == (2, 3, 4, 1)


# Kernel == stride transposed convolution as matmul + depth-to-space.


@pytest.mark.parametrize("factor", [(2, 2), (3, 2), (2, 2, 2), (1, 2, 2)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stride_upsample_equals_flax_conv_transpose(factor, dtype):
  shape = (2, *(5, 6, 3)[: len(factor)], 6)
  x = jax.random.normal(jax.random.key(1), shape)
  reference = nn.ConvTranspose(4, factor, strides=factor, dtype=dtype)
  layer = layers.StrideUpsample(4, factor, dtype=dtype)
  ref_vars = reference.init(jax.random.key(0), x)
  new_vars = layer.init(jax.random.key(0), x)
  # Same tree, shapes, dtypes and initial values: checkpoints interchange.
  assert jax.tree.structure(ref_vars) == jax.tree.structure(new_vars)
  for a, b in zip(jax.tree.leaves(ref_vars), jax.tree.leaves(new_vars)):
    assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  # Random (nonzero) bias too, then the same variables in both layers.
  variables = jax.tree.map(lambda v: jax.random.normal(jax.random.key(v.size), v.shape), ref_vars)
  expected = reference.apply(variables, x)
  got = layer.apply(variables, x)
  assert got.shape == expected.shape == (2, *(s * f for s, f in zip(shape[1:-1], factor)), 4)
  assert got.dtype == expected.dtype == dtype
  if dtype == jnp.float32:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  else:
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=2e-2, atol=2e-2)


def test_stride_upsample_matches_float64_reference():
  # Independent of flax: output[f * i + a] = x[i] @ kernel[f - 1 - a] + bias.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 3, 4, 2))
  kernel = rng.normal(size=(2, 3, 2, 5))
  bias = rng.normal(size=(5,))
  got = layers.StrideUpsample(5, (2, 3)).apply(
    {"params": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}},
    jnp.asarray(x, jnp.float32),
  )
  expected = np.zeros((1, 6, 12, 5))
  for i in range(3):
    for j in range(4):
      for a in range(2):
        for b in range(3):
          expected[0, 2 * i + a, 3 * j + b] = x[0, i, j] @ kernel[1 - a, 2 - b] + bias
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unet_upconv_parameters_keep_conv_transpose_layout():
  cfg = make_config(name="unet3d", features=4, depth=2, num_classes=2)
  variables = jax.eval_shape(
    lambda: models.create_model(cfg).init({"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 8, 1)), train=False)
  )
  upconv = variables["params"]["upconv1"]
  assert upconv["kernel"].shape == (2, 2, 2, 16, 8)
  assert upconv["bias"].shape == (8,)


# 3D convolution with the depth taps folded into channels (CPU speed).


@pytest.mark.parametrize(
  "kernel,strides,dilation,padding",
  [
    (3, 1, 1, [(1, 1)] * 3),
    (3, 2, 1, [(1, 1)] * 3),
    (3, 1, 2, [(2, 2)] * 3),
    (1, 1, 1, [(0, 0)] * 3),
    (2, 2, 1, "VALID"),
    (3, 1, 1, "SAME"),
    (2, 1, 1, "SAME"),  # Asymmetric padding (0, 1) on the output-folded (stride 1) path.
    (3, 1, 1, [(2, 0), (1, 1), (0, 2)]),
  ],
)
def test_depth_folded_conv_equals_3d_conv(kernel, strides, dilation, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 9, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel,) * 3 + (3, 5)), jnp.float32)
  args = ((strides,) * 3, padding)
  kwargs = dict(rhs_dilation=(dilation,) * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  expected = jax.lax.conv_general_dilated(x, w, *args, **kwargs)
  got = layers.depth_folded_conv(x, w, *args, **kwargs)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Gradients as well (the backward pass is what training runs).
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, *args, **kwargs))), argnums=(0, 1))(x, w)
  for a, b in zip(grad(layers.depth_folded_conv), grad(jax.lax.conv_general_dilated)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unet3d_conv3d_implementations_share_params_and_outputs():
  x = jax.random.normal(jax.random.key(1), (1, 8, 12, 8, 2))
  outputs, trees = [], []
  for impl in ("native", "folded"):
    model = models.create_model(
      make_config(
        name="unet3d", features=4, depth=2, num_classes=3, norm="instance", deep_supervision=True, conv3d=impl
      )
    )
    variables = init_variables(model, x.shape)
    trees.append(variables)
    outputs.append(run_jitted(lambda v, x: model.apply(v, x, train=True), trees[0], x))
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(trees[1])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(outputs[0], outputs[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv3d_option_is_checked():
  with pytest.raises(ConfigError, match=r"config\.model\.conv3d"):
    models.create_model(make_config(name="unet3d", conv3d="fast"))
  assert layers.fold_depth("auto") == (jax.default_backend() == "cpu")


# Mixed precision and rematerialisation.


def test_float16_is_rejected_with_a_hint():
  with pytest.raises(ConfigError, match=r"config\.model\.dtype.*bfloat16"):
    models.create_model(make_config(dtype="float16"))


def test_remat_keeps_params_and_gradients_and_recomputes():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 16, 1))
  labels = jax.random.randint(jax.random.key(2), (2, 16, 16, 16), 0, 3)
  results = []
  for remat in (False, True):
    model = models.create_model(
      make_config(name="unet3d", features=4, depth=2, num_classes=3, norm="instance", remat=remat)
    )
    variables = init_variables(model, x.shape)

    def loss(params, model=model, variables=variables):
      logits = model.apply({**variables, "params": params}, x, train=True)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

    compiled = jax.jit(jax.value_and_grad(loss)).lower(variables["params"]).compile(FAST_COMPILE)
    results.append((variables, compiled(variables["params"]), compiled.as_text().count(" convolution(")))
  (vars_a, (loss_a, grad_a), convs_a), (vars_b, (loss_b, grad_b), convs_b) = results
  assert jax.tree.structure(vars_a) == jax.tree.structure(vars_b)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The blocks' forward convolutions run again in the backward pass. (Peak
  # memory: XLA:CPU's scheduler does not turn this into savings; see the
  # README's Performance section.)
  assert convs_b > convs_a


@pytest.mark.parametrize("shape,window", [((2, 8, 6, 3), (2, 2)), ((1, 4, 6, 8, 2), (2, 2, 2)), ((1, 7, 9, 1), (2, 3))])
def test_max_pool_equals_flax_max_pool_and_its_gradient(shape, window):
  # Distinct values: no ties, so the gradients agree exactly.
  x = jax.random.permutation(jax.random.key(0), np.prod(shape)).reshape(shape).astype(jnp.float32)
  expected = nn.max_pool(x, window, strides=window)
  np.testing.assert_array_equal(layers.max_pool(x, window), expected)
  grad = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)
  np.testing.assert_array_equal(
    grad(lambda x: layers.max_pool(x, window)), grad(lambda x: nn.max_pool(x, window, strides=window))
  )
