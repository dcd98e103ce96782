"""Classification backbones for FCN and DeepLab: ResNet and VGG16.

Both follow torchvision's architectures and parameter names closely enough
that an ImageNet state_dict maps onto them one to one (see pretrained.py):

- ResNet-18/34 (basic blocks) and ResNet-50/101 (bottleneck blocks, stride
  on the 3x3 convolution, "ResNet v1.5"). `output_stride` 16 or 8 replaces
  the stride of stage 4 (and 3) by dilation exactly as torchvision's
  `replace_stride_with_dilation`: the first block of a dilated stage keeps the
  previous dilation, the others use the new one. Submodules are named as the
  torchvision keys: `conv1`, `bn1`, `layer{i}_{j}` with `conv1..3`,
  `bn1..3`, `downsample_conv`, `downsample_bn` (the norm layers keep the
  `bn` names whatever `norm` is).
- VGG16 (no batch norm) with Long et al.'s convolutionalised classifier:
  `conv{s}_{i}` (3x3, ReLU), 2x2 max pooling after each stage, `fc6` (7x7,
  `64 * width` channels; 4096 in torchvision) and `fc7` (1x1), each with ReLU
  and dropout 0.5.

`width` scales every channel count (64 in torchvision); smaller widths give
tiny networks for tests.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

Array = jax.Array

# name -> (blocks per stage, block type).
RESNETS = {
  "resnet18": ((2, 2, 2, 2), "basic"),
  "resnet34": ((3, 4, 6, 3), "basic"),
  "resnet50": ((3, 4, 6, 3), "bottleneck"),
  "resnet101": ((3, 4, 23, 3), "bottleneck"),
}
BACKBONES = (*RESNETS, "vgg16")
# ResNet output strides: 32 is the plain network.
RESNET_OUTPUT_STRIDES = (8, 16, 32)
VGG_OUTPUT_STRIDE = 32

# torchvision's ResNet init: He normal with fan_out.
_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNetBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block.

  `[B, H, W, C] -> [B, H / strides, W / strides, planes * expansion]`.
  """

  planes: int
  bottleneck: bool
  strides: int = 1
  dilation: int = 1
  norm: str = "batch"
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    def conv(features, kernel, name, strides=1, dilation=1):
      return layers.conv(
        features, kernel, strides=strides, dilation=dilation, dtype=self.dtype, kernel_init=_he_fan_out, name=name
      )

    def norm(name):
      return layers.norm_layer(self.norm, train=train, dtype=self.dtype, groups=self.norm_groups, name=name)

    out_features = self.planes * (4 if self.bottleneck else 1)
    if self.bottleneck:
      y = nn.relu(norm("bn1")(conv(self.planes, 1, "conv1")(x)))
      y = nn.relu(norm("bn2")(conv(self.planes, 3, "conv2", self.strides, self.dilation)(y)))
      y = norm("bn3")(conv(out_features, 1, "conv3")(y))
    else:
      y = nn.relu(norm("bn1")(conv(self.planes, 3, "conv1", self.strides, self.dilation)(x)))
      y = norm("bn2")(conv(self.planes, 3, "conv2", 1, self.dilation)(y))
    if self.strides != 1 or x.shape[-1] != out_features:
      x = norm("downsample_bn")(conv(out_features, 1, "downsample_conv", self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet feature extractor: `[B, H, W, C_in]` -> dict of feature maps.

  Returns `layer1` (stride 4), `layer2` (stride 8), `layer3` (stride
  min(16, output_stride)) and `layer4` (stride output_stride), each
  `[B, H / stride, W / stride, C]` for H, W divisible by the output stride
  (and by 4). The classification head (avgpool, fc) is not part of it.
  """

  stage_sizes: tuple[int, ...]
  bottleneck: bool
  width: int = 64
  output_stride: int = 32
  norm: str = "batch"
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
    x = layers.conv(self.width, 7, strides=2, dtype=self.dtype, kernel_init=_he_fan_out, name="conv1")(x)
    x = layers.norm_layer(self.norm, train=train, dtype=self.dtype, groups=self.norm_groups, name="bn1")(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    stride, dilation = 4, 1
    for stage, num_blocks in enumerate(self.stage_sizes):
      block_stride = 1 if stage == 0 else 2
      previous_dilation = dilation
      if stride * block_stride > self.output_stride:
        dilation *= block_stride
        block_stride = 1
      stride *= block_stride
      for index in range(num_blocks):
        x = ResNetBlock(
          self.width * 2**stage,
          self.bottleneck,
          strides=block_stride if index == 0 else 1,
          dilation=previous_dilation if index == 0 else dilation,
          norm=self.norm,
          norm_groups=self.norm_groups,
          dtype=self.dtype,
          name=f"layer{stage + 1}_{index}",
        )(x, train=train)
      features[f"layer{stage + 1}"] = x
    return features


class VGG16(nn.Module):
  """VGG16 with fc6/fc7 as convolutions: `[B, H, W, C_in]` -> feature maps.

  Returns `pool3` (stride 8), `pool4` (stride 16) and `fc7` (stride 32) for H,
  W divisible by 32. ReLU everywhere; dropout 0.5 after fc6 and fc7 (rng
  `dropout`).
  """

  width: int = 64
  dtype: layers.Dtype = jnp.float32

  STAGES = (2, 2, 3, 3, 3)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
    features = {}
    for stage, num_convs in enumerate(self.STAGES):
      channels = self.width * 2 ** min(stage, 3)
      for index in range(num_convs):
        x = nn.relu(layers.conv(channels, 3, use_bias=True, dtype=self.dtype, name=f"conv{stage + 1}_{index + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      features[f"pool{stage + 1}"] = x
    for name, kernel in (("fc6", 7), ("fc7", 1)):
      x = nn.relu(layers.conv(64 * self.width, kernel, use_bias=True, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    features["fc7"] = x
    return {key: features[key] for key in ("pool3", "pool4", "fc7")}


def create_backbone(
  name: str,
  *,
  width: int = 64,
  output_stride: int = 32,
  norm: str = "batch",
  norm_groups: int = 8,
  dtype: layers.Dtype = jnp.float32,
) -> nn.Module:
  """The backbone `name` (one of BACKBONES) as a submodule named `backbone`.

  Must be called inside a compact method. VGG16 ignores `output_stride`
  (always 32) and `norm` (it has none).
  """
  if name == "vgg16":
    return VGG16(width=width, dtype=dtype, name="backbone")
  stage_sizes, block = RESNETS[name]
  return ResNet(
    stage_sizes,
    block == "bottleneck",
    width=width,
    output_stride=output_stride,
    norm=norm,
    norm_groups=norm_groups,
    dtype=dtype,
    name="backbone",
  )
