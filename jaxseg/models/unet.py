"""U-Net (Ronneberger et al., 2015) with same-size convolutions, 2D or 3D.

Encoder: `depth` stages of two 3x3 convolutions (norm, activation), each
followed by a 2x downsampling (2x2 max pooling, or a stride-2 first
convolution in the next block with `strided_downsampling`), widths
`features * 2**level` capped at `max_features`; a bottleneck block at the
lowest resolution; decoder: 2x transposed convolution (computed as a
matmul + depth-to-space by `layers.StrideUpsample`), concatenation with the
skip connection, two 3x3 convolutions; a 1x1 convolution to class logits.
Dropout (`dropout` rate) follows the bottleneck and every decoder block.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

Array = jax.Array


class ConvBlock(nn.Module):
  """Two `3^ndim` convolutions, each followed by norm and activation.

  `[B, *S, C_in] -> [B, *S / strides, features]`: the first convolution has
  stride `strides` (1 keeps the size).
  """
  features: int
  norm: str = "batch"
  norm_groups: int = 8
  activation: str = "relu"
  ndim: int = 2
  strides: int = 1
  dtype: layers.Dtype = jnp.float32
  conv3d: str = "auto"

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    act = layers.activation_fn(self.activation)
    for i in range(2):
      x = layers.conv(self.features, 3, ndim=self.ndim,
                      strides=self.strides if i == 0 else 1,
                      use_bias=self.norm == "none", dtype=self.dtype,
                      conv3d=self.conv3d, name=f"conv{i}")(x)
      x = layers.norm_layer(self.norm, train=train, dtype=self.dtype,
                            groups=self.norm_groups, name=f"norm{i}")(x)
      x = act(x)
    return x


class UNet(nn.Module):
  """U-Net: `[B, *S, C_in]` float -> logits `[B, *S, num_classes]`.

  `S` is `(H, W)` for `ndim=2` and `(D, H, W)` for `ndim=3`, of any size: the
  input is zero padded to a multiple of `2**depth` and the outputs are
  cropped back. With `deep_supervision`, `train=True` returns a
  list of `depth` logit maps, full resolution first, the map at level l
  (resolution `1 / 2**l`) cropped to `ceil(H / 2**l) x ceil(W / 2**l)`
  (the shape of `labels[:, ::2**l, ::2**l]`). Logits are float32 whatever the
  compute `dtype`.
  """
  num_classes: int
  features: int = 32
  depth: int = 4
  max_features: int = 512
  norm: str = "batch"
  norm_groups: int = 8
  activation: str = "relu"
  dropout: float = 0.0
  deep_supervision: bool = False
  ndim: int = 2
  strided_downsampling: bool = False
  dtype: layers.Dtype = jnp.float32
  # How 3D convolutions run (layers.CONV3D_IMPLS); same parameters for all.
  conv3d: str = "auto"
  # Rematerialise every encoder/decoder block in the backward pass.
  remat: bool = False

  def width(self, level: int) -> int:
    """Number of channels of the blocks at resolution `1 / 2**level`."""
    return min(self.features * 2**level, self.max_features)

  def block(self, level: int, name: str, strides: int = 1) -> ConvBlock:
    """The `ConvBlock` of `level`, called as `block(x, train)`.

    With `remat`, the block is wrapped in `nn.remat` (same parameters): its
    activations are recomputed in the backward pass instead of stored.
    """
    cls = nn.remat(ConvBlock, static_argnums=(2,)) if self.remat else ConvBlock
    return cls(self.width(level), norm=self.norm,
               norm_groups=self.norm_groups, activation=self.activation,
               ndim=self.ndim, strides=strides, dtype=self.dtype,
               conv3d=self.conv3d, name=name)

  def merge_skip(self, skip: Array, coarse: Array, up: Array, level: int,
                 spatial: tuple[int, ...]) -> Array:
    """Joins the skip connection and the upsampled decoder features.

    Args:
      skip: encoder features at `level`, `[B, *s, C_skip]`.
      coarse: decoder features one level lower, `[B, *s / 2, C]` (the
        gating signal of attention U-Nets; unused here).
      up: `coarse` upsampled to `[B, *s, C_up]`.
      level: resolution level of `skip`.
      spatial: spatial size of the unpadded model input.
    """
    del coarse, level, spatial
    return jnp.concatenate([skip, up], axis=-1)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | list[Array]:
    x, spatial = layers.pad_to_multiple(x.astype(self.dtype), 2**self.depth)
    window = (2,) * self.ndim
    stride = 2 if self.strided_downsampling else 1
    skips = []
    for level in range(self.depth):
      if level and not self.strided_downsampling:
        x = layers.max_pool(x, window)
      x = self.block(level, f"down{level}", stride if level else 1)(x, train)
      skips.append(x)
    if not self.strided_downsampling:
      x = layers.max_pool(x, window)
    x = self.block(self.depth, "bottleneck", stride)(x, train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    outputs = []
    for level in reversed(range(self.depth)):
      # nn.ConvTranspose(width, window, strides=window) as matmul +
      # depth-to-space: same parameters, same outputs, much faster.
      up = layers.StrideUpsample(self.width(level), window, dtype=self.dtype,
                                 name=f"upconv{level}")(x)
      x = self.merge_skip(skips[level], x, up, level, spatial)
      x = self.block(level, f"up{level}")(x, train)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      if level == 0 or self.deep_supervision:
        logits = nn.Conv(self.num_classes, (1,) * self.ndim,
                         dtype=self.dtype, name=f"head{level}",
                         **layers.conv3d_kwargs(self.ndim, self.conv3d))(x)
        outputs.append(layers.crop_to_downsampled(
            logits.astype(jnp.float32), spatial, 2**level))
    outputs.reverse()
    if train and self.deep_supervision:
      return outputs
    return outputs[0]
