"""3D U-Net on the embedded synthetic brain MRI phantom (T1 + T2 channels).

Grey matter, white matter, CSF and lesions on 96 x 96 x 48 volumes of 2 x 2 x 3 mm
(`jaxseg/data/phantoms/mr.py`), z-score normalised per channel, nnU-Net's 3D
augmentation. Variants: `configs/unet_mr.py` and `configs/unet_mr.py:quick`
(a smoke test of every stage).
"""

from jaxseg.config import base_config
from jaxseg.errors import ConfigError


def get_config(arg=None):
  config = base_config()
  config.data.name = "mr_phantom"
  config.data.patch_size = (32, 64, 64)
  config.model.name = "unet3d"
  config.model.features = 8
  config.model.depth = 3
  config.model.norm = "instance"
  config.model.activation = "leaky_relu"
  config.train.num_steps = 1000
  config.train.batch_size = 2
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 30
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.eval.batch_size = 4
  if arg == "quick":
    config.data.num_cases = 6
    config.data.patch_size = (16, 32, 32)
    config.model.features = 4
    config.model.depth = 2
    config.train.num_steps = 10
    config.train.log_every_steps = 5
    config.train.eval_every_steps = 10
    config.train.checkpoint_every_steps = 10
    config.eval.num_figures = 2
  elif arg is not None:
    raise ConfigError(f"unknown variant {arg!r} of configs/unet_mr.py; use no variant or ':quick'")
  return config
