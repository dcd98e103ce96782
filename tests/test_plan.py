"""Planning (jaxseg.plan): pure functions of a dataset summary and a device description, no training."""

import math

import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import plan
from jaxseg.data import preprocess
from jaxseg.errors import ConfigError

GPU8 = plan.Devices("gpu", 1, 8.0, "1 x test GPU")


def summary(shape, spacing, cases=40, channels=1, classes=2, ndim=3, val=4, test=8):
  return plan.DatasetSummary(tuple(shape), tuple(spacing), cases, channels, classes, ndim, val, test)


# Spleen-, prostate-, hippocampus- and BraTS-like fingerprints (approximate median shapes and target spacings
# of those Decathlon tasks): nnU-Net v2's plans for these datasets have 3d_fullres (64,192,160) b2,
# (20,320,256) b2, (40,56,40) b9 and (128,128,128) b2, 2d (512,512) b12 and (56,40) b366.
@pytest.mark.parametrize(
  "shape, spacing, cases, channels, classes, fullres, batch3d, twod, batch2d",
  [
    ((187, 512, 512), (1.6, 0.793, 0.793), 41, 1, 2, (64, 192, 160), 2, (512, 512), 12),
    ((20, 320, 319), (3.6, 0.625, 0.625), 32, 2, 3, (20, 320, 256), 2, (320, 320), 31),
    ((36, 50, 35), (1.0, 1.0, 1.0), 260, 1, 3, (40, 56, 40), 9, (56, 40), 366),
    ((138, 169, 138), (1.0, 1.0, 1.0), 484, 4, 4, (128, 128, 128), 2, (192, 160), 105),
  ],
)
def test_gpu_plans_match_nnunet(shape, spacing, cases, channels, classes, fullres, batch3d, twod, batch2d):
  s = summary(shape, spacing, cases, channels, classes)
  p = plan.make_plan(s, GPU8, "unet3d")
  conf = p["configurations"]
  assert tuple(conf["3d_fullres"]["patch_size"]) == fullres and conf["3d_fullres"]["batch_size"] == batch3d
  assert tuple(conf["2d"]["patch_size"]) == twod and conf["2d"]["batch_size"] == batch2d
  assert p["applied_configuration"] == "3d_fullres"
  values = p["values"]
  assert values["data.patch_size"] == fullres and values["train.batch_size"] == batch3d
  assert values["model.features"] == 32 and values["model.max_features"] == 320
  assert values["train.num_steps"] == 250_000 and values["train.eval_every_steps"] == 12_500
  # Every patch axis is a multiple of 2**pools along it.
  for c in conf.values():
    assert all(p_ % 2**n == 0 for p_, n in zip(c["patch_size"], c["pool_per_axis"]))
  # The U-Net pools and convolves exactly as planned.
  assert values["model.pool_factors"] == tuple(map(tuple, conf["3d_fullres"]["strides"][1:]))
  assert values["model.kernel_sizes"] == tuple(map(tuple, conf["3d_fullres"]["kernel_sizes"]))
  assert len(values["model.pool_factors"]) == values["model.depth"]


def test_anisotropic_data_pools_the_thick_axis_later():
  s = summary((20, 320, 319), (3.6, 0.625, 0.625))
  network, _ = plan.configure(s, 3, 8.0)
  strides = np.asarray(network.strides)
  assert network.pool_per_axis == (2, 6, 6)
  assert strides[1:3, 0].tolist() == [1, 1] and strides[3:5, 0].tolist() == [2, 2]  # z pooled from stage 3.
  assert network.kernel_sizes[0] == (1, 3, 3) and network.kernel_sizes[-1] == (3, 3, 3)
  assert s.anisotropy == pytest.approx(5.76)
  # nnU-Net v2's Prostate plan: strides 1x2x2, 1x2x2, 2x2x2, 2x2x2, 1x2x2, 1x2x2; kernels 1x3x3 twice, then 3x3x3.
  values = plan.make_plan(s, GPU8, "unet3d")["values"]
  assert values["model.pool_factors"] == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
  assert values["model.kernel_sizes"] == ((1, 3, 3),) * 2 + ((3, 3, 3),) * 5
  text = plan.format_plan(plan.make_plan(s, GPU8, "unet3d"))
  assert "(per stage 1x2x2, 1x2x2, 2x2x2, 2x2x2, 1x2x2, 1x2x2)" in text
  assert "config.model.pool_factors = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]" in text


def test_isotropic_data_pools_every_axis_together():
  pools, strides, kernels, patch, divisible = plan.pool_and_conv((1.0, 1.0, 1.0), (128, 128, 128))
  assert pools == (5, 5, 5) and all(set(s) == {2} for s in strides[1:]) and patch == (128, 128, 128)
  assert divisible == (32, 32, 32) and all(k == (3, 3, 3) for k in kernels)


def test_2d_data_gets_only_a_2d_configuration():
  s = summary((1, 512, 512), (1.0, 0.5, 0.5), cases=100, ndim=2)
  p = plan.make_plan(s, GPU8, "unet")
  assert list(p["configurations"]) == ["2d"] and p["applied_configuration"] == "2d"
  assert p["values"]["data.patch_size"] == (512, 512) and p["values"]["model.depth"] == 7
  with pytest.raises(ConfigError, match="3D model but the dataset is 2D"):
    plan.make_plan(s, GPU8, "unet3d")


def test_tiny_fingerprint():
  s = summary((8, 10, 9), (1.0, 1.0, 1.0), cases=3)
  p = plan.make_plan(s, GPU8, "unet3d")
  conf = p["configurations"]["3d_fullres"]
  assert tuple(conf["patch_size"]) == (8, 10, 9) or all(a >= b for a, b in zip(conf["patch_size"], (8, 10, 9)))
  assert conf["batch_size"] == plan.MIN_BATCH  # 5 % of 3 tiny cases is less than two patches.
  assert p["values"]["model.depth"] == len(conf["strides"]) - 1


def test_huge_fingerprint_shrinks_patch_and_memory_grows_batch():
  s = summary((1000, 1000, 1000), (0.5, 0.5, 0.5), cases=500)
  small, info_small = plan.configure(s, 3, 8.0)
  big, info_big = plan.configure(s, 3, 80.0)
  assert math.prod(small.patch_size) <= 256**3 and info_small["estimated_gb"] <= 8.0 * 1.01
  assert big.batch_size > small.batch_size or math.prod(big.patch_size) > math.prod(small.patch_size)
  assert info_big["estimated_gb"] <= 80.0 * 1.01


def test_batch_scales_with_devices_and_steps_shrink():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793))
  four = plan.make_plan(s, plan.Devices("gpu", 4, 8.0), "unet3d")["values"]
  assert four["train.batch_size"] == 8 and four["train.num_steps"] == 250_000 // 4


def test_smallest_patch_that_does_not_fit_names_the_numbers():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793))
  with pytest.raises(
    ConfigError,
    match=r"smallest patch .* needs an estimated [0-9.]+ GB per device but the device "
    r"has 0.00 GB",
  ):
    plan.configure(s, 3, 0.001)


def _cpu_stub(seconds_per_gflop):
  calls = []

  def measure(candidate):
    calls.append(candidate)
    return candidate.flops / 1e9 * seconds_per_gflop

  return measure, calls


def test_cpu_plan_fits_the_time_budget():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793), val=4, test=8)
  measure, calls = _cpu_stub(0.01)  # 100 GFLOP/s.
  cpu = plan.Devices("cpu", 1, 16.0)
  p = plan.make_plan(s, cpu, "unet", time_budget_min=15, measure=measure)
  values = p["values"]
  assert 1 <= len(calls) <= plan.MAX_MEASUREMENTS and len(p["measurements"]) == len(calls)
  step_s = calls[-1].flops / 1e9 * 0.01
  assert values["train.num_steps"] >= plan.MIN_CPU_STEPS
  assert values["train.num_steps"] * step_s <= 15 * 60
  assert values["data.patch_size"] == calls[-1].network.patch_size
  assert "15-minute budget" in p["reason"] and "s/step" in p["reason"] and "\n" not in p["reason"]
  # The cadence gives the best-checkpoint selection several validation passes.
  assert 1 <= values["train.eval_every_steps"] <= values["train.num_steps"]
  assert values["eval.mirror_axes"] == ()


def test_cpu_plan_keeps_the_big_network_when_it_is_fast():
  s = summary((36, 50, 35), (1.0, 1.0, 1.0), cases=260, classes=3)
  measure, calls = _cpu_stub(1e-5)
  p = plan.make_plan(s, plan.Devices("cpu", 1, 16.0), "unet3d", time_budget_min=15, measure=measure)
  assert calls[-1].network.features[0] == 32 and p["values"]["model.features"] == 32
  assert p["values"]["data.patch_size"] == (40, 56, 40)


def test_cpu_plan_that_cannot_train_says_so():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793))
  measure, _ = _cpu_stub(1e3)
  with pytest.raises(ConfigError, match="raise config.plan.time_budget_min"):
    plan.make_plan(s, plan.Devices("cpu", 1, 16.0), "unet", time_budget_min=1, measure=measure)


def _phantom_summary(shape_xyz, spacing_xyz, cases, classes):
  intensity = [{"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 1.0, "min": 0.0, "max": 1.0}]
  shape, spacing = tuple(shape_xyz[::-1]), tuple(spacing_xyz[::-1])
  fingerprint = preprocess.Fingerprint(
    spacings=[spacing] * cases, shapes=[shape] * cases, intensity=intensity, cropped_shapes=[shape] * cases
  )
  return plan.summarize_dataset(fingerprint, spacing, num_classes=classes, ndim=3)


def test_phantom_fingerprints_plan_on_a_gpu():
  """The CT and MR phantoms' generators (shape, spacing): nnU-Net's rules give whole-slice 2D patches and
  whole-volume 3D patches, batch 2 (5 % of 20 small volumes is less than two patches)."""
  from jaxseg.data.phantoms import ct, mr

  in_plane = 3.22  # The CT phantom's median in-plane spacing (it varies per case around it).
  s = _phantom_summary(ct.SHAPE, (in_plane, in_plane, ct.SLICE_MM), 20, 4)
  assert s.median_shape == (40, 128, 128) and s.anisotropy == pytest.approx(ct.SLICE_MM / in_plane)
  p = plan.make_plan(s, GPU8, "unet3d")
  full = p["configurations"]["3d_fullres"]
  assert tuple(full["patch_size"]) == (40, 128, 128) and full["batch_size"] == 2
  assert full["pool_per_axis"] == [3, 5, 5]  # z (5 mm vs 3.2 mm: ratio < 2) pools with x, y until it is 5.
  assert tuple(p["configurations"]["2d"]["patch_size"]) == (128, 128)
  s = _phantom_summary(mr.SHAPE, mr.SPACING_MM, 20, 4)
  p = plan.make_plan(s, GPU8, "unet")
  assert p["values"]["data.patch_size"] == (96, 96) and p["configurations"]["3d_fullres"]["patch_size"] == [48, 96, 96]


def test_summary_uses_cropped_and_resampled_shapes():
  fingerprint = preprocess.Fingerprint(
    spacings=[(2.0, 1.0, 1.0), (2.0, 1.0, 1.0), (4.0, 1.0, 1.0)],
    shapes=[(50, 100, 100)] * 3,
    intensity=[{}],
    cropped_shapes=[(40, 80, 60), (40, 80, 60), (20, 80, 60)],
  )
  s = plan.summarize_dataset(fingerprint, (2.0, 0.5, 0.5), num_classes=2, ndim=3)
  assert s.median_shape == (40, 160, 120) and s.num_cases == 3


def test_override_wins_and_is_recorded():
  config = config_lib.base_config()
  config.model.name = "unet3d"
  config.train.num_steps = 7
  s = summary((187, 512, 512), (1.6, 0.793, 0.793))
  p = plan.make_plan(s, GPU8, "unet3d")
  out, record = plan.apply_plan(config, p, fixed=("train.num_steps",))
  assert out.train.num_steps == 7 and record["train.num_steps"] == {"planned": 250_000, "used": 7, "overridden": True}
  assert out.data.patch_size == (64, 192, 160) and record["data.patch_size"]["overridden"] is False
  assert config.data.patch_size == (128, 128)  # The input config is not modified.
  assert "override; planned 250000" in plan.format_plan(p, record)


def test_non_unet_models_get_patch_batch_and_schedule_only():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793))
  values = plan.make_plan(s, GPU8, "deeplabv3plus")["values"]
  assert "model.depth" not in values and values["data.patch_size"] == (512, 512)
  assert "model.pool_factors" not in values and "model.kernel_sizes" not in values


def test_command_line_keys_are_kept():
  from jaxseg import cli

  config = config_lib.base_config()
  cli.keep_command_line_keys(
    config,
    [
      "main.py",
      "--config=configs/msd.py",
      "--config.train.num_steps=5",
      "--config.plan.time_budget_min=3",
      "--config.data.patch_size",
      "(8,8)",
    ],
  )
  assert config.plan.fixed == ("train.num_steps", "data.patch_size")


# Planning inside experiment.setup (a tiny dataset; the CPU step time is stubbed or measured on a tiny network).


def _write_tiny_dataset(root):
  import json
  from jaxseg.data import nifti

  rng = np.random.default_rng(0)
  entries = []
  for i in range(6):
    label = np.zeros((16, 16, 4), np.uint8)
    label[4 + i % 3 : 10 + i % 3, 5:11, 1:3] = 1
    image = np.where(label == 1, 80.0, -50.0) + rng.normal(0, 5, label.shape)
    nifti.save_nifti(root / "imagesTr" / f"c{i}.nii.gz", image.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    nifti.save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label, np.diag([1.0, 1.0, 2.0, 1.0]))
    entries.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
  (root / "dataset.json").write_text(
    json.dumps(
      {
        "name": "PlanToy",
        "modality": {"0": "MR"},
        "labels": {"0": "background", "1": "organ"},
        "numTraining": 6,
        "training": entries,
        "test": [],
      }
    )
  )
  return root


def test_setup_plans_writes_plan_json_keeps_overrides_and_reuses_the_plan(tmp_path, monkeypatch):
  import json
  from jaxseg import experiment

  root = _write_tiny_dataset(tmp_path / "raw")
  config = config_lib.base_config()
  config.data.update(name="msd", root=str(root), data_dir=str(tmp_path / "data"), prepare_workers=1)
  config.plan.enabled = True
  config.train.num_steps = 3
  config.plan.fixed = ("train.num_steps",)
  calls = []

  def stub(config, num_channels, candidate, steps_timed=2):
    calls.append(candidate)
    return 0.01

  monkeypatch.setattr(experiment, "measure_step_time", stub)
  exp = experiment.setup(config, tmp_path / "run")
  stored = json.loads((tmp_path / "run" / "plan.json").read_text())
  assert calls and stored["devices"]["kind"] == "cpu" and stored["applied_configuration"] == "cpu"
  assert exp.config.train.num_steps == 3 and stored["keys"]["train.num_steps"]["overridden"] is True
  assert tuple(exp.config.data.patch_size) == tuple(stored["values"]["data.patch_size"])
  assert exp.config.model.pool_factors == tuple(map(tuple, stored["values"]["model.pool_factors"]))
  assert exp.model.factors() == exp.config.model.pool_factors and stored["keys"]["model.kernel_sizes"]["used"]
  assert exp.config.train.eval_every_steps == stored["values"]["train.eval_every_steps"]
  assert stored["dataset"]["num_cases"] == exp.prepared.builder.info.metadata["splits"]["train"].__len__()
  calls.clear()
  experiment.setup(config, tmp_path / "run")  # Same dataset, devices, model: plan.json is reused.
  assert not calls
  config.plan.enabled = False
  assert experiment.setup(config, tmp_path / "off").config.data.patch_size == (128, 128)
  assert not (tmp_path / "off" / "plan.json").exists()


@pytest.mark.slow  # Compiles a train step: 65 s on 2 cores at load average 13 (a few seconds idle).
def test_measure_step_time_runs_the_real_network():
  from jaxseg import experiment

  config = config_lib.base_config()
  config.model.num_classes = 2
  s = summary((1, 16, 16), (1.0, 1.0, 1.0), cases=4, ndim=2)
  candidate = plan._candidate(s, 2, (16, 16), 2, 4)
  seconds, compile_s = experiment.measure_step_time(config, 1, candidate, steps_timed=1)
  assert 0 < seconds < 60 and compile_s > seconds


def test_cpu_devices_share_the_cores():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793), val=4, test=8)
  measure, _ = _cpu_stub(0.01)
  one = plan.make_plan(s, plan.Devices("cpu", 1, 16.0), "unet", time_budget_min=15, measure=measure)["values"]
  measure, _ = _cpu_stub(0.01)
  two = plan.make_plan(s, plan.Devices("cpu", 2, 16.0), "unet", time_budget_min=15, measure=measure)["values"]
  assert two["train.batch_size"] % 2 == 0 and two["train.num_steps"] < one["train.num_steps"]


def test_cpu_plan_sets_time_aside_for_compiling():
  s = summary((187, 512, 512), (1.6, 0.793, 0.793), val=4, test=8)
  fast = plan.make_plan(
    s, plan.Devices("cpu", 1, 16.0), "unet", time_budget_min=15, measure=lambda c: (c.flops / 1e9 * 0.01, 0.0)
  )["values"]
  slow = plan.make_plan(
    s, plan.Devices("cpu", 1, 16.0), "unet", time_budget_min=15, measure=lambda c: (c.flops / 1e9 * 0.01, 120.0)
  )["values"]
  assert slow["train.num_steps"] < fast["train.num_steps"]


def test_setup_refuses_a_device_too_small_for_the_smallest_patch(tmp_path):
  from jaxseg import experiment

  root = _write_tiny_dataset(tmp_path / "raw")
  config = config_lib.base_config()
  config.data.update(name="msd", root=str(root), data_dir=str(tmp_path / "data"), prepare_workers=1)
  config.plan.enabled = True
  config.plan.memory_gb = 1e-6
  with pytest.raises(
    ConfigError,
    match=r"plan: even the smallest patch \d+x\d+ .* needs an estimated [0-9.]+ GB "
    r"per device but the device has 0.00 GB",
  ):
    experiment.setup(config, tmp_path / "run")
