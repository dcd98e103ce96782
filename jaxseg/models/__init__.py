"""Model zoo: an explicit registry of segmentation networks.

`REGISTRY` is the one table `name -> ModelEntry(create, spatial_dims)`;
`MODELS` (name -> constructor) is a read-only view of it.

Every model is a `flax.linen.Module` called as `model.apply(variables, x,
train=...)` on float inputs `[B, H, W, C_in]` (2D) or `[B, D, H, W, C_in]`
(3D) of any spatial size and any number of channels, returning float32 logits
of the input's spatial size with `num_classes` channels. Batch-norm
statistics live in the `batch_stats` collection; dropout draws from the rng
named `dropout`.

In train mode a model may return a list of logit maps instead of one array:
deep supervision (U-Nets with `deep_supervision=True`: full resolution first,
then each lower decoder resolution l, cropped to the shape of
`labels[:, ::f_H, ::f_W]` with `f` the product of the first l pooling
factors per axis, `2**l` unless `pool_factors` says otherwise) or an auxiliary head (FCN/DeepLab with
`aux_head=True`: `[main, aux]`, both at input resolution).
`output_weights(config.model)` gives the loss weight of each returned map.
"""

from collections.abc import Callable, Mapping
import types
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.models import backbones
from jaxseg.models import layers
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.deeplab import DeepLab
from jaxseg.models.deeplab import OUTPUT_STRIDES as DEEPLAB_OUTPUT_STRIDES
from jaxseg.models.fcn import FCN
from jaxseg.models.unet import UNet
from jaxseg.models.unet3d import UNet3D

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
  """Every key any model reads, with its default (used as `config.model`)."""
  return ml_collections.ConfigDict(
    {
      # Registry name, one of REGISTRY.
      "name": "unet",
      "num_classes": 5,
      # U-Nets: channels of the first stage, doubled at every downsampling
      # and capped at max_features (nnU-Net 3D: 32 capped at 320).
      "features": 32,
      # U-Nets: number of downsamplings (the input is padded to a multiple
      # of 2**depth, or of the product of pool_factors per axis).
      "depth": 4,
      # U-Nets: per downsampling (`depth` entries), the pooling factor of
      # each spatial axis, 1 or 2: nnU-Net's strides without its first
      # stage, e.g. ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)) pools a thick
      # z axis only once the in-plane spacing has caught up. Used by max
      # pooling / strided convolutions, transposed convolutions, attention
      # gates and deep supervision. () = 2 on every axis (isotropic). Set by
      # the plan (config.plan.enabled); data.patch_size must be divisible by
      # the product of the factors along each axis.
      "pool_factors": (),
      # U-Nets: per resolution level (`depth + 1` entries, the bottleneck
      # last), the convolution kernel of each spatial axis (odd), shared by
      # the encoder and decoder blocks of that level: nnU-Net's kernel sizes,
      # e.g. (1, 3, 3) on the first levels of thick-slice data. () = 3 on
      # every axis. Set by the plan.
      "kernel_sizes": (),
      "max_features": 512,
      # batch | instance | group | layer | none. Used by U-Nets, ResNet
      # backbones and the FCN/DeepLab heads (VGG16 has no normalisation).
      "norm": "batch",
      # Groups of norm="group"; must divide every channel count.
      "norm_groups": 8,
      # relu | leaky_relu (slope 0.01) | gelu | silu. U-Nets only; ResNet,
      # VGG, FCN and DeepLab use ReLU as published.
      "activation": "relu",
      # U-Nets: dropout rate after the bottleneck and every decoder block.
      # FCN and DeepLab heads keep their published rates (0.5 in VGG
      # fc6/fc7 and the ASPP projection, 0.1 in the FCN head).
      "dropout": 0.0,
      # U-Nets: in train mode return one logit map per decoder stage.
      "deep_supervision": False,
      # Compute dtype of activations and convolutions: float32 | bfloat16
      # (mixed precision: parameters, optimiser state, logits and the loss
      # stay float32). float16 is not offered: without loss scaling its
      # gradients underflow.
      "dtype": "float32",
      # U-Nets: rematerialise (nn.remat) each encoder/decoder block, keeping
      # only block inputs for the backward pass: less peak memory for about
      # one more forward pass of compute.
      "remat": False,
      # 3D models: auto | native | folded. "folded" computes each 3D
      # convolution as one 2D convolution with the depth taps gathered into
      # channels (XLA:CPU's 3D convolution is ~10x slower per FLOP than its
      # 2D one); "auto" folds on the CPU backend only. Same parameters and
      # results, so checkpoints move freely between the two.
      "conv3d": "auto",
      # FCN/DeepLab: resnet18 | resnet34 | resnet50 | resnet101 | vgg16
      # (vgg16: FCN only).
      "backbone": "resnet50",
      # Channels of the backbone's first stage (64 in torchvision; smaller
      # values give tiny models for tests and quick runs).
      "backbone_width": 64,
      # ResNet backbones: input size / feature size; later stages trade
      # stride for dilation. DeepLab: 8 or 16; FCN-32s: 8, 16 or 32
      # (FCN-16s/8s always run the backbone at 32 to fuse 32 -> 16 -> 8).
      "output_stride": 8,
      # FCN/DeepLab on ResNet: auxiliary FCN head on stage 3 (train mode
      # returns [main, aux], loss weights [1.0, 0.5]).
      "aux_head": False,
      # Path of torchvision ImageNet weights (.pth state_dict or
      # .safetensors) for the backbone; '' for random initialisation.
      "pretrained": "",
    }
  )


def _get(cfg: ml_collections.ConfigDict, key: str):
  if key not in cfg:
    raise ConfigError(f"config.model.{key} is missing")
  return cfg[key]


def choice(cfg: ml_collections.ConfigDict, key: str, options: tuple[str, ...]) -> str:
  """Returns `cfg[key]`, checked to be one of `options`."""
  value = _get(cfg, key)
  if value not in options:
    raise ConfigError(f"config.model.{key}={value!r} is not one of {', '.join(map(str, options))}")
  return value


def positive_int(cfg: ml_collections.ConfigDict, key: str) -> int:
  """Returns `cfg[key]`, checked to be an integer >= 1."""
  value = _get(cfg, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"config.model.{key}={value!r} must be an integer >= 1")
  return value


def flag(cfg: ml_collections.ConfigDict, key: str) -> bool:
  """Returns `cfg[key]`, checked to be a bool."""
  value = _get(cfg, key)
  if not isinstance(value, bool):
    raise ConfigError(f"config.model.{key}={value!r} must be True or False")
  return value


def rate(cfg: ml_collections.ConfigDict, key: str) -> float:
  """Returns `cfg[key]`, checked to be a probability in [0, 1)."""
  value = _get(cfg, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1):
    raise ConfigError(f"config.model.{key}={value!r} must be in [0, 1)")
  return float(value)


def compute_dtype(cfg: ml_collections.ConfigDict) -> layers.Dtype:
  """The jnp dtype named by `cfg.dtype`."""
  if _get(cfg, "dtype") == "float16":
    raise ConfigError(
      "config.model.dtype='float16' is not supported: float16 training "
      "needs loss scaling, which jaxseg does not do; use 'bfloat16' "
      "(float32's exponent range, the same speed on current accelerators)"
    )
  return _DTYPES[choice(cfg, "dtype", tuple(_DTYPES))]


def norm_settings(cfg: ml_collections.ConfigDict, widths: tuple[int, ...]) -> tuple[str, int]:
  """Returns `(norm, norm_groups)`, checking the groups divide `widths`."""
  norm = choice(cfg, "norm", layers.NORMS)
  groups = positive_int(cfg, "norm_groups")
  if norm == "group":
    for width in widths:
      if width % groups:
        raise ConfigError(
          f"config.model.norm_groups={groups} does not divide the {width} channels of a layer of {cfg.get('name')!r}"
        )
  return norm, groups


def no_extra_outputs(cfg: ml_collections.ConfigDict, *keys: str) -> None:
  """Rejects output options (`deep_supervision`, `aux_head`) a model lacks."""
  for key in keys:
    if flag(cfg, key):
      raise ConfigError(f"config.model.{key}=True is not supported by model {cfg.name!r}")


def _level_tuples(cfg: ml_collections.ConfigDict, key: str, levels: int, what: str) -> tuple[tuple[int, ...], ...]:
  """`cfg[key]` as `levels` tuples of one int per spatial axis (() kept)."""
  value = _get(cfg, key)
  if not value:
    return ()
  ndim = spatial_dims(cfg.name)
  try:
    rows = tuple(tuple(v for v in row) for row in value)
  except TypeError:
    rows = None
  if (
    rows is None
    or len(rows) != levels
    or any(len(row) != ndim or any(isinstance(v, bool) or not isinstance(v, int) for v in row) for row in rows)
  ):
    raise ConfigError(
      f"config.model.{key}={_plain(value)!r} must be {levels} tuples "
      f"({what}) of {ndim} integers (one per spatial axis of the {ndim}D "
      f"model {cfg.name!r}), or () for the default"
    )
  return rows


def _plain(value):
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def pool_factors(cfg: ml_collections.ConfigDict) -> tuple[tuple[int, ...], ...]:
  """`config.model.pool_factors`, checked against `depth` and the model's axes.

  Returns () (2 on every axis) or `depth` tuples of 1s and 2s.
  """
  depth = positive_int(cfg, "depth")
  factors = _level_tuples(cfg, "pool_factors", depth, f"one per downsampling, config.model.depth={depth}")
  for level, factor in enumerate(factors):
    if any(f not in (1, 2) for f in factor):
      raise ConfigError(
        f"config.model.pool_factors: downsampling {level} has factors {factor}; each axis is pooled by 1 or 2"
      )
  return factors


def kernel_sizes(cfg: ml_collections.ConfigDict) -> tuple[tuple[int, ...], ...]:
  """`config.model.kernel_sizes`, checked: () or `depth + 1` tuples of odd sizes."""
  depth = positive_int(cfg, "depth")
  kernels = _level_tuples(cfg, "kernel_sizes", depth + 1, f"one per level, config.model.depth={depth} + 1")
  for level, kernel in enumerate(kernels):
    if any(k < 1 or k % 2 == 0 for k in kernel):
      raise ConfigError(f"config.model.kernel_sizes: level {level} has kernel {kernel}; sizes must be odd and >= 1")
  return kernels


def no_unet_geometry(cfg: ml_collections.ConfigDict) -> None:
  """Refuses `pool_factors` / `kernel_sizes` for models that are not U-Nets."""
  for key in ("pool_factors", "kernel_sizes"):
    if _get(cfg, key):
      raise ConfigError(
        f"config.model.{key}={_plain(cfg[key])!r} is only used by the "
        f"U-Nets (unet, unet3d, attention_unet), not by model "
        f"{cfg.name!r}; set it to ()"
      )


def check_patch_size(cfg: ml_collections.ConfigDict, patch_size) -> None:
  """Refuses a patch not divisible by the product of `pool_factors` per axis.

  Only for an explicit `config.model.pool_factors` (the planned topology);
  with () the U-Nets zero pad any size to a multiple of 2**depth. Also
  checks `pool_factors` and `kernel_sizes` themselves (U-Nets) or their
  absence (other models).
  """
  if _check_name(_get(cfg, "name")) not in ("unet", "unet3d", "attention_unet"):
    no_unet_geometry(cfg)
    return
  factors = pool_factors(cfg)
  kernel_sizes(cfg)
  if not factors:
    return
  patch = tuple(int(p) for p in patch_size)
  scale = [1] * len(patch)
  for factor in factors:
    scale = [s * f for s, f in zip(scale, factor)]
  bad = [axis for axis, (p, s) in enumerate(zip(patch, scale)) if p % s]
  if bad:
    raise ConfigError(
      f"config.data.patch_size={patch} is not divisible by the product of "
      f"config.model.pool_factors per axis, {tuple(scale)} (axis "
      f"{', '.join(map(str, bad))}); use a patch of multiples of "
      f"{tuple(scale)} or other pool_factors / depth"
    )


def unet_fields(cfg: ml_collections.ConfigDict) -> dict:
  """U-Net constructor arguments from the config (all three U-Nets)."""
  features = positive_int(cfg, "features")
  max_features = positive_int(cfg, "max_features")
  norm, groups = norm_settings(cfg, (features, max_features))
  no_extra_outputs(cfg, "aux_head")
  return dict(
    num_classes=positive_int(cfg, "num_classes"),
    features=features,
    depth=positive_int(cfg, "depth"),
    max_features=max_features,
    norm=norm,
    norm_groups=groups,
    activation=choice(cfg, "activation", layers.ACTIVATIONS),
    dropout=rate(cfg, "dropout"),
    deep_supervision=flag(cfg, "deep_supervision"),
    dtype=compute_dtype(cfg),
    conv3d=choice(cfg, "conv3d", layers.CONV3D_IMPLS),
    remat=flag(cfg, "remat"),
    pool_factors=pool_factors(cfg),
    kernel_sizes=kernel_sizes(cfg),
  )


def unet(cfg: ml_collections.ConfigDict) -> nn.Module:
  """2D U-Net."""
  return UNet(**unet_fields(cfg))


def unet3d(cfg: ml_collections.ConfigDict) -> nn.Module:
  """nnU-Net-style 3D U-Net."""
  return UNet3D(**unet_fields(cfg))


def attention_unet(cfg: ml_collections.ConfigDict) -> nn.Module:
  """2D Attention U-Net."""
  return AttentionUNet(**unet_fields(cfg))


def backbone_fields(
  cfg: ml_collections.ConfigDict,
  names: tuple[str, ...],
  output_strides: tuple[int, ...],
  head_widths: tuple[int, ...] = (),
) -> dict:
  """Constructor arguments shared by the backbone models (FCN, DeepLab)."""
  no_extra_outputs(cfg, "deep_supervision")
  no_unet_geometry(cfg)
  backbone = choice(cfg, "backbone", names)
  width = positive_int(cfg, "backbone_width")
  norm, groups = norm_settings(cfg, (width, *head_widths))
  output_stride = _get(cfg, "output_stride")
  if backbone != "vgg16" and output_stride not in output_strides:
    raise ConfigError(
      f"config.model.output_stride={output_stride!r} is not "
      f"one of {', '.join(map(str, output_strides))} for "
      f"model {cfg.name!r}"
    )
  aux_head = flag(cfg, "aux_head")
  if aux_head and backbone == "vgg16":
    raise ConfigError("config.model.aux_head=True needs a ResNet config.model.backbone, not 'vgg16'")
  return dict(
    num_classes=positive_int(cfg, "num_classes"),
    backbone=backbone,
    backbone_width=width,
    output_stride=output_stride,
    norm=norm,
    norm_groups=groups,
    aux_head=aux_head,
    dtype=compute_dtype(cfg),
  )


def fcn(num_skips: int) -> Callable[[ml_collections.ConfigDict], nn.Module]:
  """Factory of FCN-32s (0 skips), FCN-16s (1) or FCN-8s (2)."""

  def create(cfg: ml_collections.ConfigDict) -> nn.Module:
    return FCN(num_skips=num_skips, **backbone_fields(cfg, backbones.BACKBONES, backbones.RESNET_OUTPUT_STRIDES))

  return create


def deeplab(plus: bool) -> Callable[[ml_collections.ConfigDict], nn.Module]:
  """Factory of DeepLabv3 or (plus) DeepLabv3+."""

  def create(cfg: ml_collections.ConfigDict) -> nn.Module:
    return DeepLab(
      plus=plus, **backbone_fields(cfg, tuple(backbones.RESNETS), DEEPLAB_OUTPUT_STRIDES, head_widths=(48, 256))
    )

  return create


class ModelEntry(NamedTuple):
  """One row of the model table.

  Attributes:
    create: builds the `flax.linen.Module` from `config.model`.
    spatial_dims: 2 for inputs `[B, H, W, C]`, 3 for `[B, D, H, W, C]`.
  """

  create: Callable[[ml_collections.ConfigDict], nn.Module]
  spatial_dims: int


# The one model table: config.model.name -> (constructor, spatial dimensions).
REGISTRY: Mapping[str, ModelEntry] = types.MappingProxyType(
  {
    "unet": ModelEntry(unet, 2),
    "unet3d": ModelEntry(unet3d, 3),
    "attention_unet": ModelEntry(attention_unet, 2),
    "fcn32s": ModelEntry(fcn(0), 2),
    "fcn16s": ModelEntry(fcn(1), 2),
    "fcn8s": ModelEntry(fcn(2), 2),
    "deeplabv3": ModelEntry(deeplab(plus=False), 2),
    "deeplabv3plus": ModelEntry(deeplab(plus=True), 2),
  }
)

# name -> constructor, a read-only view of REGISTRY (`name in MODELS`, iteration in table order).
MODELS: Mapping[str, Callable[[ml_collections.ConfigDict], nn.Module]] = types.MappingProxyType(
  {name: entry.create for name, entry in REGISTRY.items()}
)


def _check_name(name: str) -> str:
  if name not in REGISTRY:
    raise ConfigError(f"config.model.name={name!r} is not a model; valid names: {', '.join(REGISTRY)}")
  return name


def create_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the model `model_config.name` from `config.model`."""
  return REGISTRY[_check_name(_get(model_config, "name"))].create(model_config)


def spatial_dims(name: str) -> int:
  """2 for models of `[B, H, W, C]` inputs, 3 for `[B, D, H, W, C]`."""
  return REGISTRY[_check_name(name)].spatial_dims


def deep_supervision_weights(num_outputs: int) -> list[float]:
  """nnU-Net's loss weights: 1/2**i, the lowest resolution 0, sum 1."""
  weights = [0.5**i for i in range(num_outputs)]
  if num_outputs > 1:
    weights[-1] = 0.0
  total = sum(weights)
  return [w / total for w in weights]


def output_weights(model_config: ml_collections.ConfigDict) -> list[float]:
  """Loss weight of each logit map the model returns in train mode.

  Deep supervision: `deep_supervision_weights(depth)`; auxiliary head:
  `[1.0, 0.5]` (torchvision's weighting); otherwise `[1.0]`.
  """
  model = create_model(model_config)
  if getattr(model, "deep_supervision", False):
    return deep_supervision_weights(model.depth)
  if getattr(model, "aux_head", False):
    return [1.0, 0.5]
  return [1.0]
