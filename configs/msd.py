"""Any Medical Segmentation Decathlon / nnU-Net v2 raw dataset on disk.

  python -m jaxseg.main --config=configs/msd.py --config.data.root=/data/Task09_Spleen

trains a 2D U-Net on axial slices of the dataset at `data.root` (the
directory holding dataset.json; layouts in README "Bring your own dataset").
Variants, by argument (comma-separated, `jaxseg.config.parse_arg`):

  configs/msd.py:unet3d         3D U-Net on (64, 128, 128) patches (`:model=unet3d`).
  configs/msd.py:MODEL          any registered model (`deeplabv3plus`, `fcn8s`,
                                `attention_unet`, ...) with the patch of its dimension.
  configs/msd.py:unet3d,quick   a smoke test of every stage (tiny model, 20 steps).

`--config.data.task=Task09_Spleen --config.data.root=/data` prepares the
task with the Decathlon builder instead (checked against the published task;
`data.root` is the directory the archive was extracted into). Augmentation
is nnU-Net's default (jaxseg/data/augment.py).

Planning is on (`config.plan.enabled`, `jaxseg.plan`): patch, batch, network
depth and features, steps and evaluation cadence come from the dataset
fingerprint and the devices -- nnU-Net's rules on a GPU/TPU, a run of
`config.plan.time_budget_min` (15) minutes on a CPU. The values below are
what is used with `--config.plan.enabled=False`; any `--config.KEY=VALUE`
on the command line wins over the plan (recorded in <workdir>/plan.json).
`--mode=plan` prints the plan without training. `:quick` does not plan.
"""

from jaxseg import models
from jaxseg.config import OneOf, base_config, parse_arg, smoke_run

PATCH = {2: (256, 256), 3: (64, 128, 128)}
BATCH = {2: 12, 3: 2}
DEPTH = {2: 5, 3: 4}


def get_config(arg=None):
  arg = parse_arg(arg, __file__, model=OneOf("unet", tuple(models.MODELS)), quick=False)
  ndim = models.spatial_dims(arg.model)
  config = base_config()
  config.data.name = "msd"
  config.data.patch_size = PATCH[ndim]
  config.model.name = arg.model
  config.model.features = 32
  config.model.depth = DEPTH[ndim]
  config.model.max_features = 320 if ndim == 3 else 512
  config.model.norm = "instance"
  config.model.activation = "leaky_relu"
  config.train.num_steps = 25_000
  config.train.batch_size = BATCH[ndim]
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 250
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  config.eval.mirror_axes = tuple(range(ndim))
  config.plan.enabled = True
  if arg.quick:
    config.plan.enabled = False
    config.data.patch_size = (32, 64, 64) if ndim == 3 else (128, 128)
    config.model.features = 8
    config.model.depth = 3
    smoke_run(config, num_steps=20, batch_size=2)  # data.num_cases stays: the dataset on disk has its own.
    config.train.warmup_steps = 5
    config.eval.mirror_axes = ()
    config.eval.num_figures = 2
  return config
