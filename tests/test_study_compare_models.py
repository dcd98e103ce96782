"""experiments/compare_models.py: options, configs, aggregation, report; its --quick run (slow)."""

import json
import math

import pytest

from study_modules import assert_refused_before_training, load_study


cm = load_study("compare_models")


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--models=unet,vit"], r"unknown model 'vit'; choose from unet, attention_unet, fcn8s"),
    (["--datasets=ct_phantom,xray"], r"unknown dataset 'xray'; choose from ct_phantom, mr_phantom"),
    (["--methods=otsu,snakes"], r"unknown method 'snakes'; choose from threshold_components, otsu"),
    (["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
    (["--seeds=0"], r"--seeds must be >= 1, got 0"),
  ],
)
def test_bad_input_is_one_line_before_training(tmp_path, argv, message):
  assert_refused_before_training(cm, "compare_models", argv, message, tmp_path)


def test_grid_skips_3d_models_on_2d_data_and_sets_defaults(tmp_path):
  args = cm.parse_args(
    [f"--workdir={tmp_path}", "--models=unet,unet3d", "--datasets=ct_phantom,microscopy_phantom", "--methods=none"]
  )
  assert args.grid == {"ct_phantom": ["unet", "unet3d"], "microscopy_phantom": ["unet"]}
  assert args.methods == [] and args.seeds == 3
  default = cm.parse_args([f"--workdir={tmp_path}"])
  assert default.grid["ct_phantom"] == list(cm.MODELS) and len(default.methods) == 5
  assert "unet3d" not in default.grid["microscopy_phantom"]


def test_run_configs_share_the_recipe_and_budget_and_take_the_architecture(tmp_path):
  args = cm.parse_args([f"--workdir={tmp_path}"])
  configs = {m: cm.run_config(m, "ct_phantom", 1, args) for m in cm.MODELS}
  p = cm.PROTOCOLS["cpu"]
  for config in configs.values():
    assert config.seed == 1 and config.data.name == "ct_phantom"
    assert config.train.num_steps == p["num_steps"] and config.train.learning_rate == 2e-3
    assert math.prod(config.data.patch_size) * config.train.batch_size == 8 * 64 * 64  # Equal voxels per batch.
    assert not config.eval.postprocess and config.eval.checkpoint == "latest" and config.eval.splits == ("test",)
    assert config.data.augment.rotate_max_deg == 15.0  # configs/unet_ct.py's recipe for every model.
  assert configs["fcn8s"].model.name == "fcn8s" and configs["fcn8s"].model.backbone == "resnet18"
  assert configs["deeplabv3"].model.output_stride == 16 and configs["unet3d"].model.deep_supervision
  assert configs["unet"].model.norm == "batch" and configs["unet3d"].model.norm == "instance"
  mr = cm.run_config("unet", "mr_phantom", 0, args)
  assert mr.data.name == "mr_phantom" and mr.model.name == "unet" and len(mr.data.patch_size) == 2
  for name, proto in cm.PROTOCOLS.items():
    assert math.prod(proto["patch_3d"]) * proto["batch_3d"] == math.prod(proto["patch_2d"]) * proto["batch_2d"], name
  quick = cm.run_config("deeplabv3plus", "ct_phantom", 0, cm.parse_args([f"--workdir={tmp_path}", "--quick"]))
  assert quick.model.backbone_width == 8 and quick.train.num_steps == 3


def _run(method, dataset, seed, dice, kind="deep"):
  test = {
    c: {"dice": d, "iou": d / (2 - d), "sensitivity": d, "specificity": 1.0, "hd95": 10 * (1 - d)}
    for c, d in (("liver", dice), ("spleen", dice / 2))
  }
  test["mean_foreground"] = {m: (test["liver"][m] + test["spleen"][m]) / 2 for m in test["liver"]}
  test["num_cases"] = 3
  return {
    "kind": kind,
    "method": method,
    "dataset": dataset,
    "seed": seed,
    "test": test,
    "seconds": 10.0,
    "train_seconds": 5.0,
    "parameters": None if kind != "deep" else 1000,
    "forward_gflops_per_patch": None if kind != "deep" else 0.5,
    "reused": False,
    "cases": {"c1": {"liver": dice, "spleen": dice / 2}, "c2": {"liver": dice - 0.2, "spleen": dice / 4}},
    **({"fitted": {"num_cases": 2}} if kind == "traditional" else {}),
  }


RUNS = (
  [_run("unet", "ct_phantom", s, d) for s, d in enumerate((0.6, 0.7, 0.8))]
  + [_run("fcn8s", "ct_phantom", s, d) for s, d in enumerate((0.5, 0.5, 0.6))]
  + [_run("otsu", "ct_phantom", None, 0.4, "traditional"), _run("watershed", "ct_phantom", None, 0.3, "traditional")]
)


def test_aggregate_and_paired_differences_by_hand():
  table = cm.aggregate(RUNS)
  unet = table["ct_phantom"]["unet"]
  assert unet["liver"]["dice"][0] == pytest.approx(0.7) and unet["liver"]["dice"][1] == pytest.approx(0.1)
  assert (
    unet["n"] == 3 and table["ct_phantom"]["otsu"]["n"] == 1 and table["ct_phantom"]["otsu"]["kind"] == "traditional"
  )
  assert cm.best(table, "ct_phantom", "deep") == "unet" and cm.best(table, "ct_phantom", "traditional") == "otsu"
  compared = cm.comparisons(RUNS, table)["ct_phantom"]
  assert set(compared) == {"fcn8s - unet", "unet - otsu", "unet - otsu (over test cases)"}
  fcn = compared["fcn8s - unet"]["liver"]
  assert fcn["per_seed"] == pytest.approx([-0.1, -0.2, -0.2])
  # 95% t interval of the mean of (-0.1, -0.2, -0.2): t(0.975, 2) = 4.3027, std 0.057735.
  half = 4.302652729911275 * 0.05773502691896258 / math.sqrt(3)
  assert fcn["ci95"] == pytest.approx([-1 / 6 - half, -1 / 6 + half])
  # The traditional method (no seed) pairs with every seed of the deep model.
  assert compared["unet - otsu"]["liver"]["per_seed"] == pytest.approx([0.2, 0.3, 0.4])
  # Over test cases: the U-Net's Dice of a case averaged over seeds (c1 liver 0.7, c2 liver 0.5, c1 spleen
  # 0.35, c2 spleen 0.175) minus otsu's (0.4, 0.2, 0.2, 0.1).
  cases = compared["unet - otsu (over test cases)"]
  assert cases["liver"]["per_seed"] == pytest.approx([0.3, 0.3])
  assert cases["mean_foreground"]["per_seed"] == pytest.approx([(0.7 + 0.35 - 0.6) / 2, (0.5 + 0.175 - 0.3) / 2])
  lines = cm.reading(table, {"ct_phantom": compared})
  assert "unet 0.525" in lines[0] and "the interval excludes 0: the deep model is better" in lines[0]
  assert "worse fcn8s" in lines[0]


def test_markdown_and_figure(tmp_path):
  args = cm.parse_args(
    [
      f"--workdir={tmp_path}",
      "--models=unet,fcn8s",
      "--datasets=ct_phantom",
      "--methods=otsu,watershed",
      f"--output={tmp_path / 'out' / 'cm'}",
    ]
  )
  table = cm.aggregate(RUNS)
  compared = cm.comparisons(RUNS, table)
  meta = {
    "command": "python experiments/compare_models.py",
    "date": "2026-12-01",
    "wall_seconds": 60.0,
    "scale": "cpu",
    "machine": "m",
    "cpu_count": 2,
    "load_average": [1.0, 1.0, 1.0],
    "versions": {"jax": "x", "flax": "y", "optax": "z"},
    "device": {"count": 1, "platform": "cpu", "kind": "cpu"},
  }
  text = cm.markdown(meta, args, RUNS, table, compared)
  assert "| unet | deep | 0.700 ± 0.100 | 0.350 ± 0.050 | 0.525 ± 0.075 | 0.00 M | 0.500 |" in text
  assert "| otsu | traditional | 0.400 | 0.200 | 0.300 | - | - | 5 | 10 |" in text  # One value: no '± 0'.
  assert "| fcn8s - unet | -0.167 [" in text
  assert '- ct_phantom: {"num_cases": 2}' in text and "INCOMPLETE" not in text
  partial = cm.markdown(
    meta, args, RUNS, table, compared, {"deep_runs_finished": 6, "deep_runs_in_grid": 9, "complete": False}
  )
  assert partial.startswith("# ") and "**INCOMPLETE: 6 of the 9 deep runs" in partial
  (tmp_path / "out").mkdir()
  cm.save_figure(tmp_path / "out" / "cm.png", table)
  assert (tmp_path / "out" / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_traditional_records_are_reused_without_redoing_them(tmp_path, monkeypatch):
  from jaxseg import experiment

  args = cm.parse_args([f"--workdir={tmp_path}", "--datasets=ct_phantom", "--methods=otsu", "--quick"])
  config = cm.run_config("unet", "ct_phantom", 0, args)
  key = {
    "data": config.data.to_dict(),
    "methods_version": cm.TRADITIONAL_VERSION,
    "prepared_version": cm.prepared_version(),
  }
  run = _run("otsu", "ct_phantom", None, 0.4, "traditional")
  directory = tmp_path / "ct_phantom_traditional"
  directory.mkdir()
  (directory / "otsu.json").write_text(json.dumps({"key": key, "run": run}, default=str))

  def refuse(*a, **k):
    raise AssertionError("a finished method was redone")

  monkeypatch.setattr(experiment, "setup", refuse)
  runs = cm.traditional_runs("ct_phantom", args)
  assert len(runs) == 1 and runs[0]["reused"] and runs[0]["test"]["liver"]["dice"] == 0.4
  stale = {"key": {**key, "methods_version": cm.TRADITIONAL_VERSION - 1}, "run": run}
  (directory / "otsu.json").write_text(json.dumps(stale, default=str))
  with pytest.raises(AssertionError, match="redone"):  # Another version of the methods: redone.
    cm.traditional_runs("ct_phantom", args)


def test_report_only_trains_nothing(tmp_path, monkeypatch):
  def refuse(*a, **k):
    raise AssertionError("report_only trained a run")

  monkeypatch.setattr(cm._study, "run_training", refuse)
  with pytest.raises(SystemExit, match=r"--report_only: no finished runs in "):
    cm.main([f"--workdir={tmp_path}", "--report_only", "--datasets=ct_phantom", f"--output={tmp_path / 'cm'}"])
  assert not (tmp_path / "cm.md").exists()


@pytest.mark.slow
def test_quick_protocol_end_to_end_and_resume(tmp_path):
  """The --quick study: every table, paired interval and the figure; a second invocation reuses every run."""
  argv = [f"--workdir={tmp_path / 'runs'}", f"--output={tmp_path / 'out' / 'compare_models'}", "--quick"]
  cm.main(argv)
  data = json.loads((tmp_path / "out" / "compare_models.json").read_text())
  assert data["scale"] == "quick" and data["seeds"] == 2
  assert set(data["table"]) == {"ct_phantom", "microscopy_phantom"}
  assert "unet3d" in data["table"]["ct_phantom"] and "unet3d" not in data["table"]["microscopy_phantom"]
  for name in ("threshold_components", "otsu", "watershed", "random_walker", "chan_vese"):
    assert data["table"]["ct_phantom"][name]["kind"] == "traditional"
  deep = [r for r in data["runs"] if r["kind"] == "deep"]
  assert len(deep) == 2 * 3 + 2 * 1 and all(r["parameters"] > 0 and r["forward_gflops_per_patch"] > 0 for r in deep)
  assert "fcn8s - unet" in data["paired_dice_differences"]["ct_phantom"]
  assert (tmp_path / "out" / "compare_models.png").exists()
  text = (tmp_path / "out" / "compare_models.md").read_text()
  assert "## ct_phantom" in text and "## microscopy_phantom" in text and "Best deep" in text
  cm.main(argv)  # Resumes: every run is read back.
  again = json.loads((tmp_path / "out" / "compare_models.json").read_text())
  assert all(r["reused"] for r in again["runs"])
  assert (
    again["table"]["ct_phantom"]["unet"]["mean_foreground"] == data["table"]["ct_phantom"]["unet"]["mean_foreground"]
  )
