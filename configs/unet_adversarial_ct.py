"""2D U-Net with adversarial training (patch discriminator) on the synthetic CT phantom.

The run of `configs/unet_ct.py` (same data, model, optimiser and steps) with
`config.adversarial.enabled`: a patch discriminator learns to tell ground
truth label maps from the U-Net's softmax (Luc et al. 2016 "product" input),
and from step 100 on the U-Net also minimises 0.01 x the non-saturating
adversarial loss. Variants: `configs/unet_adversarial_ct.py` and
`configs/unet_adversarial_ct.py:quick` (a smoke test; the adversarial term
starts at step 5).

The same switch works for every registered model:
`--config=configs/unet_ct.py --config.adversarial.enabled=True`.
"""

import pathlib

from jaxseg.config import load, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, __file__, quick=False)
  config = load(f"{pathlib.Path(__file__).with_name('unet_ct.py')}{':quick' if arg.quick else ''}")
  config.adversarial.enabled = True
  config.adversarial.weight = 0.01
  config.adversarial.warmup_steps = 100
  config.adversarial.disc_every_steps = 1
  config.adversarial.input = "product"
  config.adversarial.features = 32
  config.adversarial.num_layers = 3
  if arg.quick:
    config.adversarial.warmup_steps = 5
    config.adversarial.features = 8
  return config
