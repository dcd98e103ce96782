"""nnU-Net-style 3D U-Net with deep supervision on 3D patches of the CT phantom.

Strided-convolution downsampling, instance norm, leaky ReLU, transposed-convolution
upsampling, features doubling from `model.features` up to `model.max_features`.
The default is sized for a CPU; nnU-Net's own setting is
`--config.model.features=32 --config.model.max_features=320 --config.model.depth=5
--config.data.patch_size='(64,128,128)'` on a GPU.
Variants: none, or `:quick` (a smoke run).
"""

from jaxseg.config import base_config, parse_arg, phantom_schedule, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
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
  phantom_schedule(config, num_steps=400, batch_size=2, warmup_steps=20, log_every_steps=20)
  config.eval.batch_size = 2
  if arg.quick:
    config.data.patch_size = (16, 64, 64)
    config.model.features = 4
    config.model.depth = 3
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  return config
