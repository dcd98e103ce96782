"""2D Attention U-Net (additive attention gates on the skips, Oktay et al. 2018) on the CT phantom.

The gate maps are sown as `intermediates['attention_gates']` for interpretability.
Variants: none, or `:quick` (a smoke run).
"""

from jaxseg.config import base_config, smoke_run
from jaxseg.errors import ConfigError


def get_config(arg=None):
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = "attention_unet"
  config.model.features = 16
  config.model.depth = 4
  config.train.num_steps = 600
  config.train.batch_size = 8
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 30
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  if arg == "quick":
    config.model.features = 4
    config.model.depth = 3
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  elif arg is not None:
    raise ConfigError(f"unknown variant {arg!r} of configs/attention_unet_ct.py; use no variant or ':quick'")
  return config
