"""DeepLabv3 (Chen et al., 2017) and DeepLabv3+ (Chen et al., 2018).

A ResNet whose last stages trade stride for dilation (output stride 8 or 16)
feeds atrous spatial pyramid pooling (ASPP): a 1x1 branch, three 3x3 atrous
branches (rates 12/24/36 at output stride 8, 6/12/18 at 16) and an
image-pooling branch, each 256 channels with norm and ReLU, concatenated and
projected by a 1x1 convolution (norm, ReLU, dropout 0.5).

The image-pooling branch works on a 1x1 map (the global average of the
features). Batch norm (statistics over the batch, as torchvision), group and
layer norm (over channels) are defined there and are used as configured.
Instance norm is not: it normalises each channel over the spatial axes, and
on a 1x1 map x - mean(x) = 0, so the branch would output ReLU(offset) for
every image. With `norm="instance"` (and `"none"`) the branch is therefore
convolution + bias + ReLU without a norm, as detectron2's ASPP does for that
branch in every configuration. Layer norm was not chosen as the stand-in: on
the pooled vector it would remove the overall magnitude of the image's global
descriptor, the one thing the branch adds to the local ones.

- DeepLabv3 (as torchvision's `deeplabv3_resnet50/101`): ASPP, 3x3
  convolution (256, norm, ReLU), 1x1 classifier, bilinear upsampling to the
  input size. Parameter counts equal torchvision's (21 classes, ResNet-50:
  39,638,869; with the auxiliary head 42,004,074).
- DeepLabv3+: the ASPP output is bilinearly upsampled to the stride-4
  features of stage 1, concatenated with their 48-channel 1x1 projection
  (norm, ReLU) and refined by two 3x3 convolutions (256, norm, ReLU) before
  the 1x1 classifier and the upsampling to the input size.
- `aux_head`: torchvision's FCN head on stage 3 (`aux_classifier`);
  `train=True` then returns `[main_logits, aux_logits]`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import backbones
from jaxseg.models import layers
from jaxseg.models.fcn import FCNHead

Array = jax.Array

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
OUTPUT_STRIDES = tuple(ASPP_RATES)


# Norms whose statistics exist on the 1x1 map of the image-pooling branch.
POOLING_NORMS = ("batch", "group", "layer")


class ConvNormReLU(nn.Module):
  """Convolution (optionally atrous, bias only if `use_bias`), norm, ReLU; keeps h, w."""

  features: int
  kernel_size: int = 1
  rate: int = 1
  norm: str = "batch"
  norm_groups: int = 8
  use_bias: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = layers.atrous_conv(
      self.features, self.rate, kernel_size=self.kernel_size, use_bias=self.use_bias, dtype=self.dtype, name="conv"
    )(x)
    x = layers.norm_layer(self.norm, train=train, dtype=self.dtype, groups=self.norm_groups, name="norm")(x)
    return nn.relu(x)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: `[B, h, w, C] -> [B, h, w, features]`."""

  rates: tuple[int, ...]
  features: int = 256
  dropout: float = 0.5
  norm: str = "batch"
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    def branch(name, kernel_size=1, rate=1):
      return ConvNormReLU(
        self.features, kernel_size, rate, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name=name
      )

    outputs = [branch("conv1x1")(x, train=train)]
    for index, rate in enumerate(self.rates):
      outputs.append(branch(f"atrous{index}", 3, rate)(x, train=train))
    pooling_norm = self.norm if self.norm in POOLING_NORMS else "none"
    pooled = ConvNormReLU(
      self.features,
      norm=pooling_norm,
      norm_groups=self.norm_groups,
      use_bias=pooling_norm == "none",
      dtype=self.dtype,
      name="pooling",
    )(jnp.mean(x, axis=(1, 2), keepdims=True), train=train)
    outputs.append(jnp.broadcast_to(pooled, outputs[0].shape))
    x = branch("project")(jnp.concatenate(outputs, axis=-1), train=train)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class DeepLab(nn.Module):
  """DeepLabv3(+): `[B, H, W, C_in]` float -> logits `[B, H, W, classes]`.

  Any H, W: the input is zero padded to a multiple of `output_stride` and the
  logits are cropped back.
  """

  num_classes: int
  plus: bool = False
  backbone: str = "resnet50"
  backbone_width: int = 64
  output_stride: int = 8
  norm: str = "batch"
  norm_groups: int = 8
  aux_head: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | list[Array]:
    x, spatial = layers.pad_to_multiple(x.astype(self.dtype), self.output_stride)
    features = backbones.create_backbone(
      self.backbone,
      width=self.backbone_width,
      output_stride=self.output_stride,
      norm=self.norm,
      norm_groups=self.norm_groups,
      dtype=self.dtype,
    )(x, train=train)
    if self.plus:
      logits = DeepLabV3PlusHead(
        self.num_classes,
        ASPP_RATES[self.output_stride],
        norm=self.norm,
        norm_groups=self.norm_groups,
        dtype=self.dtype,
        name="classifier",
      )(features["layer4"], features["layer1"], train=train)
    else:
      logits = DeepLabV3Head(
        self.num_classes,
        ASPP_RATES[self.output_stride],
        norm=self.norm,
        norm_groups=self.norm_groups,
        dtype=self.dtype,
        name="classifier",
      )(features["layer4"], train=train)
    outputs = [logits]
    if self.aux_head:
      outputs.append(
        FCNHead(
          self.num_classes, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name="aux_classifier"
        )(features["layer3"], train=train)
      )
    outputs = [
      layers.crop_spatial(layers.resize_bilinear(o, x.shape[1:3]), spatial).astype(jnp.float32) for o in outputs
    ]
    return outputs if train and self.aux_head else outputs[0]


class DeepLabV3Head(nn.Module):
  """ASPP, 3x3 conv-norm-ReLU, 1x1 classifier; keeps h, w."""

  num_classes: int
  rates: tuple[int, ...]
  norm: str = "batch"
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = ASPP(self.rates, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name="aspp")(x, train=train)
    x = ConvNormReLU(256, 3, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name="refine")(
      x, train=train
    )
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="score")(x)


class DeepLabV3PlusHead(nn.Module):
  """ASPP on `high` `[B, h, w, C]`, decoder with `low` `[B, 4h', 4w', C_low]`.

  Returns logits at the resolution of `low`.
  """

  num_classes: int
  rates: tuple[int, ...]
  norm: str = "batch"
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, high: Array, low: Array, *, train: bool) -> Array:
    def conv_norm_relu(features, kernel_size, name):
      return ConvNormReLU(
        features, kernel_size, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name=name
      )

    high = ASPP(self.rates, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name="aspp")(
      high, train=train
    )
    low = conv_norm_relu(48, 1, "low_project")(low, train=train)
    x = jnp.concatenate([layers.resize_bilinear(high, low.shape[1:3]), low], axis=-1)
    x = conv_norm_relu(256, 3, "refine0")(x, train=train)
    x = conv_norm_relu(256, 3, "refine1")(x, train=train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="score")(x)
