"""Fully convolutional networks (Long et al., 2015): FCN-32s, -16s and -8s.

Score, upsample, fuse: class scores of the deepest features are upsampled 2x
by a learned transposed convolution (bilinear at init) and added to the
scores of a shallower feature map, once for FCN-16s and twice for FCN-8s;
the fused scores are bilinearly upsampled to the input size.

Backbones:
- `vgg16` (Long et al.): scores of fc7 (`score_fr`), pool4 (`score_pool4`)
  and pool3 (`score_pool3`), 1x1 convolutions initialised to zero as in the
  paper. Convolutions use same-size padding instead of the paper's 100-pixel
  input padding and crops.
- ResNets: the deep scores come from torchvision's FCN head (`classifier`:
  3x3 convolution to C/4 channels, norm, ReLU, dropout 0.1, 1x1 convolution)
  on stage 4, fused with 1x1 scores of stage 3 (`score_layer3`) and stage 2
  (`score_layer2`), zero-initialised like Long et al.'s. `fcn32s` with a
  dilated ResNet-50 (output stride 8) and `aux_head` is torchvision's
  `fcn_resnet50`: same layers, same parameter count (35,322,218 for 21
  classes), same outputs.
- FCN-16s and FCN-8s always use the undilated backbone (stage 4 at stride
  32) whatever `output_stride` says: their definition is the coarse-to-fine
  fusion 32 -> 16 (-> 8), and the name already fixes the stride of their
  output. On a dilated backbone stages 2-4 share one resolution and the
  "skips" would add same-resolution scores with no upsampling at all (an
  FCN-32s with two extra 1x1 convolutions). `output_stride` (8, 16, 32; the
  model default 8) applies to FCN-32s. Refusing the combination instead would
  make every config that keeps the model default (`configs/msd.py:fcn8s`)
  fail for a setting FCN-8s cannot use.
- The final upsampling is fixed bilinear interpolation (Long et al. use a
  deconvolution initialised, and in their reference code frozen, to it).
- `aux_head` (ResNets): a second FCN head on stage 3 (`aux_classifier`);
  `train=True` then returns `[main_logits, aux_logits]`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import backbones
from jaxseg.models import layers

Array = jax.Array

# The stride of an undilated backbone's last stage, where FCN-16s/8s start.
FULL_STRIDE = 32


class FCNHead(nn.Module):
  """torchvision's FCN head: `[B, h, w, C] -> [B, h, w, num_classes]`."""

  num_classes: int
  norm: str = "batch"
  norm_groups: int = 8
  dropout: float = 0.1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = layers.conv(x.shape[-1] // 4, 3, dtype=self.dtype, name="conv")(x)
    x = layers.norm_layer(self.norm, train=train, dtype=self.dtype, groups=self.norm_groups, name="norm")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="score")(x)


class FCN(nn.Module):
  """FCN: `[B, H, W, C_in]` float -> logits `[B, H, W, num_classes]`.

  Any H, W: the input is zero padded to a multiple of the backbone's output
  stride (32 for VGG16 and for FCN-16s/8s) and the logits are cropped back.
  """

  num_classes: int
  # 0: FCN-32s, 1: FCN-16s, 2: FCN-8s.
  num_skips: int
  backbone: str = "vgg16"
  backbone_width: int = 64
  output_stride: int = 32
  norm: str = "batch"
  norm_groups: int = 8
  aux_head: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | list[Array]:
    vgg = self.backbone == "vgg16"
    stride = backbones.VGG_OUTPUT_STRIDE if vgg else self.backbone_stride
    x, spatial = layers.pad_to_multiple(x.astype(self.dtype), stride)
    features = backbones.create_backbone(
      self.backbone,
      width=self.backbone_width,
      output_stride=self.backbone_stride,
      norm=self.norm,
      norm_groups=self.norm_groups,
      dtype=self.dtype,
    )(x, train=train)

    if vgg:
      skips = ("pool4", "pool3")
      scores = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=nn.initializers.zeros, name="score_fr")(
        features["fc7"]
      )
    else:
      skips = ("layer3", "layer2")
      scores = self.head("classifier")(features["layer4"], train=train)
    for index, skip in enumerate(skips[: self.num_skips]):
      skip_scores = nn.Conv(
        self.num_classes, (1, 1), dtype=self.dtype, kernel_init=nn.initializers.zeros, name=f"score_{skip}"
      )(features[skip])
      scores = layers.upsample_2x_learned(self.num_classes, dtype=self.dtype, name=f"upscore{index}")(scores)
      scores = scores + skip_scores  # Both [B, 2h, 2w, classes]: coarse-to-fine.
    outputs = [scores]
    if self.aux_head:
      outputs.append(self.head("aux_classifier")(features["layer3"], train=train))
    outputs = [
      layers.crop_spatial(layers.resize_bilinear(o, x.shape[1:3]), spatial).astype(jnp.float32) for o in outputs
    ]
    return outputs if train and self.aux_head else outputs[0]

  @property
  def backbone_stride(self) -> int:
    """ResNet output stride: `output_stride` for FCN-32s, 32 for FCN-16s/8s (Long et al.'s skips)."""
    return FULL_STRIDE if self.num_skips else self.output_stride

  def head(self, name: str) -> FCNHead:
    return FCNHead(self.num_classes, norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype, name=name)
