"""DeepLab on the CT phantom: `configs/deeplab_ct.py:v3plus` (default) or `:v3`.

ResNet backbone whose later stages trade stride for dilation (output stride 16 here;
8 with `--config.model.output_stride=8`), ASPP (1x1 + three atrous 3x3 + image
pooling, 256 channels), v3+ decoder on stride-4 features. The default backbone is a
narrow ResNet-18 for CPUs; torchvision's `deeplabv3_resnet50` is `:v3` with
`--config.model.backbone=resnet50 --config.model.backbone_width=64
--config.model.output_stride=8 --config.model.aux_head=True`, and
`--config.model.pretrained=/path/resnet50.pth` starts from ImageNet weights.
Append `_quick` to a variant (`:v3_quick`) for a smoke run.
"""

from jaxseg.config import base_config, smoke_run
from jaxseg.errors import ConfigError

VARIANTS = {"v3": "deeplabv3", "v3plus": "deeplabv3plus"}


def get_config(arg=None):
  variant, _, quick = (arg or "v3plus").partition("_")
  if variant not in VARIANTS or quick not in ("", "quick"):
    raise ConfigError(f"unknown variant {arg!r} of configs/deeplab_ct.py; use one of "
                      f"{', '.join(VARIANTS)}, optionally with '_quick'")
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = VARIANTS[variant]
  config.model.backbone = "resnet18"
  config.model.backbone_width = 32
  config.model.output_stride = 16
  config.train.num_steps = 600
  config.train.batch_size = 8
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 30
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  if quick:
    config.model.backbone_width = 8
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  return config
