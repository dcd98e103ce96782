"""DeepLab on the CT phantom: `configs/deeplab_ct.py:v3plus` (default) or `:v3`.

ResNet backbone whose later stages trade stride for dilation (output stride 16 here;
8 with `--config.model.output_stride=8`), ASPP (1x1 + three atrous 3x3 + image
pooling, 256 channels), v3+ decoder on stride-4 features. The default backbone is a
narrow ResNet-18 for CPUs; torchvision's `deeplabv3_resnet50` is `:v3` with
`--config.model.backbone=resnet50 --config.model.backbone_width=64
--config.model.output_stride=8 --config.model.aux_head=True`, and
`--config.model.pretrained=/path/resnet50.pth` starts from ImageNet weights.
Add `quick` for a smoke run: `:v3,quick` (or `:v3_quick`, `:variant=v3,quick`).
"""

from jaxseg.config import OneOf, base_config, parse_arg, phantom_schedule, smoke_run

VARIANTS = {"v3": "deeplabv3", "v3plus": "deeplabv3plus"}


def get_config(arg=None):
  arg = parse_arg(
    arg,
    __file__,
    variant=OneOf("v3plus", tuple(VARIANTS)),
    quick=False,
    aliases={f"{variant}_quick": f"{variant},quick" for variant in VARIANTS},
  )
  config = base_config()
  config.data.name = "ct_phantom"
  config.data.patch_size = (128, 128)
  config.model.name = VARIANTS[arg.variant]
  config.model.backbone = "resnet18"
  config.model.backbone_width = 32
  config.model.output_stride = 16
  phantom_schedule(config)
  if arg.quick:
    config.model.backbone_width = 8
    smoke_run(config, num_cases=6, num_steps=10, batch_size=2)
  return config
