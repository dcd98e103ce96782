"""The speed suite (jaxseg.benchmark): case selection, FLOP counts, rows, table.

Timing itself is never asserted; only that the suite measures and reports.
"""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import pytest

from jaxseg import benchmark, models
from jaxseg.benchmark import __main__ as cli
from jaxseg.benchmark import cases, flops, train

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_unknown_case_lists_the_known_ones(capsys):
  with pytest.raises(ValueError, match="known cases: unet2d-128, unet3d-32x64x64"):
    cases.select("cpu", ["unet2d-128", "vnet"])
  assert cli.main(["--scale=cpu", "--cases=vnet"]) == 2
  assert "known cases: unet2d-128" in capsys.readouterr().err
  with pytest.raises(ValueError, match="known scales"):
    cases.select("tpu-pod", None)
  with pytest.raises(ValueError, match="known sections"):
    benchmark.run("quick", sections=["train", "speed"])


def test_every_case_builds_a_model():
  for scale in cases.SCALES.values():
    for case in scale:
      cfg = train.model_config(case, "float32").model
      assert models.spatial_dims(cfg.name) == case.ndim
      models.create_model(cfg)


def test_flop_count_by_hand():
  x = jnp.zeros((2, 6, 7, 3))
  k = jnp.zeros((3, 3, 3, 5))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # Output 2 x 3 x 7 x 5, each a 27-tap dot product.
  assert flops.forward_flops(conv, x, k) == 2 * (2 * 3 * 7 * 5) * 27
  matmul = jax.jit(lambda a, b: jnp.einsum("bij,jk->bik", a, b))
  assert flops.forward_flops(matmul, jnp.zeros((4, 5, 6)), jnp.zeros((6, 7))) == 2 * 4 * 5 * 7 * 6
  scanned = lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=3)[0]
  assert flops.forward_flops(scanned, jnp.zeros((4, 4))) == 3 * 2 * 4 * 4 * 4


def test_unet_flops_match_a_hand_count():
  case = cases.Case("t", (("name", "unet"), ("features", 4), ("depth", 1), ("norm", "none")), (8, 8), 1)
  cfg = train.model_config(case, "float32").model
  model = models.create_model(cfg)
  x = jnp.zeros((1, 8, 8, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  got = flops.forward_flops(lambda v, x: model.apply(v, x, train=False), variables, x)
  macs = (
    64 * 9 * 1 * 4
    + 64 * 9 * 4 * 4  # down0 at 8x8
    + 16 * 9 * 4 * 8
    + 16 * 9 * 8 * 8  # bottleneck at 4x4
    + 16 * 8 * 4 * 4  # 2x2 upsampling: 16 px x 4 taps
    + 64 * 9 * 8 * 4
    + 64 * 9 * 4 * 4  # up0 at 8x8
    + 64 * 4 * 3
  )  # head
  assert got == 2 * macs


def test_device_peaks():
  assert flops.device_peak("NVIDIA H200", "bfloat16") == 989e12
  assert flops.device_peak("cpu", "float32") is None
  assert flops.device_peak("TPU v4", "float32") is None


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("name", ["unet2d-32", "unet3d-16-ds"])
def test_torch_unet_has_jaxseg_parameter_count(name):
  import torch  # pylint: disable=g-import-not-at-top
  from jaxseg.benchmark import torch_models  # pylint: disable=g-import-not-at-top

  (case,) = cases.select("quick", [name])
  cfg = train.model_config(case, "float32").model
  model = models.create_model(cfg)
  shape = (1, *case.patch, 1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  jax_count = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
  net = torch_models.UNet(dict(cfg), case.ndim, strided=cfg.name == "unet3d")
  assert sum(p.numel() for p in net.parameters()) == jax_count
  outputs = net(torch.zeros(1, 1, *case.patch))
  assert [tuple(o.shape[2:]) for o in outputs] == [tuple(s // 2**l for s in case.patch) for l in range(len(outputs))]


def test_out_of_memory_row_and_the_suite_continues(monkeypatch):
  class Exhausted(Exception):
    pass

  def fail(*args, **kwargs):
    raise Exhausted("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB")

  monkeypatch.setattr(train, "JaxStep", fail)
  monkeypatch.setattr(train, "TorchStep", fail)
  rows = benchmark.run("quick", ["unet2d-32", "unet3d-16-ds"], ["float32"], ["train"], log=lambda line: None)
  assert len(rows) == 4
  assert all(r["status"] in ("out of memory",) or r["status"].startswith("skipped") for r in rows)
  assert all(r["device"] and r["versions"] and r["date"] for r in rows)
  assert "out of memory" in benchmark.table(rows)


@pytest.mark.slow
def test_quick_train_and_inference_rows(tmp_path, capsys):
  path = tmp_path / "rows.json"
  assert (
    cli.main(["--quick", "--cases=unet2d-32", "--dtypes=float32", "--sections=train,inference", f"--json={path}"]) == 0
  )
  import json  # pylint: disable=g-import-not-at-top

  rows = json.loads(path.read_text())
  jax_row = next(r for r in rows if r["section"] == "train" and r["framework"] == "jaxseg")
  assert jax_row["status"] == "ok" and jax_row["step_ms"] > 0
  assert jax_row["compile_s"] > 0 and jax_row["gflop_per_step"] > 0
  assert jax_row["achieved_tflops"] > 0 and jax_row["peak_share"] is None
  torch_row = next(r for r in rows if r["framework"] == "pytorch")
  if HAS_TORCH:
    assert torch_row["status"] == "ok" and jax_row["vs_pytorch"] > 0
  else:
    assert torch_row["status"].startswith("skipped: torch is not installed")
  paths = {r["path"]: r for r in rows if r["section"] == "inference"}
  assert set(paths) == {"host", "device"}
  assert all(r["overhead_ratio"] > 0 for r in paths.values())
  out = capsys.readouterr().out
  assert "| case | dtype | framework | step ms |" in out
  assert "device: " in out and "jax " in out


@pytest.mark.slow
def test_augment_section_rows(monkeypatch):
  """The device-augmentation rows at a tiny 2D size: host (one core, every core) and device patches/s, and the
  step with device augmentation against the step without."""
  from jaxseg.benchmark import augment  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(augment, "sizes", lambda quick: [("2d", (32, 32), 2)])
  rows = benchmark.run("quick", sections=["augment"], log=lambda line: None)
  assert [(r["path"], r.get("cores")) for r in rows] == [("host", 1), ("host", os.cpu_count()), ("device", None)]
  assert all(r["status"] == "ok" and r["patches_per_s"] > 0 and r["device"] and r["date"] for r in rows)
  device = rows[-1]
  crop = augment.da.crop_size(augment.default_augmentation(2), (32, 32))
  assert device["batch"] == 2 and device["crop"] == "x".join(map(str, crop)) and min(crop) > 32
  assert device["step_ratio"] == pytest.approx(device["step_s_augmented"] / device["step_s_plain"], rel=0.01)
