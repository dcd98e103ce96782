"""`--mode=interpret` end to end on a tiny trained workdir: figures, scores, bad inputs."""

import json

import pytest

from jaxseg import interpret_mode, train
from jaxseg.config import base_config, validate
from jaxseg.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  workdir = tmp_path_factory.mktemp("run")
  config = base_config()
  config.data.data_dir = str(data_dir)
  config.data.num_cases = 5
  config.data.num_threads = 1
  config.model.update(features=4, depth=2)
  config.train.update(
    num_steps=2, batch_size=2, warmup_steps=1, log_every_steps=2, eval_every_steps=2, checkpoint_every_steps=2
  )
  config.eval.splits = ("test",)
  config.eval.num_figures = 0
  train.train_and_evaluate(config, workdir)
  config.interpret.update(
    num_cases=1,
    classes=("liver,",),  # As '--config.interpret.classes=liver,' gives it.
    smoothgrad_samples=2,
    ig_steps=2,
    checkpoint="latest",
  )
  return config, workdir


def test_interpret_writes_figures_and_scores(trained):
  config, workdir = trained
  result = interpret_mode.interpret_workdir(config, workdir)
  out = workdir / "interpret" / "test"
  saved = json.loads((out / "scores.json").read_text())
  assert saved == result and saved["step"] == 2 and saved["methods"] == list(config.interpret.methods)
  assert saved["layer"] == "default"
  ((case_id, per_class),) = saved["cases"].items()
  assert list(per_class) == ["liver"]
  assert per_class["liver"]["predicted_voxels"] >= 0
  for method in config.interpret.methods:
    scores = per_class["liver"]["maps"][method]
    assert set(scores) == {"localisation", "randomized_rank_correlation"}
    assert scores["localisation"] is None or 0.0 <= scores["localisation"] <= 1.0
  png = out / f"{case_id}_liver.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interpret_over_the_reference_has_mass_inside_it(trained):
  """Over the reference region every map has positive mass (a two-step model still has gradients)."""
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.interpret.region = "reference"
  config.interpret.methods = ("saliency", "grad_cam")
  result = interpret_mode.interpret_workdir(config, workdir)
  (per_class,) = result["cases"].values()
  assert result["region"] == "reference"
  assert per_class["liver"]["maps"]["saliency"]["localisation"] > 0


def test_interpret_bad_inputs_name_the_key(trained):
  config, workdir = trained
  bad = config.copy_and_resolve_references()
  bad.interpret.classes = ("pancreas",)
  with pytest.raises(ConfigError, match=r"config.interpret.classes: pancreas not a foreground class"):
    interpret_mode.interpret_workdir(bad, workdir)
  bad = config.copy_and_resolve_references()
  bad.interpret.cases = ("nope_001",)
  with pytest.raises(ConfigError, match=r"config.interpret.cases: nope_001 not in split 'test'"):
    interpret_mode.interpret_workdir(bad, workdir)
  bad = config.copy_and_resolve_references()
  bad.interpret.methods = ("attention",)
  with pytest.raises(ConfigError, match=r"'attention' but model.name='unet'"):
    interpret_mode.interpret_workdir(bad, workdir)
  bad = config.copy_and_resolve_references()
  bad.interpret.methods = ("lime",)
  with pytest.raises(ConfigError, match=r"config.interpret.methods: \('lime',\) must name some of saliency"):
    validate(bad)
