"""2D U-Net on the embedded synthetic fluorescence microscopy phantom.

Nucleus interiors and 1-2 pixel nucleus boundaries on 256 x 256 images of
0.5 um pixels (`jaxseg/data/phantoms/microscopy.py`; the spacing is in
micrometres, read as if it were mm), z-score normalised, nnU-Net's 2D
augmentation (every rotation and mirroring suits micrographs). Variants:
`configs/unet_microscopy.py` and `configs/unet_microscopy.py:quick`.
"""

from jaxseg.config import base_config, parse_arg, phantom_schedule, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
  config = base_config()
  config.data.name = "microscopy_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = "unet"
  config.model.features = 16
  config.model.depth = 4
  config.model.norm = "batch"
  config.model.activation = "relu"
  phantom_schedule(config)
  config.eval.mirror_axes = (0, 1)
  if arg.quick:
    config.model.features = 8
    config.model.depth = 3
    smoke_run(config, num_cases=8, num_steps=20, batch_size=4)
    config.eval.mirror_axes = ()
    config.eval.num_figures = 2
  return config
