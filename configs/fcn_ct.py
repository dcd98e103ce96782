"""FCN (Long et al.) on the CT phantom: `configs/fcn_ct.py:8s` (default), `:16s`, `:32s`.

The default backbone is a narrow ResNet-18 so that a CPU trains it in minutes; the
paper's network is `--config.model.backbone=vgg16 --config.model.backbone_width=64`
(134 M parameters, GPU), torchvision's `fcn_resnet50` is `:32s` with
`--config.model.backbone=resnet50 --config.model.backbone_width=64
--config.model.output_stride=8 --config.model.aux_head=True`.
Add `quick` for a smoke run: `:8s,quick` (or `:8s_quick`, `:variant=8s,quick`).
"""

from jaxseg.config import OneOf, base_config, parse_arg, phantom_schedule, smoke_run

VARIANTS = ("32s", "16s", "8s")


def get_config(arg=None):
  arg = parse_arg(
    arg,
    __file__,
    variant=OneOf("8s", VARIANTS),
    quick=False,
    aliases={f"{variant}_quick": f"{variant},quick" for variant in VARIANTS},
  )
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = f"fcn{arg.variant}"
  config.model.backbone = "resnet18"
  config.model.backbone_width = 32
  config.model.output_stride = 32
  phantom_schedule(config)
  if arg.quick:
    config.model.backbone_width = 8
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  return config
