"""nnU-Net-style 3D U-Net with deep supervision on 3D patches of the CT phantom.

Strided-convolution downsampling, instance norm, leaky ReLU, transposed-convolution
upsampling, features doubling from `model.features` up to `model.max_features`.
The default is sized for a CPU; nnU-Net's own setting is
`--config.model.features=32 --config.model.max_features=320 --config.model.depth=5
--config.data.patch_size='(64,128,128)'` on a GPU.
Variants: none, or `:quick` (a smoke run).
"""

from jaxseg.config import base_config, smoke_run
from jaxseg.errors import ConfigError


def get_config(arg=None):
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (32, 96, 96)  # (D, H, W) voxels: 160 x ~310 x ~310 mm.
  config.model.name = "unet3d"
  config.model.features = 16
  config.model.max_features = 320
  config.model.depth = 4
  config.model.norm = "instance"
  config.model.activation = "leaky_relu"
  config.model.deep_supervision = True
  config.train.num_steps = 400
  config.train.batch_size = 2
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 20
  config.train.log_every_steps = 20
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  config.eval.batch_size = 2
  if arg == "quick":
    config.data.patch_size = (16, 64, 64)
    config.model.features = 4
    config.model.depth = 3
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  elif arg is not None:
    raise ConfigError(f"unknown variant {arg!r} of configs/unet3d_ct.py; use no variant or ':quick'")
  return config
