"""2D U-Net on the embedded synthetic fluorescence microscopy phantom.

Nucleus interiors and 1-2 pixel nucleus boundaries on 256 x 256 images of
0.5 um pixels (`jaxseg/data/phantoms/microscopy.py`; the spacing is in
micrometres, read as if it were mm), z-score normalised, nnU-Net's 2D
augmentation (every rotation and mirroring suits micrographs). Variants:
`configs/unet_microscopy.py` and `configs/unet_microscopy.py:quick`.
"""

from jaxseg.config import base_config
from jaxseg.errors import ConfigError


def get_config(arg=None):
  config = base_config()
  config.data.name = "microscopy_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = "unet"
  config.model.features = 16
  config.model.depth = 4
  config.model.norm = "batch"
  config.model.activation = "relu"
  config.train.num_steps = 600
  config.train.batch_size = 8
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 30
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  config.eval.mirror_axes = (0, 1)
  if arg == "quick":
    config.data.num_cases = 8
    config.model.features = 8
    config.model.depth = 3
    config.train.num_steps = 20
    config.train.batch_size = 4
    config.train.log_every_steps = 5
    config.train.eval_every_steps = 10
    config.train.checkpoint_every_steps = 10
    config.eval.mirror_axes = ()
    config.eval.num_figures = 2
  elif arg is not None:
    raise ConfigError(f"unknown variant {arg!r} of configs/unet_microscopy.py; use no variant or ':quick'")
  return config
