"""experiments/transfer_learning.py: its refusals, configs and statistics (fast), and its --quick protocol (slow)."""

import json
import math

import numpy as np
import pytest

from study_modules import assert_refused_before_training, load_study
from scipy import stats


study = load_study("transfer_learning")


def resnet_keys(path, width=8, layer3_blocks=2, bottleneck=False):
  """An .npz with just the keys (and conv1's shape) that tell a torchvision ResNet apart."""
  arrays = {"conv1.weight": np.zeros((width, 3, 7, 7), np.float32), "fc.weight": np.zeros((10, width), np.float32)}
  for block in range(layer3_blocks):
    arrays[f"layer3.{block}.conv1.weight"] = np.zeros((1,), np.float32)
  arrays["layer1.0.conv1.weight"] = np.zeros((1,), np.float32)
  if bottleneck:
    arrays["layer1.0.conv3.weight"] = np.zeros((1,), np.float32)
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--bogus"], r"unrecognized arguments: --bogus"),
    (["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
    (["--seeds=0"], r"--seeds must be >= 1, got 0"),
    (["--target_cases=1,x"], r"--target_cases='1,x' must be comma-separated integers"),
    (["--target_cases=0,2"], r"--target_cases='0,2': each must be 1..16 \(the mr_phantom training split"),
    (["--target_cases=17"], r"each must be 1..16"),
    (["--quick", "--target_cases=5"], r"each must be 1..4"),
    (
      ["--torchvision_weights=/nonexistent/resnet18.pth"],
      r"--torchvision_weights: /nonexistent/resnet18.pth: config.model.pretrained file does not exist",
    ),
  ],
)
def test_bad_input_is_one_line_before_training(tmp_path, argv, message):
  assert_refused_before_training(study, "transfer_learning", argv, message, tmp_path)


def test_weights_that_are_not_a_resnet_are_refused(tmp_path):
  np.savez(tmp_path / "other.npz", **{"encoder.weight": np.zeros(3, np.float32)})
  with pytest.raises(
    SystemExit,
    match=r"--torchvision_weights: .*other.npz: not the state_dict of a torchvision "
    r"resnet18/34/50/101 or vgg16",
  ):
    study.main([f"--torchvision_weights={tmp_path / 'other.npz'}", f"--workdir={tmp_path / 'runs'}"])
  np.savez(tmp_path / "vgg.npz", **{"features.28.weight": np.zeros(3, np.float32)})
  with pytest.raises(SystemExit, match=r"holds VGG16 weights; DeepLab needs a ResNet"):
    study.main([f"--torchvision_weights={tmp_path / 'vgg.npz'}", f"--workdir={tmp_path / 'runs'}"])


def test_plan_and_run_configs(tmp_path):
  weights = resnet_keys(tmp_path / "r34.npz", width=16, layer3_blocks=6)
  args = study.parse_args(
    ["--target_cases=4,1", f"--torchvision_weights={weights}", "--seeds=2", f"--workdir={tmp_path / 'runs'}"]
  )
  assert args.sizes == (1, 4) and args.backbone == "resnet34" and args.backbone_width == 16
  runs = study.plan(args)
  assert [(r["arm"], r["cases"]) for r in runs[:5]] == [
    ("pretrain", 0),
    ("scratch", 1),
    ("fine_tuned", 1),
    ("deeplab_scratch", 1),
    ("deeplab_imagenet", 1),
  ]
  assert len(runs) == 2 * (1 + 2 * 4)
  by = {(r["arm"], r["cases"], r["seed"]): r for r in runs}
  pre = by[("pretrain", 0, 1)]["config"]
  assert pre.data.name == "ct_phantom" and pre.data.max_train_cases == 0 and pre.seed == 1
  assert pre.train.num_steps == study.PROTOCOLS["cpu"]["pretrain_steps"] and not pre.train.init_from
  tuned, scratch = by[("fine_tuned", 4, 1)]["config"], by[("scratch", 4, 1)]["config"]
  assert tuned.data.name == scratch.data.name == "mr_phantom"
  assert tuned.data.max_train_cases == scratch.data.max_train_cases == 4
  assert tuned.train.init_from == str(by[("pretrain", 0, 1)]["workdir"])
  assert tuned.train.init_from_exclude == ("params/head*",) and tuned.train.init_from_checkpoint == "latest"
  # Apart from the initialisation, the two arms are the same run (same budget, seed, model, data).
  assert tuned.train.num_steps == scratch.train.num_steps == study.PROTOCOLS["cpu"]["target_steps"]
  tuned.train.init_from, tuned.train.init_from_exclude, tuned.train.init_from_checkpoint = "", (), "best"
  assert tuned.to_json(sort_keys=True) == scratch.to_json(sort_keys=True)
  imagenet = by[("deeplab_imagenet", 1, 0)]["config"]
  assert imagenet.model.name == "deeplabv3plus" and imagenet.model.backbone == "resnet34"
  assert imagenet.model.backbone_width == 16 and imagenet.model.pretrained == str(weights.resolve())
  assert not by[("deeplab_scratch", 1, 0)]["config"].model.pretrained


def fake_runs(dice):
  """Runs as main() collects them, from {(arm, cases, seed): mean foreground Dice}."""
  return [
    {
      "arm": arm,
      "cases": cases,
      "seed": seed,
      "seconds": 1.0,
      "reused": False,
      "results": {"test": {"mean_foreground": {"dice": d}, "liver": {"dice": d}, "num_cases": 5}},
    }
    for (arm, cases, seed), d in dice.items()
  ]


def test_summary_against_scipy(tmp_path):
  args = study.parse_args(["--target_cases=1,2", "--seeds=3", f"--workdir={tmp_path}"])
  rng = np.random.default_rng(0)
  dice = {(arm, k, s): float(rng.uniform()) for arm in ("scratch", "fine_tuned") for k in (1, 2) for s in range(3)}
  dice[("pretrain", 0, 0)] = 0.9
  summary = study.summarise(fake_runs(dice), args)
  for k in (1, 2):
    scratch = [dice[("scratch", k, s)] for s in range(3)]
    tuned = [dice[("fine_tuned", k, s)] for s in range(3)]
    mean, std, n = summary[str(k)]["fine_tuned"]
    assert n == 3 and math.isclose(mean, np.mean(tuned)) and math.isclose(std, np.std(tuned, ddof=1))
    diff = np.array(tuned) - np.array(scratch)
    low, high = stats.t.interval(0.95, 2, loc=diff.mean(), scale=stats.sem(diff))
    paired = summary[str(k)]["fine_tuned_minus_scratch"]
    assert math.isclose(paired["stat"][0], diff.mean()) and np.allclose(paired["ci95"], [low, high])
  lines = study.reading(summary, args)
  assert len(lines) == 1 and "k=1: " in lines[0] and "k=2: " in lines[0]


def test_reading_says_better_only_when_the_interval_excludes_zero(tmp_path):
  args = study.parse_args(["--target_cases=1,2", "--seeds=3", f"--workdir={tmp_path}"])
  dice = {}
  for s in range(3):
    dice[("scratch", 1, s)], dice[("fine_tuned", 1, s)] = 0.2 + 0.01 * s, 0.5 + 0.012 * s  # Always +0.3.
    dice[("scratch", 2, s)], dice[("fine_tuned", 2, s)] = 0.5, 0.5 + (0.05, -0.05, 0.01)[s]  # Noise.
  text = study.reading(study.summarise(fake_runs(dice), args), args)[0]
  assert "k=1: +0.302" in text and "], better" in text.split("k=2")[0]
  assert "no difference beyond seed noise" in text.split("k=2")[1]


def test_figure_is_written(tmp_path):
  args = study.parse_args(["--target_cases=1,2", "--seeds=2", f"--workdir={tmp_path}"])
  dice = {(arm, k, s): 0.1 * k + 0.05 * s for arm in ("scratch", "fine_tuned") for k in (1, 2) for s in range(2)}
  study.save_figure(tmp_path / "figure.png", study.summarise(fake_runs(dice), args), args)
  assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_protocol_end_to_end_and_resume(tmp_path, capsys):
  output = tmp_path / "out" / "transfer_learning"
  argv = ["--quick", f"--workdir={tmp_path / 'runs'}", f"--output={output}"]
  study.main(argv)
  saved = json.loads(output.with_suffix(".json").read_text())
  assert saved["scale"] == "quick" and saved["torchvision"]["run"] is False
  arms = [(r["arm"], r["cases"]) for r in saved["runs"]]
  assert arms == [("pretrain", 0), ("scratch", 1), ("fine_tuned", 1), ("scratch", 2), ("fine_tuned", 2)]
  assert saved["init_from"]["num_copied"] > 0
  kept = {k.split(" ")[0] for k in saved["init_from"]["kept"]}
  assert kept == {"params/down0/conv0/kernel", "params/head0/kernel", "params/head0/bias"}  # 1 vs 2 channels; head.
  text = output.with_suffix(".md").read_text()
  assert "torchvision arm: not run" in text and "| 1 |" in text
  assert output.with_suffix(".png").exists()
  capsys.readouterr()
  study.main(argv)  # Everything finished: read back, nothing trained again.
  again = json.loads(output.with_suffix(".json").read_text())
  assert all(r["reused"] for r in again["runs"])
  assert again["summary"] == saved["summary"]
