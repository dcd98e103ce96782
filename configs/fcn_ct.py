"""FCN (Long et al.) on the CT phantom: `configs/fcn_ct.py:8s` (default), `:16s`, `:32s`.

The default backbone is a narrow ResNet-18 so that a CPU trains it in minutes; the
paper's network is `--config.model.backbone=vgg16 --config.model.backbone_width=64`
(134 M parameters, GPU), torchvision's `fcn_resnet50` is `:32s` with
`--config.model.backbone=resnet50 --config.model.backbone_width=64
--config.model.output_stride=8 --config.model.aux_head=True`.
Append `_quick` to a variant (`:8s_quick`) for a smoke run.
"""

from jaxseg.config import base_config, smoke_run
from jaxseg.errors import ConfigError

VARIANTS = ("32s", "16s", "8s")


def get_config(arg=None):
  variant, _, quick = (arg or "8s").partition("_")
  if variant not in VARIANTS or quick not in ("", "quick"):
    raise ConfigError(f"unknown variant {arg!r} of configs/fcn_ct.py; use one of "
                      f"{', '.join(VARIANTS)}, optionally with '_quick'")
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = f"fcn{variant}"
  config.model.backbone = "resnet18"
  config.model.backbone_width = 32
  config.model.output_stride = 32
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
