"""U-Net (Ronneberger et al., 2015) with same-size convolutions, 2D or 3D.

Encoder: `depth` stages of two 3x3 convolutions (norm, activation), each
followed by a 2x downsampling (2x2 max pooling, or a stride-2 first
convolution in the next block with `strided_downsampling`), widths
`features * 2**level` capped at `max_features`; a bottleneck block at the
lowest resolution; decoder: 2x transposed convolution (computed as a
matmul + depth-to-space by `layers.StrideUpsample`), concatenation with the
skip connection, two 3x3 convolutions; a 1x1 convolution to class logits.
Dropout (`dropout` rate) follows the bottleneck and every decoder block.

Anisotropic data (nnU-Net's planned topology, `config.model.pool_factors`
and `config.model.kernel_sizes`): `pool_factors[l]` gives the factor (1 or
2) of each spatial axis at downsampling l, used by its max pooling or
strided convolution and by the transposed convolution that undoes it (e.g.
`(1, 2, 2)` keeps the thick z axis); `kernel_sizes[l]` gives the kernel of
each axis of the convolutions at resolution l (encoder and decoder;
`kernel_sizes[depth]` is the bottleneck's), e.g. `(1, 3, 3)`. Empty tuples
(the defaults) mean 2 and 3 on every axis: the parameters are then exactly
those of the isotropic network.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

Array = jax.Array


class ConvBlock(nn.Module):
  """Two `3^ndim` convolutions, each followed by norm and activation.

  `[B, *S, C_in] -> [B, *S / strides, features]`: the first convolution has
  stride `strides` (1 keeps the size); `kernel_size` and `strides` are one
  int for every axis or one per axis.
  """

  features: int
  norm: str = "batch"
  norm_groups: int = 8
  activation: str = "relu"
  ndim: int = 2
  strides: int | tuple[int, ...] = 1
  dtype: layers.Dtype = jnp.float32
  conv3d: str = "auto"
  kernel_size: int | tuple[int, ...] = 3

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    act = layers.activation_fn(self.activation)
    for i in range(2):
      x = layers.conv(
        self.features,
        self.kernel_size,
        ndim=self.ndim,
        strides=self.strides if i == 0 else 1,
        use_bias=self.norm == "none",
        dtype=self.dtype,
        conv3d=self.conv3d,
        name=f"conv{i}",
      )(x)
      x = layers.norm_layer(self.norm, train=train, dtype=self.dtype, groups=self.norm_groups, name=f"norm{i}")(x)
      x = act(x)
    return x


class UNet(nn.Module):
  """U-Net: `[B, *S, C_in]` float -> logits `[B, *S, num_classes]`.

  `S` is `(H, W)` for `ndim=2` and `(D, H, W)` for `ndim=3`, of any size: the
  input is zero padded to a multiple of `scale(depth)` per axis (`2**depth`
  with the default pooling) and the outputs are cropped back. With
  `deep_supervision`, `train=True` returns a list of `depth` logit maps,
  full resolution first, the map at level l (downsampled by `f = scale(l)`
  per axis, `2**l` by default) cropped to `ceil(H / f_H) x ceil(W / f_W)`
  (the shape of `labels[:, ::f_H, ::f_W]`). Logits are float32 whatever the
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
  # Per downsampling (`depth` entries), the factor (1 or 2) of each spatial
  # axis; () = 2 on every axis.
  pool_factors: tuple[tuple[int, ...], ...] = ()
  # Per resolution (`depth + 1` entries, the bottleneck last), the kernel of
  # each spatial axis; () = 3 on every axis.
  kernel_sizes: tuple[tuple[int, ...], ...] = ()

  def factors(self) -> tuple[tuple[int, ...], ...]:
    """Pooling factor of each axis at each of the `depth` downsamplings."""
    if not self.pool_factors:
      return ((2,) * self.ndim,) * self.depth
    factors = tuple(tuple(int(f) for f in level) for level in self.pool_factors)
    if len(factors) != self.depth or any(len(f) != self.ndim or min(f) < 1 for f in factors):
      raise ValueError(
        f"pool_factors {factors} must be {self.depth} tuples of {self.ndim} factors >= 1 (one per downsampling)"
      )
    return factors

  def kernels(self) -> tuple[tuple[int, ...], ...]:
    """Convolution kernel of each axis at each of the `depth + 1` levels."""
    if not self.kernel_sizes:
      return ((3,) * self.ndim,) * (self.depth + 1)
    kernels = tuple(tuple(int(k) for k in level) for level in self.kernel_sizes)
    if len(kernels) != self.depth + 1 or any(
      len(k) != self.ndim or min(k) < 1 or not all(v % 2 for v in k) for k in kernels
    ):
      raise ValueError(
        f"kernel_sizes {kernels} must be {self.depth + 1} tuples of {self.ndim} odd sizes (one per level)"
      )
    return kernels

  def scale(self, level: int) -> tuple[int, ...]:
    """Downsampling factor of each axis at `level` (product of the first
    `level` pooling factors; `(2**level,) * ndim` by default)."""
    scale = [1] * self.ndim
    for factor in self.factors()[:level]:
      scale = [s * f for s, f in zip(scale, factor)]
    return tuple(scale)

  def width(self, level: int) -> int:
    """Number of channels of the blocks at resolution level `level`."""
    return min(self.features * 2**level, self.max_features)

  def block(self, level: int, name: str, strides: int | tuple[int, ...] = 1) -> ConvBlock:
    """The `ConvBlock` of `level`, called as `block(x, train)`.

    With `remat`, the block is wrapped in `nn.remat` (same parameters): its
    activations are recomputed in the backward pass instead of stored.
    """
    cls = nn.remat(ConvBlock, static_argnums=(2,)) if self.remat else ConvBlock
    return cls(
      self.width(level),
      norm=self.norm,
      norm_groups=self.norm_groups,
      activation=self.activation,
      ndim=self.ndim,
      strides=strides,
      dtype=self.dtype,
      conv3d=self.conv3d,
      kernel_size=self.kernels()[level],
      name=name,
    )

  def merge_skip(self, skip: Array, coarse: Array, up: Array, level: int, spatial: tuple[int, ...]) -> Array:
    """Joins the skip connection and the upsampled decoder features.

    Args:
      skip: encoder features at `level`, `[B, *s, C_skip]`.
      coarse: decoder features one level lower, `[B, *s / f, C]` with `f`
        the pooling factors `factors()[level]` (the gating signal of
        attention U-Nets; unused here).
      up: `coarse` upsampled to `[B, *s, C_up]`.
      level: resolution level of `skip`.
      spatial: spatial size of the unpadded model input.
    """
    del coarse, level, spatial
    return jnp.concatenate([skip, up], axis=-1)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | list[Array]:
    factors = self.factors()
    x, spatial = layers.pad_to_multiple(x.astype(self.dtype), self.scale(self.depth))
    skips = []
    for level in range(self.depth + 1):
      # Downsampling into `level` by factors[level - 1]: max pooling, or the
      # stride of the level's first convolution.
      stride = 1
      if level and self.strided_downsampling:
        stride = factors[level - 1]
      elif level:
        x = layers.max_pool(x, factors[level - 1])
      name = "bottleneck" if level == self.depth else f"down{level}"
      x = self.block(level, name, stride)(x, train)
      if level < self.depth:
        skips.append(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    outputs = []
    for level in reversed(range(self.depth)):
      # nn.ConvTranspose(width, window, strides=window) as matmul +
      # depth-to-space: same parameters, same outputs, much faster.
      up = layers.StrideUpsample(self.width(level), factors[level], dtype=self.dtype, name=f"upconv{level}")(x)
      x = self.merge_skip(skips[level], x, up, level, spatial)
      x = self.block(level, f"up{level}")(x, train)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      if level == 0 or self.deep_supervision:
        logits = nn.Conv(
          self.num_classes,
          (1,) * self.ndim,
          dtype=self.dtype,
          name=f"head{level}",
          **layers.conv3d_kwargs(self.ndim, self.conv3d),
        )(x)
        outputs.append(layers.crop_to_downsampled(logits.astype(jnp.float32), spatial, self.scale(level)))
    outputs.reverse()
    if train and self.deep_supervision:
      return outputs
    return outputs[0]
