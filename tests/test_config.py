"""Every config file loads and validates; the config is locked; bad values are named; one argument grammar."""

import json
import pathlib

import pytest

from jaxseg import config as config_lib
from jaxseg import losses
from jaxseg.errors import ConfigError

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
# Every argument the README, launch/, experiments/ and tests give a config file, plus the new spellings.
VARIANTS = [
  ("unet_ct", None),
  ("unet_ct", "quick"),
  ("unet3d_ct", "quick"),
  ("attention_unet_ct", "quick"),
  ("unet_mr", "quick"),
  ("unet_microscopy", "quick"),
  ("unet_adversarial_ct", "quick"),
  ("fcn_ct", "8s"),
  ("fcn_ct", "16s"),
  ("fcn_ct", "32s"),
  ("fcn_ct", "8s_quick"),
  ("fcn_ct", "16s_quick"),
  ("fcn_ct", "32s_quick"),
  ("fcn_ct", "16s,quick"),
  ("deeplab_ct", "v3"),
  ("deeplab_ct", "v3plus"),
  ("deeplab_ct", "v3_quick"),
  ("deeplab_ct", "v3plus_quick"),
  ("msd", "unet3d"),
  ("msd", "unet3d,quick"),
  ("msd", "quick"),
  ("msd", "fcn8s"),
  ("msd", "deeplabv3plus"),
  ("msd", "attention_unet,quick"),
]
QUICK = [(name, arg) for name, arg in VARIANTS if arg and "quick" in arg]


def load(name, arg=None):
  return config_lib.load(f"{ROOT / 'configs' / name}.py" + ("" if arg is None else f":{arg}"))


def validated(config):
  if config.data.name == "msd":  # Needs the user's dataset directory.
    config.data.root = "/data/Task09_Spleen"
  config_lib.validate(config)
  return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_validates(path):
  config = validated(config_lib.load(path))
  assert config.is_locked


@pytest.mark.parametrize("name,arg", VARIANTS, ids=[f"{n}:{a}" for n, a in VARIANTS])
def test_every_variant_loads_and_validates(name, arg):
  assert validated(load(name, arg)).is_locked


@pytest.mark.parametrize("name,arg", QUICK, ids=[f"{n}:{a}" for n, a in QUICK])
def test_quick_variants_are_smoke_runs(name, arg):
  config = validated(load(name, arg))
  assert config.train.num_steps <= 50
  assert (config.train.log_every_steps, config.train.eval_every_steps, config.train.checkpoint_every_steps) == (
    5,
    10,
    10,
  )
  assert not config.plan.enabled


@pytest.mark.parametrize(
  "name,spellings",
  [
    ("fcn_ct", ["16s_quick", "16s,quick", "variant=16s,quick", "quick,variant=16s", "variant=16s,quick=True"]),
    ("deeplab_ct", ["v3_quick", "v3,quick", "variant=v3,quick=yes"]),
    ("msd", ["unet3d,quick", "quick,unet3d", "model=unet3d,quick"]),
    ("unet_ct", ["quick", "quick=True", "quick=1", " quick "]),
  ],
)
def test_spellings_of_one_variant_give_one_config(name, spellings):
  configs = [config_lib.to_json(load(name, arg)) for arg in spellings]
  assert len(set(configs)) == 1


def test_no_argument_and_an_empty_one_are_the_default():
  assert (
    config_lib.to_json(load("fcn_ct"))
    == config_lib.to_json(load("fcn_ct", ""))
    == config_lib.to_json(load("fcn_ct", "8s"))
    == config_lib.to_json(load("fcn_ct", "quick=False"))
  )


def test_adversarial_config_is_unet_ct_with_the_switch():
  for arg in (None, "quick"):
    plain, adversarial = load("unet_ct", arg), load("unet_adversarial_ct", arg)
    assert adversarial.adversarial.enabled and not plain.adversarial.enabled
    assert adversarial.train == plain.train and adversarial.model == plain.model


def test_phantom_configs_share_one_schedule():
  for name in ("attention_unet_ct", "fcn_ct", "deeplab_ct", "unet_microscopy"):
    train = load(name).train
    assert (
      train.num_steps,
      train.batch_size,
      train.learning_rate,
      train.warmup_steps,
      train.log_every_steps,
      train.eval_every_steps,
      train.checkpoint_every_steps,
    ) == (600, 8, 2e-3, 30, 25, 200, 200)


@pytest.mark.parametrize(
  "name,arg,message",
  [
    ("unet_ct", "fast", r"unknown variant 'fast' in configs/unet_ct.py:fast; known: quick \(a flag\)"),
    ("unet_ct", "steps=5", r"unknown key 'steps' in configs/unet_ct.py:steps=5; known: quick"),
    ("fcn_ct", "4s_quick", r"unknown variant '4s_quick' in configs/fcn_ct.py:4s_quick; known: variant=32s\|16s\|8s"),
    ("fcn_ct", "variant=4s", r"variant='4s' is not one of 32s, 16s, 8s in configs/fcn_ct.py"),
    ("msd", "unet3d,fcn8s", r"model is given twice in configs/msd.py:unet3d,fcn8s; known: model=unet\|unet3d"),
    ("unet_mr", "quick=maybe", r"quick='maybe' is not True or False in configs/unet_mr.py"),
  ],
)
def test_unknown_or_bad_arguments_name_the_file_the_key_and_the_known_ones(name, arg, message):
  with pytest.raises(ConfigError, match=message):
    load(name, arg)


# The grammar itself (`config.parse_arg`).

SPEC = dict(steps=100, rate=0.5, name="a", quick=False, variant=config_lib.OneOf("x", ("x", "y")))


def test_parse_arg_defaults_typed_values_flags_and_bare_options():
  assert config_lib.parse_arg(None, "configs/sweep.py", **SPEC).to_dict() == {
    "steps": 100,
    "rate": 0.5,
    "name": "a",
    "quick": False,
    "variant": "x",
  }
  parsed = config_lib.parse_arg("steps=7,rate=1e-3,name=b=c,quick,y", "configs/sweep.py", **SPEC)
  assert parsed.to_dict() == {"steps": 7, "rate": 1e-3, "name": "b=c", "quick": True, "variant": "y"}
  assert isinstance(parsed.steps, int) and isinstance(parsed.rate, float)
  assert parsed.is_locked
  assert config_lib.parse_arg("rate=2,quick=false", "configs/sweep.py", **SPEC).rate == 2.0
  assert config_lib.parse_arg("old", "configs/sweep.py", aliases={"old": "y,quick"}, **SPEC).to_dict() == {
    "steps": 100,
    "rate": 0.5,
    "name": "a",
    "quick": True,
    "variant": "y",
  }


@pytest.mark.parametrize(
  "arg,message",
  [
    (
      "steps=1.5",
      r"steps='1.5' is not an int in configs/sweep.py:steps=1.5; known: steps=<int> \(default 100\), "
      r"rate=<float> \(default 0.5\), name=<str> \(default 'a'\), quick \(a flag\), "
      r"variant=x\|y \(or the bare value; default x\)",
    ),
    ("rate=fast", r"rate='fast' is not a float"),
    ("steps", r"unknown variant 'steps'"),  # Only bool keys are flags.
    ("z", r"unknown variant 'z'"),
    ("seed=1", r"unknown key 'seed'"),
    ("quick,quick=False", r"quick is given twice"),
    ("x,variant=y", r"variant is given twice"),
  ],
)
def test_parse_arg_errors(arg, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.parse_arg(arg, "/somewhere/configs/sweep.py", **SPEC)


def test_parse_arg_refuses_a_default_without_a_type():
  with pytest.raises(TypeError, match="size"):
    config_lib.parse_arg(None, "configs/sweep.py", size=None)


# `config.load`.


def test_load_passes_the_argument_as_config_flags_does(tmp_path):
  path = tmp_path / "echo.py"
  path.write_text(
    "from jaxseg.config import base_config, parse_arg\n\n"
    "def get_config(arg='absent'):\n"
    "  config = base_config()\n"
    "  config.data.root = repr(arg)\n"
    "  return config\n"
  )
  assert config_lib.load(path).data.root == "'absent'"  # No ':': get_config().
  assert config_lib.load(f"{path}:").data.root == "''"
  assert config_lib.load(f"{path}:a=1,b:c").data.root == "'a=1,b:c'"  # Everything after the first ':'.


def test_load_errors_name_the_path(tmp_path):
  with pytest.raises(ConfigError, match=f"config file {tmp_path}/nope.py does not exist"):
    config_lib.load(f"{tmp_path}/nope.py:quick")
  empty = tmp_path / "empty.py"
  empty.write_text("CONFIG = 1\n")
  with pytest.raises(ConfigError, match=f"config file {empty} has no get_config"):
    config_lib.load(empty)


# `config.validate`: every key, the adversarial ones included.


def test_misspelt_key_cannot_be_set():
  config = config_lib.base_config()
  with pytest.raises(AttributeError):
    config.train.num_stpes = 3


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("data.name", "ct_phantomm", "config.data.name: unknown dataset 'ct_phantomm'"),
    ("model.name", "unett", "config.model.name: unknown model 'unett'"),
    ("data.patch_size", (64, 64, 64), "config.data.patch_size"),
    ("train.num_steps", 0, "config.train.num_steps: must be >= 1"),
    ("train.eval_every_steps", -1, "config.train.eval_every_steps: must be >= 1, or 0 for no validation"),
    ("train.optimizer", "adam", "config.train.optimizer: unknown optimizer 'adam'"),
    (
      "train.loss",
      "dice_focal",
      "config.train.loss: unknown loss 'dice_focal'; choose one of dice_ce, ce, dice, focal",
    ),
    ("eval.mirror_axes", (2,), "config.eval.mirror_axes"),
    ("mesh.data", 0, "config.mesh.data"),
    ("adversarial.input", "sum", "config.adversarial.input='sum': unknown input form"),
    ("adversarial.disc_every_steps", 0, "config.adversarial.disc_every_steps=0: must be an integer >= 1"),
    ("adversarial.features", 0, "config.adversarial.features=0: must be an integer >= 1"),
    ("adversarial.warmup_steps", -1, "config.adversarial.warmup_steps=-1: must be an integer >= 0"),
    ("adversarial.learning_rate", 0.0, "config.adversarial.learning_rate=0.0: must be > 0"),
    ("adversarial.beta1", 1.0, "config.adversarial.beta1=1.0: must be in [0, 1)"),
  ],
)
def test_bad_values_name_the_key(key, value, message):
  config = config_lib.base_config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
    config_lib.validate(config)


def test_discriminator_patch_check_only_when_adversarial_training_is_on():
  config = config_lib.base_config()
  config.data.patch_size = (16, 16)
  config.adversarial.num_layers = 5  # Needs 32 voxels per axis.
  config_lib.validate(config)  # Off: the discriminator is never built.
  config.adversarial.enabled = True
  with pytest.raises(ConfigError, match=r"config.data.patch_size=\(16, 16\) is smaller than the 32 voxels"):
    config_lib.validate(config)


def test_losses_are_the_loss_registry():
  assert config_lib.LOSSES == tuple(losses.LOSSES)


def test_msd_needs_a_root():
  config = config_lib.base_config()
  config.data.name = "msd"
  with pytest.raises(ConfigError, match="config.data.root"):
    config_lib.validate(config)


def test_config_json_round_trips():
  config = config_lib.base_config()
  data = json.loads(config_lib.to_json(config))
  assert data["train"]["num_steps"] == config.train.num_steps
  assert data["data"]["patch_size"] == list(config.data.patch_size)
