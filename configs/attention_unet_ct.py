"""2D Attention U-Net (additive attention gates on the skips, Oktay et al. 2018) on the CT phantom.

The gate maps are sown as `intermediates['attention_gates']` for interpretability.
Variants: none, or `:quick` (a smoke run).
"""

from jaxseg.config import base_config, parse_arg, phantom_schedule, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = "attention_unet"
  config.model.features = 16
  config.model.depth = 4
  phantom_schedule(config)
  if arg.quick:
    config.model.features = 4
    config.model.depth = 3
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  return config
