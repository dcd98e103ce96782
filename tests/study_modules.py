"""What the study tests share: loading `experiments/NAME.py`, and the one-line refusal every study owes."""

import importlib.util
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))  # The studies import _study.


def load_study(name: str):
  """The module of `experiments/<name>.py` (registered, since dataclasses look their module up)."""
  spec = importlib.util.spec_from_file_location(f"study_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def assert_refused_before_training(module, name: str, argv, message: str, tmp_path, *extra: str) -> None:
  """`module.main(argv)` stops with one line `experiments/<name>.py: ...` matching `message`, writing nothing."""
  with pytest.raises(SystemExit, match=message) as raised:
    module.main([*argv, f"--workdir={tmp_path / 'runs'}", *extra])
  text = str(raised.value.code)
  assert "\n" not in text and text.startswith(f"experiments/{name}.py: ")
  assert not (tmp_path / "runs").exists()  # Nothing was generated or trained.
