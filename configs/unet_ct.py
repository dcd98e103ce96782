"""2D U-Net on the embedded synthetic abdominal CT phantom (the default run).

Variants: `configs/unet_ct.py` (default, about 7 minutes on a 2-core CPU) and
`configs/unet_ct.py:quick` (a smoke test of every stage in about a minute).
"""

from jaxseg.config import INTENSITY_AUGMENT_KEYS, base_config, parse_arg, phantom_schedule, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  # Light, cheap augmentation (measured at 400 steps: test Dice liver 0.957, spleen 0.935, kidney 0.953): no mirroring,
  # since the anatomy has sides; small rotations and zooms; nnU-Net's intensity transforms off.
  config.data.augment.flip_axes = ()
  config.data.augment.rotate_max_deg = 15.0
  config.data.augment.scale_range = (0.85, 1.15)
  for key in INTENSITY_AUGMENT_KEYS:
    config.data.augment[key] = 0.0
  config.model.name = "unet"
  config.model.features = 16
  config.model.depth = 4
  config.model.norm = "batch"
  config.model.activation = "relu"
  phantom_schedule(config, num_steps=400, warmup_steps=20, checkpoint_every_steps=100)
  if arg.quick:
    config.model.features = 8
    config.model.depth = 3
    smoke_run(config, num_cases=8, num_steps=20, batch_size=4)
    config.eval.num_figures = 2
  return config
