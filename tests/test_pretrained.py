"""Loading torchvision ImageNet weights into the FCN/DeepLab backbones.

The first group of tests needs numpy only: torchvision-style state_dicts are
written here from torchvision's naming scheme and stored as .npz. The
interop tests at the end build torchvision models with random weights
(random batch-norm statistics too), save their state_dicts, load them into
jaxseg and compare eval-mode forward passes; they skip when torch and
torchvision are not installed.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import models
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError
from jaxseg.models import backbones
from jaxseg.models import layers
from jaxseg.models import pretrained

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TORCHVISION = HAS_TORCH and importlib.util.find_spec("torchvision") is not None
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


def make_config(**overrides):
  cfg = models.default_model_config()
  cfg.update(overrides)
  return cfg


def abstract_variables(cfg, in_channels=3):
  """Variables of the model of `cfg` as zeros (shapes from eval_shape)."""
  model = models.create_model(cfg)
  shapes = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 64, 64, in_channels)), train=False)
  )
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def resnet18_state_dict(width, rng, in_channels=3):
  """A state_dict with torchvision resnet18's keys, widths times width / 64."""
  state = {}

  def conv(key, out_c, in_c, k):
    state[f"{key}.weight"] = rng.normal(size=(out_c, in_c, k, k)).astype(np.float32)

  def bn(key, c):
    state[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{key}.bias"] = rng.normal(size=c).astype(np.float32)
    state[f"{key}.running_mean"] = rng.normal(size=c).astype(np.float32)
    state[f"{key}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{key}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", width, in_channels, 7)
  bn("bn1", width)
  inplanes = width
  for stage in range(4):
    planes = width * 2**stage
    for block in range(2):
      prefix = f"layer{stage + 1}.{block}"
      conv(f"{prefix}.conv1", planes, inplanes if block == 0 else planes, 3)
      bn(f"{prefix}.bn1", planes)
      conv(f"{prefix}.conv2", planes, planes, 3)
      bn(f"{prefix}.bn2", planes)
      if block == 0 and stage > 0:
        conv(f"{prefix}.downsample.0", planes, inplanes, 1)
        bn(f"{prefix}.downsample.1", planes)
    inplanes = planes
  state["fc.weight"] = rng.normal(size=(1000, inplanes)).astype(np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  return state


def save_npz(tmp_path, state, name="weights.npz"):
  path = str(tmp_path / name)
  np.savez(path, **state)
  return path


TINY_RESNET = dict(name="fcn32s", backbone="resnet18", backbone_width=4, num_classes=3)


def test_resnet_weights_land_in_params_and_batch_stats(tmp_path):
  state = resnet18_state_dict(4, np.random.default_rng(0))
  cfg = make_config(pretrained=save_npz(tmp_path, state), **TINY_RESNET)
  variables = abstract_variables(cfg)
  loaded = pretrained.load_pretrained(variables, cfg)
  params = loaded["params"]["backbone"]
  stats = loaded["batch_stats"]["backbone"]
  np.testing.assert_array_equal(
    params["layer2_0"]["downsample_conv"]["kernel"], state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0)
  )
  # OIHW -> HWIO: kernel[i, j, c, o] == weight[o, c, i, j].
  assert params["conv1"]["kernel"][5, 2, 1, 3] == state["conv1.weight"][3, 1, 5, 2]
  np.testing.assert_array_equal(params["layer4_1"]["bn2"]["scale"], state["layer4.1.bn2.weight"])
  np.testing.assert_array_equal(params["bn1"]["bias"], state["bn1.bias"])
  np.testing.assert_array_equal(stats["layer3_0"]["downsample_bn"]["var"], state["layer3.0.downsample.1.running_var"])
  np.testing.assert_array_equal(stats["layer1_1"]["bn1"]["mean"], state["layer1.1.bn1.running_mean"])
  # Heads are left alone.
  for a, b in zip(jax.tree.leaves(variables["params"]["classifier"]), jax.tree.leaves(loaded["params"]["classifier"])):
    np.testing.assert_array_equal(a, b)


def test_single_channel_input_sums_the_rgb_kernel(tmp_path):
  state = resnet18_state_dict(4, np.random.default_rng(0))
  cfg = make_config(pretrained=save_npz(tmp_path, state), **TINY_RESNET)
  loaded = pretrained.load_pretrained(abstract_variables(cfg, 1), cfg)
  np.testing.assert_allclose(
    loaded["params"]["backbone"]["conv1"]["kernel"][..., 0, :],
    state["conv1.weight"].sum(axis=1).transpose(1, 2, 0),
    rtol=1e-6,
  )
  loaded5 = pretrained.load_pretrained(abstract_variables(cfg, 5), cfg)
  kernel5 = loaded5["params"]["backbone"]["conv1"]["kernel"]
  rgb = state["conv1.weight"].transpose(2, 3, 1, 0)
  # RGB repeated as R, G, B, R, G and scaled by 3 / 5.
  for channel, source in enumerate([0, 1, 2, 0, 1]):
    np.testing.assert_allclose(kernel5[:, :, channel], rgb[:, :, source] * 3 / 5, rtol=1e-6)


def test_vgg_fc6_is_the_convolutionalised_linear_layer(tmp_path):
  rng = np.random.default_rng(0)
  width = 2
  state = {}
  in_c = 3
  indices = iter([0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28])
  for stage, num_convs in enumerate((2, 2, 3, 3, 3)):
    out_c = width * 2 ** min(stage, 3)
    for _ in range(num_convs):
      index = next(indices)
      state[f"features.{index}.weight"] = rng.normal(size=(out_c, in_c, 3, 3)).astype(np.float32)
      state[f"features.{index}.bias"] = rng.normal(size=out_c).astype(np.float32)
      in_c = out_c
  fc = 64 * width
  state["classifier.0.weight"] = rng.normal(size=(fc, in_c * 49)).astype(np.float32)
  state["classifier.0.bias"] = rng.normal(size=fc).astype(np.float32)
  state["classifier.3.weight"] = rng.normal(size=(fc, fc)).astype(np.float32)
  state["classifier.3.bias"] = rng.normal(size=fc).astype(np.float32)
  state["classifier.6.weight"] = rng.normal(size=(1000, fc)).astype(np.float32)
  state["classifier.6.bias"] = np.zeros(1000, np.float32)
  cfg = make_config(name="fcn8s", backbone="vgg16", backbone_width=width, pretrained=save_npz(tmp_path, state))
  loaded = pretrained.load_pretrained(abstract_variables(cfg), cfg)
  params = loaded["params"]["backbone"]
  # torch flattens pool5 [C, 7, 7] as c * 49 + i * 7 + j.
  weight = state["classifier.0.weight"]
  for i, j, c, o in [(0, 0, 0, 0), (6, 2, 5, 17), (3, 4, in_c - 1, fc - 1)]:
    assert params["fc6"]["kernel"][i, j, c, o] == weight[o, c * 49 + i * 7 + j]
  np.testing.assert_array_equal(params["fc7"]["kernel"][0, 0], state["classifier.3.weight"].T)
  np.testing.assert_array_equal(params["conv4_2"]["bias"], state["features.19.bias"])
  assert "batch_stats" not in loaded


def test_missing_unexpected_and_misshaped_keys(tmp_path):
  state = resnet18_state_dict(4, np.random.default_rng(0))
  cfg = make_config(**TINY_RESNET)
  variables = abstract_variables(cfg)

  def load(state, name):
    with cfg.unlocked():
      cfg.pretrained = save_npz(tmp_path, state, name)
    return pretrained.load_pretrained(variables, cfg)

  missing = dict(state)
  del missing["layer3.1.bn2.running_var"]
  with pytest.raises(
    DataError,
    match=r"missing\.npz: missing key "
    r"'layer3\.1\.bn2\.running_var'",
  ):
    load(missing, "missing.npz")
  extra = dict(state, **{"layer3.2.conv1.weight": np.zeros((16, 16, 3, 3))})
  with pytest.raises(
    DataError,
    match=r"extra\.npz: unexpected key "
    r"'layer3\.2\.conv1\.weight'",
  ):
    load(extra, "extra.npz")
  wide = resnet18_state_dict(8, np.random.default_rng(0))
  with pytest.raises(DataError, match=r"wide\.npz: \S+ has shape \(8,.*expects \(4,"):
    load(wide, "wide.npz")


def test_file_and_config_errors(tmp_path):
  cfg = make_config(**TINY_RESNET)
  variables = abstract_variables(cfg)
  assert pretrained.load_pretrained(variables, cfg) is variables  # No file.
  with cfg.unlocked():
    cfg.pretrained = str(tmp_path / "nope.pth")
  with pytest.raises(DataError, match=r"nope\.pth: .*does not exist"):
    pretrained.load_pretrained(variables, cfg)
  bad = tmp_path / "weights.bin"
  bad.write_bytes(b"\0")
  cfg.pretrained = str(bad)
  with pytest.raises(DataError, match=r"weights\.bin: unsupported"):
    pretrained.load_pretrained(variables, cfg)
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"not a zip")
  cfg.pretrained = str(corrupt)
  with pytest.raises(DataError, match=r"corrupt\.npz: not a readable"):
    pretrained.load_pretrained(variables, cfg)
  cfg.name = "unet"
  with pytest.raises(ConfigError, match=r"config\.model\.pretrained"):
    pretrained.load_pretrained(variables, cfg)
  cfg.name = "deeplabv3"
  cfg.norm = "group"
  with pytest.raises(ConfigError, match=r"config\.model\.norm='batch'"):
    pretrained.load_pretrained(variables, cfg)


def torchvision_resnet_keys(blocks, bottleneck):
  """Keys (with dummy values) of a torchvision ResNet with `blocks` per stage."""
  convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
  keys = ["conv1.weight", "bn1.weight", "fc.weight"]
  for stage, count in enumerate(blocks):
    for block in range(count):
      keys += [f"layer{stage + 1}.{block}.{conv}.weight" for conv in convs]
  return dict.fromkeys(keys, np.zeros(1, np.float32))


def test_infer_backbone_from_the_state_dict_keys():
  assert pretrained.infer_backbone(resnet18_state_dict(4, np.random.default_rng(0))) == "resnet18"
  assert pretrained.infer_backbone(torchvision_resnet_keys((3, 4, 6, 3), False)) == "resnet34"
  assert pretrained.infer_backbone(torchvision_resnet_keys((3, 4, 6, 3), True)) == "resnet50"
  assert pretrained.infer_backbone(torchvision_resnet_keys((3, 4, 23, 3), True)) == "resnet101"
  vgg = {f"features.{i}.weight": np.zeros(1) for i in (0, 2, 28)}
  assert pretrained.infer_backbone(vgg) == "vgg16"
  with pytest.raises(
    DataError,
    match=r"^w.pth: not the state_dict of a torchvision resnet18/34/50/101 or vgg16 "
    r"\(4 layer3 blocks, bottleneck False\)",
  ):
    pretrained.infer_backbone(torchvision_resnet_keys((2, 2, 4, 2), False), "w.pth")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision")
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "vgg16"])
def test_infer_backbone_of_torchvision_models(name):
  import torchvision  # pylint: disable=g-import-not-at-top

  keys = dict.fromkeys(getattr(torchvision.models, name)().state_dict(), np.zeros(1))
  assert pretrained.infer_backbone(keys) == name


@pytest.mark.skipif(HAS_TORCH, reason="checks the error raised without torch")
def test_pth_without_torch_is_a_data_error(tmp_path):
  path = tmp_path / "resnet50.pth"
  path.write_bytes(b"\0")
  cfg = make_config(name="deeplabv3", pretrained=str(path))
  with pytest.raises(DataError, match=r"resnet50\.pth: .*needs torch"):
    pretrained.load_pretrained({}, cfg)


@pytest.mark.skipif(HAS_SAFETENSORS, reason="checks the error raised without safetensors")
def test_safetensors_without_package_is_a_data_error(tmp_path):
  path = tmp_path / "resnet50.safetensors"
  path.write_bytes(b"\0")
  cfg = make_config(name="deeplabv3", pretrained=str(path))
  with pytest.raises(DataError, match=r"needs the safetensors package"):
    pretrained.load_pretrained({}, cfg)


# Interop with torchvision (skipped without torch and torchvision).

needs_torchvision = pytest.mark.skipif(
  not HAS_TORCHVISION,
  reason="torch and torchvision are not installed (pip install 'jaxseg[interop]' to compare against torchvision)",
)

# torchvision segmentation head modules -> jaxseg module paths.
_DEEPLAB_HEAD = {
  "classifier.0.convs.0.0": "classifier/aspp/conv1x1/conv",
  "classifier.0.convs.0.1": "classifier/aspp/conv1x1/norm",
  "classifier.0.convs.1.0": "classifier/aspp/atrous0/conv",
  "classifier.0.convs.1.1": "classifier/aspp/atrous0/norm",
  "classifier.0.convs.2.0": "classifier/aspp/atrous1/conv",
  "classifier.0.convs.2.1": "classifier/aspp/atrous1/norm",
  "classifier.0.convs.3.0": "classifier/aspp/atrous2/conv",
  "classifier.0.convs.3.1": "classifier/aspp/atrous2/norm",
  "classifier.0.convs.4.1": "classifier/aspp/pooling/conv",
  "classifier.0.convs.4.2": "classifier/aspp/pooling/norm",
  "classifier.0.project.0": "classifier/aspp/project/conv",
  "classifier.0.project.1": "classifier/aspp/project/norm",
  "classifier.1": "classifier/refine/conv",
  "classifier.2": "classifier/refine/norm",
  "classifier.4": "classifier/score",
}
_FCN_HEAD = {"classifier.0": "classifier/conv", "classifier.1": "classifier/norm", "classifier.4": "classifier/score"}
_AUX_HEAD = {
  "aux_classifier.0": "aux_classifier/conv",
  "aux_classifier.1": "aux_classifier/norm",
  "aux_classifier.4": "aux_classifier/score",
}


def _randomize(model):
  """Random batch-norm affine parameters and statistics (eval mode)."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()


def _load_heads(variables, state, table):
  """Copies torchvision head weights into `variables` (test-side mapping)."""
  names = {
    "weight": ("params", "kernel"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
  }
  for torch_prefix, flax_path in table.items():
    for suffix, (collection, leaf) in names.items():
      key = f"{torch_prefix}.{suffix}"
      if key not in state:
        continue
      value = state[key].numpy()
      node = variables[collection]
      for part in flax_path.split("/"):
        node = node[part]
      if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
      elif "norm" in flax_path and leaf == "kernel":
        leaf = "scale"
      assert node[leaf].shape == value.shape, key
      node[leaf] = value


def _relative_error(ours, theirs):
  theirs = np.asarray(theirs)
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@needs_torchvision
@pytest.mark.parametrize("output_stride", [32, 8])
def test_resnet50_backbone_matches_torchvision(tmp_path, output_stride):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = _randomize(
    torchvision.models.resnet50(replace_stride_with_dilation=[False, output_stride <= 16, output_stride <= 8])
  )
  path = str(tmp_path / "resnet50.pth")
  torch.save(net.state_dict(), path)
  cfg = make_config(name="fcn32s", backbone="resnet50", num_classes=21, output_stride=output_stride, pretrained=path)
  variables = pretrained.load_pretrained(abstract_variables(cfg), cfg)
  x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    y = torch.from_numpy(x)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
      y = getattr(net, name)(y)
  resnet = backbones.ResNet((3, 4, 6, 3), True, output_stride=output_stride)
  ours = resnet.apply(
    {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]},
    jnp.asarray(x.transpose(0, 2, 3, 1)),
    train=False,
  )["layer4"]
  error = _relative_error(ours, y.numpy().transpose(0, 2, 3, 1))
  print(f"resnet50 output stride {output_stride}: max abs diff / scale {error:.2e}")
  assert error <= 1e-4


@needs_torchvision
@pytest.mark.parametrize("name", ["deeplabv3", "fcn32s"])
def test_segmentation_model_matches_torchvision(tmp_path, name):
  import torch  # pylint: disable=g-import-not-at-top

  # pylint: disable-next=g-import-not-at-top
  from torchvision.models import segmentation

  torch.manual_seed(0)
  builder = segmentation.deeplabv3_resnet50 if name == "deeplabv3" else segmentation.fcn_resnet50
  net = _randomize(builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True))
  state = net.state_dict()
  backbone_state = {k[len("backbone.") :]: v.numpy() for k, v in state.items() if k.startswith("backbone.")}
  path = str(tmp_path / "backbone.npz")
  np.savez(path, **backbone_state)
  cfg = make_config(name=name, backbone="resnet50", num_classes=21, output_stride=8, aux_head=True, pretrained=path)
  model = models.create_model(cfg)
  variables = pretrained.load_pretrained(abstract_variables(cfg), cfg)
  _load_heads(variables, state, {**(_DEEPLAB_HEAD if name == "deeplabv3" else _FCN_HEAD), **_AUX_HEAD})
  x = np.random.default_rng(0).normal(size=(1, 3, 96, 96)).astype(np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x))
  # Eval mode returns the main logits; the aux head's output is captured.
  main, state = model.apply(
    variables,
    jnp.asarray(x.transpose(0, 2, 3, 1)),
    train=False,
    capture_intermediates=lambda module, _: module.name == "aux_classifier",
    mutable=["intermediates"],
  )
  aux = layers.resize_bilinear(state["intermediates"]["aux_classifier"]["__call__"][0], (96, 96))
  errors = {
    "out": _relative_error(main, theirs["out"].numpy().transpose(0, 2, 3, 1)),
    "aux": _relative_error(aux, theirs["aux"].numpy().transpose(0, 2, 3, 1)),
  }
  print(f"{name} resnet50: max abs diff / scale {errors}")
  assert max(errors.values()) <= 1e-4


@needs_torchvision
def test_vgg16_matches_torchvision(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = torchvision.models.vgg16().eval()
  suffix = ".safetensors" if HAS_SAFETENSORS else ".pth"
  path = str(tmp_path / f"vgg16{suffix}")
  if HAS_SAFETENSORS:
    # pylint: disable-next=g-import-not-at-top
    from safetensors.torch import save_file

    save_file(net.state_dict(), path)
  else:
    torch.save(net.state_dict(), path)
  cfg = make_config(name="fcn8s", backbone="vgg16", num_classes=21, pretrained=path)
  variables = pretrained.load_pretrained(abstract_variables(cfg), cfg)
  x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    t = torch.from_numpy(x)
    pool3 = net.features[:17](t)
    pool4 = net.features[17:24](pool3)
    pool5 = net.features[24:](pool4)
    fc7 = net.classifier[:5](torch.flatten(net.avgpool(pool5), 1))
  ours = backbones.VGG16().apply(
    {"params": variables["params"]["backbone"]}, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False
  )
  errors = {
    "pool3": _relative_error(ours["pool3"], pool3.numpy().transpose(0, 2, 3, 1)),
    "pool4": _relative_error(ours["pool4"], pool4.numpy().transpose(0, 2, 3, 1)),
    # fc6 sees the whole 7x7 pool5 map at the centre pixel only.
    "fc7": _relative_error(ours["fc7"][:, 3, 3], fc7.numpy()),
  }
  print(f"vgg16 ({suffix}): max abs diff / scale {errors}")
  assert max(errors.values()) <= 1e-4
