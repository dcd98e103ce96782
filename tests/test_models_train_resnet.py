"""Two training steps for the ResNet-based models (see test_models_train)."""

import pytest

from jaxseg import models
from model_helpers import run_two_steps, TWO_STEP_MODELS as TINY_OTHERS

pytestmark = pytest.mark.usefixtures("fast_random_compile")

TINY_RESNET = dict(backbone="resnet18", backbone_width=4)
TINY = {
  # FCN-16s/8s use stride 32 whatever output_stride says: 64 x 67 keeps stage 4 at 2 x 3, not 1 x 2.
  "fcn16s": (dict(output_stride=16, **TINY_RESNET), (2, 64, 67, 1)),
  "fcn8s": (dict(output_stride=32, aux_head=True, **TINY_RESNET), (2, 64, 64, 1)),
  "deeplabv3": (dict(output_stride=8, **TINY_RESNET), (2, 32, 32, 1)),
  "deeplabv3plus": (dict(output_stride=16, norm="group", norm_groups=4, **TINY_RESNET), (2, 32, 32, 1)),
}


def test_every_registry_entry_is_trained_in_a_test():
  assert set(TINY) | set(TINY_OTHERS) == set(models.MODELS)
  assert not set(TINY) & set(TINY_OTHERS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_two_training_steps(name):
  run_two_steps(name, *TINY[name])
