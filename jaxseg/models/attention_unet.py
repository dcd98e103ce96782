"""Attention U-Net (Oktay et al., 2018): additive attention gates on skips.

Each skip connection x (level l) is multiplied by a gate map alpha in [0, 1]
computed from x and the coarser decoder features g (level l + 1):

  q = psi(relu(theta(x) + phi(g))),  alpha = sigmoid(q),

where theta is a convolution without bias whose kernel and stride are the
pooling factors between x and g (2x2 stride 2 by default; e.g. 1x2x2 where
the model's `pool_factors` keep an axis), bringing x to g's resolution, phi and psi are 1x1 convolutions with bias (F_int = half the
skip's channels, then 1 channel), and alpha is resampled to x's resolution by
(bi/tri)linear interpolation. The gated skip `alpha * x` is concatenated with
the upsampled decoder features as in a plain U-Net.

The gate maps are sown into the `intermediates` collection as
`intermediates['attention_gates']`: a tuple ordered as the decoder runs, from
the deepest skip (level depth - 1) to the full-resolution one (level 0); the
map of level l has shape `[B, ceil(H / f_H), ceil(W / f_W), 1]` with
`f = model.scale(l)` (`2**l` per axis by default), float32.
Read them with `model.apply(..., mutable=['intermediates'])`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers
from jaxseg.models.unet import UNet

Array = jax.Array


class AttentionGate(nn.Module):
  """Additive attention gate.

  `skip` `[B, *s, C_x]` and `gating` `[B, *s / factor, C_g]` ->
  (`alpha * skip` `[B, *s, C_x]`, alpha `[B, *s, 1]`). `factor`: the
  pooling factor of each axis between the two; () = 2 on every axis.
  """

  inter_features: int
  ndim: int = 2
  dtype: layers.Dtype = jnp.float32
  conv3d: str = "auto"
  factor: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, skip: Array, gating: Array) -> tuple[Array, Array]:
    window = tuple(self.factor) or (2,) * self.ndim
    impl = layers.conv3d_kwargs(self.ndim, self.conv3d)
    theta = nn.Conv(
      self.inter_features,
      window,
      strides=window,
      padding="VALID",
      use_bias=False,
      dtype=self.dtype,
      name="theta",
      **impl,
    )(skip)
    phi = nn.Conv(self.inter_features, (1,) * self.ndim, dtype=self.dtype, name="phi", **impl)(gating)
    q = nn.Conv(1, (1,) * self.ndim, dtype=self.dtype, name="psi", **impl)(nn.relu(theta + phi))
    alpha = layers.resize_bilinear(nn.sigmoid(q), skip.shape[1:-1])
    return skip * alpha, alpha


class AttentionUNet(UNet):
  """U-Net whose skip connections pass through attention gates.

  Same input/output contract as `UNet`; see the module docstring for the
  sown gate maps.
  """

  def merge_skip(self, skip: Array, coarse: Array, up: Array, level: int, spatial: tuple[int, ...]) -> Array:
    gated, alpha = AttentionGate(
      max(skip.shape[-1] // 2, 1),
      ndim=self.ndim,
      dtype=self.dtype,
      conv3d=self.conv3d,
      factor=self.factors()[level],
      name=f"gate{level}",
    )(skip, coarse)
    self.sow(
      "intermediates",
      "attention_gates",
      layers.crop_to_downsampled(alpha.astype(jnp.float32), spatial, self.scale(level)),
    )
    return jnp.concatenate([gated, up], axis=-1)
