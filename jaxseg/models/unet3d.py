"""nnU-Net-style 3D U-Net (Isensee et al., 2021).

Stages of two 3x3x3 convolutions, downsampling by a stride-2 first
convolution (no pooling), upsampling by 2x2x2 transposed convolutions, widths
doubling from `features` up to `max_features`, and a 1x1x1 segmentation head
at every decoder stage for deep supervision. nnU-Net's choices of norm and
activation (instance norm, leaky ReLU with slope 0.01) and width cap (320)
are config values: `norm='instance'`, `activation='leaky_relu'`,
`max_features=320`, `deep_supervision=True`. nnU-Net's anisotropic topology
(strides such as `(1, 2, 2)` until the thick axis' spacing has caught up,
`(1, 3, 3)` kernels on the first stages) is `pool_factors` / `kernel_sizes`
(`config.model.pool_factors`, `config.model.kernel_sizes`, set by the plan).
"""

from jaxseg.models.unet import UNet


class UNet3D(UNet):
  """3D U-Net: `[B, D, H, W, C_in]` float -> logits `[B, D, H, W, classes]`.

  Any D, H, W (padded to a multiple of `scale(depth)` per axis, `2**depth`
  by default, cropped back). With `deep_supervision` and `train=True`: a
  list of `depth` logit maps, full resolution first, the map at level l
  cropped to `ceil(size / f)` per axis with `f = scale(l)` (the shape of
  `labels[:, ::f_D, ::f_H, ::f_W]`; `f = 2**l` by default).
  """

  ndim: int = 3
  strided_downsampling: bool = True
