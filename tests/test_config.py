"""Every config file loads and validates; the config is locked; bad values are named."""

import importlib.util
import pathlib

import pytest

from jaxseg import config as config_lib
from jaxseg.errors import ConfigError

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_validates(path):
  config = load(path)
  if config.data.name == "msd":  # Needs the user's dataset directory.
    config.data.root = "/data/Task09_Spleen"
  config_lib.validate(config)
  assert config.is_locked


@pytest.mark.parametrize("name,arg", [("unet_ct", "quick"), ("unet3d_ct", "quick"), ("attention_unet_ct", "quick"),
                                      ("fcn_ct", "16s_quick"), ("deeplab_ct", "v3_quick")])
def test_quick_variants_are_small(name, arg):
  config = load(pathlib.Path(f"configs/{name}.py"), arg)
  config_lib.validate(config)
  assert config.train.num_steps <= 50


def test_unknown_variant_is_rejected():
  with pytest.raises(ConfigError, match="unknown variant 'fast'"):
    load(pathlib.Path("configs/unet_ct.py"), "fast")


def test_misspelt_key_cannot_be_set():
  config = config_lib.base_config()
  with pytest.raises(AttributeError):
    config.train.num_stpes = 3


@pytest.mark.parametrize("key,value,message", [
    ("data.name", "ct_phantomm", "config.data.name: unknown dataset 'ct_phantomm'"),
    ("model.name", "unett", "config.model.name: unknown model 'unett'"),
    ("data.patch_size", (64, 64, 64), "config.data.patch_size"),
    ("train.num_steps", 0, "config.train.num_steps: must be >= 1"),
    ("train.optimizer", "adam", "config.train.optimizer: unknown optimizer 'adam'"),
    ("eval.mirror_axes", (2,), "config.eval.mirror_axes"),
    ("mesh.data", 0, "config.mesh.data"),
])
def test_bad_values_name_the_key(key, value, message):
  config = config_lib.base_config()
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(config)


def test_msd_needs_a_root():
  config = config_lib.base_config()
  config.data.name = "msd"
  with pytest.raises(ConfigError, match="config.data.root"):
    config_lib.validate(config)


def test_config_json_round_trips():
  import json
  config = config_lib.base_config()
  data = json.loads(config_lib.to_json(config))
  assert data["train"]["num_steps"] == config.train.num_steps
  assert data["data"]["patch_size"] == list(config.data.patch_size)
