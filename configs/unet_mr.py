"""3D U-Net on the embedded synthetic brain MRI phantom (T1 + T2 channels).

Grey matter, white matter, CSF and lesions on 96 x 96 x 48 volumes of 2 x 2 x 3 mm
(`jaxseg/data/phantoms/mr.py`), z-score normalised per channel, nnU-Net's 3D
augmentation. Variants: `configs/unet_mr.py` and `configs/unet_mr.py:quick`
(a smoke test of every stage).
"""

from jaxseg.config import base_config, parse_arg, phantom_schedule, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
  config = base_config()
  config.data.name = "mr_phantom"
  config.data.patch_size = (32, 64, 64)
  config.model.name = "unet3d"
  config.model.features = 8
  config.model.depth = 3
  config.model.norm = "instance"
  config.model.activation = "leaky_relu"
  phantom_schedule(config, num_steps=1000, batch_size=2, eval_every_steps=250, checkpoint_every_steps=250)
  config.eval.batch_size = 4
  if arg.quick:
    config.data.patch_size = (16, 32, 32)
    config.model.features = 4
    config.model.depth = 2
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
    config.eval.num_figures = 2
  return config
