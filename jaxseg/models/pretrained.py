"""Loads torchvision ImageNet weights into the FCN/DeepLab backbones.

`config.model.pretrained` names a local file holding the `state_dict` of a
torchvision `resnet18/34/50/101` or `vgg16` classifier (the one matching
`config.model.backbone`): a `.pth` file (read with torch, which must be
installed), a `.safetensors` file (read with the `safetensors` package) or a
`.npz` archive of the same arrays under the same keys (numpy only). Nothing
is ever downloaded.

Conversions: convolution kernels `[O, I, kh, kw]` -> `[kh, kw, I, O]`;
batch-norm `weight`/`bias` -> params `scale`/`bias`, `running_mean`/
`running_var` -> `batch_stats` `mean`/`var`; VGG's `classifier.0` (fc6,
`[4096, 512 * 7 * 7]`) -> a 7x7 convolution and `classifier.3` (fc7) -> a 1x1
convolution. The ImageNet classifier (`fc`, `classifier.6`) and
`num_batches_tracked` are not used. When the model takes `C_in != 3` input
channels the first convolution is adapted as in timm: summed over RGB for
one channel, otherwise RGB repeated to `C_in` channels and scaled by
`3 / C_in`. Images must then be normalised as the ImageNet weights expect.
"""

import os
import re

import jax
import ml_collections
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.errors import DataError
from jaxseg.models import backbones

# torchvision VGG16 `features` indices of the 13 convolutions, in order.
_VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_CONV_NAMES = tuple(f"conv{stage + 1}_{i + 1}" for stage, n in enumerate(backbones.VGG16.STAGES) for i in range(n))
# Keys of a torchvision classifier that a backbone does not use.
_UNUSED_KEY = re.compile(r"^(fc\.(weight|bias)|classifier\.6\.(weight|bias)|.*num_batches_tracked)$")
# Models with a `backbone` module (pretrained weights, train.freeze_backbone, train.backbone_lr_multiplier).
BACKBONE_MODELS = ("fcn32s", "fcn16s", "fcn8s", "deeplabv3", "deeplabv3plus")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state_dict from `.pth`, `.safetensors` or `.npz` into numpy."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: config.model.pretrained file does not exist")
  extension = os.path.splitext(path)[1].lower()
  if extension in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise DataError(
        f"{path}: reading .pth weights needs torch; install it or convert the file to .safetensors or .npz"
      ) from None
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{path}: not a readable torch file ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
      raise DataError(f"{path}: expected a state_dict of tensors")
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}
  if extension == ".safetensors":
    try:
      # pylint: disable-next=g-import-not-at-top
      from safetensors import numpy as safetensors_numpy
    except ImportError:
      raise DataError(f"{path}: reading .safetensors weights needs the safetensors package; install it") from None
    try:
      return dict(safetensors_numpy.load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{path}: not a readable safetensors file ({e})") from None
  if extension == ".npz":
    try:
      with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{path}: not a readable .npz file ({e})") from None
  raise DataError(f"{path}: unsupported weights format {extension!r}; expected .pth, .safetensors or .npz")


def infer_backbone(state_dict: dict[str, np.ndarray], path: str = "") -> str:
  """The torchvision classifier a state_dict belongs to: resnet18/34/50/101 or vgg16.

  ResNets are told apart by their blocks (`layerN.B.conv3` only in the
  bottleneck ResNets 50/101) and the number of blocks of layer3 (2, 6, 6,
  23); VGG16 by its `features.28` convolution.

  Raises:
    DataError: naming `path` when the keys fit none of them.
  """
  if "features.28.weight" in state_dict:
    return "vgg16"
  blocks = {int(key.split(".")[1]) for key in state_dict if key.startswith("layer3.")}
  bottleneck = any(key.startswith("layer1.0.conv3.") for key in state_dict)
  names = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50", (23, True): "resnet101"}
  name = names.get((len(blocks), bottleneck))
  if name is None:
    raise DataError(
      f"{path}: not the state_dict of a torchvision resnet18/34/50/101 or vgg16 "
      f"({len(blocks)} layer3 blocks, bottleneck {bottleneck})"
    )
  return name


def _resnet_key(path: tuple[str, ...], collection: str) -> str:
  """torchvision key of a ResNet variable at `path` (module names, leaf)."""
  *modules, leaf = path
  parts = []
  for module in modules:
    match = re.fullmatch(r"(layer\d)_(\d+)", module)
    if match:
      parts += list(match.groups())
    elif module == "downsample_conv":
      parts += ["downsample", "0"]
    elif module == "downsample_bn":
      parts += ["downsample", "1"]
    else:
      parts.append(module)
  names = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
  }
  return ".".join(parts + [names[collection][leaf]])


def _vgg_key(path: tuple[str, ...]) -> str:
  """torchvision key of a VGG16 parameter at `path` (module name, leaf)."""
  module, leaf = path
  suffix = "weight" if leaf == "kernel" else "bias"
  if module == "fc6":
    return f"classifier.0.{suffix}"
  if module == "fc7":
    return f"classifier.3.{suffix}"
  index = _VGG_CONV_INDICES[_VGG_CONV_NAMES.index(module)]
  return f"features.{index}.{suffix}"


def _adapt_input_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
  """First-layer kernel `[kh, kw, 3, O]` for `channels` inputs (timm rule)."""
  if channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  repeats = -(-channels // kernel.shape[2])
  return np.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (kernel.shape[2] / channels)


def _to_flax(key: str, value: np.ndarray, target_shape: tuple[int, ...], first_conv: bool, path: str) -> np.ndarray:
  """Converts the torch array `value` of `key` to `target_shape`."""
  if value.ndim == 4:  # Conv weight [O, I, kh, kw].
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2:  # Linear weight [O, I] of fc6 / fc7.
    out_features, in_features = value.shape
    kh, kw, channels, _ = target_shape
    if kh * kw * channels != in_features:
      raise DataError(f"{path}: {key} has shape {value.shape}, expected ({target_shape[-1]}, {kh * kw * channels})")
    value = value.reshape(out_features, channels, kh, kw).transpose(2, 3, 1, 0)
  if first_conv and value.ndim == 4 and value.shape[2] != target_shape[2]:
    value = _adapt_input_channels(value, target_shape[2])
  if value.shape != tuple(target_shape):
    raise DataError(f"{path}: {key} has shape {value.shape} after conversion, the model expects {tuple(target_shape)}")
  return value.astype(np.float32)


def load_backbone_weights(variables: dict, state_dict: dict[str, np.ndarray], backbone: str, path: str) -> dict:
  """Returns `variables` with `params/backbone` (and `batch_stats/backbone`)
  replaced by the torchvision `state_dict` of the classifier `backbone`.

  Raises DataError naming `path` and the key for missing, unexpected or
  mis-shaped entries.
  """
  first_conv = "conv1_1" if backbone == "vgg16" else "conv1"
  used = set()
  new = {}
  for collection in ("params", "batch_stats"):
    if collection not in variables or "backbone" not in variables[collection]:
      continue

    def convert(tree_path, target, collection=collection):
      names = tuple(entry.key for entry in tree_path)
      key = _vgg_key(names) if backbone == "vgg16" else _resnet_key(names, collection)
      if key not in state_dict:
        raise DataError(f"{path}: missing key {key!r} (a torchvision {backbone} state_dict is expected)")
      used.add(key)
      return _to_flax(key, np.asarray(state_dict[key]), target.shape, names[0] == first_conv, path)

    new[collection] = jax.tree_util.tree_map_with_path(convert, variables[collection]["backbone"])
  unexpected = sorted(k for k in state_dict if k not in used and not _UNUSED_KEY.match(k))
  if unexpected:
    raise DataError(
      f"{path}: unexpected key {unexpected[0]!r} (and {len(unexpected) - 1} more) for backbone {backbone!r}"
    )
  result = dict(variables)
  for collection, tree in new.items():
    result[collection] = {**variables[collection], "backbone": tree}
  return result


def load_pretrained(variables: dict, model_config: ml_collections.ConfigDict) -> dict:
  """Model variables with the backbone replaced from `config.model.pretrained`.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` of the model built from
      `model_config` (for example from `model.init`).
    model_config: `config.model`; `pretrained` is the weights file.

  Returns:
    The same structure with `params['backbone']` and `batch_stats['backbone']`
    holding the converted weights (float32 numpy arrays); other entries are
    unchanged. `variables` itself when `pretrained` is ''.
  """
  path = model_config.pretrained
  if not path:
    return variables
  if model_config.name not in BACKBONE_MODELS:
    raise ConfigError(
      f"config.model.pretrained is set but model "
      f"{model_config.name!r} has no pretrained backbone; "
      f"use one of {', '.join(BACKBONE_MODELS)}"
    )
  if model_config.backbone != "vgg16" and model_config.norm != "batch":
    raise ConfigError(
      f"config.model.pretrained needs config.model.norm="
      f"'batch' (ImageNet ResNets use batch norm), got "
      f"{model_config.norm!r}"
    )
  return load_backbone_weights(variables, read_state_dict(path), model_config.backbone, path)
