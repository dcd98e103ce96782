"""Two training steps (SGD, cross-entropy) for the U-Nets and FCN-VGG16.

Tiny widths and inputs; each run compiles one init and one train step. The
same dropout key is used in both steps so that the loss is one deterministic
function of the parameters and must go down after a small gradient step
(`model_helpers.run_two_steps`). The ResNet-based models are in
test_models_train_resnet.py (one file would take about a minute).
"""

import pytest

from model_helpers import run_two_steps, TWO_STEP_MODELS

pytestmark = pytest.mark.usefixtures("fast_random_compile")


@pytest.mark.parametrize("name", sorted(TWO_STEP_MODELS))
def test_two_training_steps(name):
  run_two_steps(name, *TWO_STEP_MODELS[name])
