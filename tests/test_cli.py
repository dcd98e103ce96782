"""The command line turns user mistakes into one line and a non-zero exit."""

import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).parent.parent


def run_cli(*args, cwd=ROOT, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "jaxseg.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def assert_one_line_error(result, *fragments):
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("jaxseg: error:")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_missing_config_file():
  assert_one_line_error(run_cli("--config=configs/nope.py"), "config file configs/nope.py does not exist")


def test_misspelt_override_names_the_key_and_a_suggestion():
  assert_one_line_error(
    run_cli("--config=configs/unet_ct.py", "--config.train.num_stpes=3"),
    "unknown config key config.train.num_stpes",
    "did you mean config.train.num_steps",
  )


def test_misspelt_key_in_config_file(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text(
    "from jaxseg.config import base_config\n\ndef get_config(arg=None):\n"
    "  config = base_config()\n  config.train.learnin_rate = 1.0\n  return config\n"
  )
  assert_one_line_error(run_cli(f"--config={path}"), f"config file {path}", "learnin_rate")


def test_bad_value_names_the_key(tmp_path):
  assert_one_line_error(
    run_cli("--config=configs/unet_ct.py", "--config.model.name=unett", f"--workdir={tmp_path}"),
    "config.model.name",
    "unett",
  )


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert_one_line_error(
    run_cli("--config=configs/unet_ct.py", f"--workdir={blocker}/run"), f"workdir {blocker}/run cannot be written"
  )


def test_predict_mode_without_input_names_the_key(tmp_path):
  assert_one_line_error(
    run_cli("--config=configs/unet_ct.py", "--mode=predict", f"--workdir={tmp_path}"), "config.predict.input is empty"
  )


def assert_usage(text):
  """The usage a newcomer needs: the modes, the main flags and a command to copy."""
  for fragment in (
    "Modes (--mode):",
    "train ",
    "evaluate ",
    "predict ",
    "plan ",
    "interpret ",
    "--workdir=DIR",
    "--config.KEY=VALUE",
    "--verbosity=N",
    "<workdir>/logs/",
    "python -m jaxseg.main --config=configs/unet_ct.py:quick --workdir=",
  ):
    assert fragment in text, fragment


def test_help_without_config_prints_the_usage():
  result = run_cli("--help")
  assert "--config: Config file" in result.stdout and "--mode" in result.stdout
  assert "-v,--verbosity: What the console shows" in result.stdout and "(default: '0')" in result.stdout
  assert "--config is required" not in result.stderr
  assert_usage(result.stdout)


def test_no_arguments_prints_the_usage():
  result = run_cli()
  assert result.returncode == 0 and not result.stderr, result.stderr
  assert_usage(result.stdout)


def test_flags_without_config_print_the_usage_then_what_is_missing():
  result = run_cli("--workdir=/tmp/nowhere")
  assert result.returncode == 2
  assert_usage(result.stdout)
  assert result.stderr.strip().splitlines() == [
    "jaxseg: error: --config is required, e.g. --config=configs/unet_ct.py:quick"
  ]
