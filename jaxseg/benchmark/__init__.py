"""Speed suite: jaxseg against the same networks in PyTorch, in one process.

  python -m jaxseg.benchmark [--scale=gpu|cpu|quick] [--cases=A,B] [--dtypes=float32,bfloat16]
                             [--sections=train,remat,inference,pipeline,augment] [--json=PATH]
  python -m jaxseg.benchmark --quick        # = --scale=quick, tiny sizes, seconds

Sections (rows; every row also names the device, versions and date):

  train      train-step time of each case (`cases.SCALES`) in each dtype, jaxseg
             and PyTorch (`torch_models`; rows skipped with a message when
             torch is absent or the network has no PyTorch reference), timed
             alternately, medians; compile time; peak memory; images and
             voxels per second; achieved TFLOP/s from an analytic FLOP count
             (`flops`) and its share of the device's peak (`flops.PEAKS`;
             unknown devices: n/a); jaxseg time / PyTorch time.
  remat      3D cases with and without `config.model.remat`: XLA's memory
             estimate and step time.
  inference  sliding-window throughput and overhead ratio (host and device
             paths) with each U-Net case.
  pipeline   input-pipeline batches/s next to the batches/s the step consumes.
  layers     forward + backward of single layers: 3D convolution (native,
             depth-folded), transposed convolution (flax, matmul form), max
             pooling (flax, reshape form), and PyTorch's.
  augment    `jaxseg.benchmark.augment` (device augmentation), when present.

A case that does not fit reports "out of memory" and the suite continues;
an unknown case name is an error listing the known ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import os
import platform
from typing import Any, Sequence

import jax

from jaxseg.benchmark import cases as cases_lib
from jaxseg.benchmark import flops as flops_lib

SECTIONS = ("train", "remat", "inference", "pipeline", "layers", "augment")
DTYPES = ("float32", "bfloat16")


def environment() -> dict[str, str]:
  """Device, versions and date stamped on every row."""
  import flax  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  env = {
    "device": f"{device.device_kind} x{jax.device_count()} ({jax.default_backend()})",
    "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
    "versions": f"jax {jax.__version__}, flax {flax.__version__}",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  }
  if importlib.util.find_spec("torch") is not None:
    import torch  # pylint: disable=g-import-not-at-top

    env["versions"] += f", torch {torch.__version__}"
  return env


def run(
  scale: str = "cpu",
  case_names: Sequence[str] | None = None,
  dtypes: Sequence[str] = DTYPES,
  sections: Sequence[str] = SECTIONS,
  steps: int = 3,
  repeats: int = 3,
  with_torch: bool = True,
  model_overrides: dict[str, Any] | None = None,
  log=print,
) -> list[dict[str, Any]]:
  """Runs the suite; returns its rows (dicts). See the module docstring.

  `model_overrides` (e.g. `{"conv3d": "native"}`) apply to every case's
  jaxseg network.
  """
  from jaxseg.benchmark import train as train_lib  # pylint: disable=g-import-not-at-top

  selected = cases_lib.select(scale, list(case_names) if case_names else None)
  if model_overrides:
    selected = [
      dataclasses.replace(c, model=tuple(sorted({**dict(c.model), **model_overrides}.items()))) for c in selected
    ]
  unknown = [s for s in sections if s not in SECTIONS]
  if unknown:
    raise ValueError(f"unknown section(s) {', '.join(unknown)}; known sections: {', '.join(SECTIONS)}")
  bad = [d for d in dtypes if d not in DTYPES]
  if bad:
    raise ValueError(f"unknown dtype(s) {', '.join(bad)}; known: {', '.join(DTYPES)}")
  env = environment()
  device_kind = jax.local_devices()[0].device_kind
  rows = []

  def add(new_rows):
    for row in new_rows:
      row = {**row, **env}
      peak = flops_lib.device_peak(device_kind, row.get("dtype", ""))
      if "achieved_tflops" in row:
        row["peak_share"] = None if peak is None else row["achieved_tflops"] * 1e12 / peak
      rows.append(row)
      numbers = ", ".join(
        f"{k}={row[k]:.4g}"
        for k in ("step_ms", "vs_pytorch", "ms", "overhead_ratio", "memory_bytes")
        if row.get(k) is not None
      )
      log(
        f"  {row['section']} {row['case']} {row.get('dtype', '')} {row.get('framework', '')} "
        f"{row.get('variant', row.get('path', ''))}: {row.get('status')} {numbers}"
      )

  if "train" in sections:
    for case in selected:
      for dtype in dtypes:
        add(train_lib.run_case(case, dtype, steps_per_repeat=steps, repeats=repeats, with_torch=with_torch))
  if "remat" in sections:
    for case in selected:
      if case.ndim == 3:
        for remat in (False, True):
          variant = dataclasses.replace(case, model=tuple(sorted({**dict(case.model), "remat": remat}.items())))
          for row in train_lib.run_case(
            variant, "float32", steps_per_repeat=1, repeats=max(1, repeats // 2), with_torch=False
          ):
            add([dict(row, section="remat", remat=remat)])
  if "inference" in sections:
    from jaxseg.benchmark import sliding  # pylint: disable=g-import-not-at-top

    for case in selected:
      if dict(case.model)["name"].startswith("unet"):
        add(sliding.run_case(case, "float32", repeats))
  if "pipeline" in sections:
    from jaxseg.benchmark import pipeline  # pylint: disable=g-import-not-at-top

    add(pipeline.run(scale, repeats))
  if "layers" in sections:
    from jaxseg.benchmark import layers as layers_bench  # pylint: disable=g-import-not-at-top

    add(layers_bench.run(scale, repeats))
  if "augment" in sections:
    if importlib.util.find_spec("jaxseg.benchmark.augment") is None:
      add([{"section": "augment", "case": "-", "status": "skipped: jaxseg.benchmark.augment not present"}])
    else:
      augment = importlib.import_module("jaxseg.benchmark.augment")
      add(
        [
          {"section": "augment", "case": row.get("name", "-"), "status": "ok", **row}
          for row in augment.run(quick=scale == "quick")
        ]
      )
  return rows


def _fmt(value: Any, kind: str) -> str:
  if value is None:
    return "n/a"
  if kind == "bytes":
    return f"{value / 2**20:,.0f} MiB"
  if kind == "share":
    return f"{100 * value:.1f}%"
  if kind == "rate":
    return f"{value:,.0f}"
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
  return str(value)


COLUMNS = {
  "train": [
    ("case", "case", ""),
    ("dtype", "dtype", ""),
    ("framework", "framework", ""),
    ("step ms", "step_ms", ""),
    ("vs PyTorch", "vs_pytorch", ""),
    ("compile s", "compile_s", ""),
    ("memory", "memory_bytes", "bytes"),
    ("images/s", "images_per_s", ""),
    ("voxels/s", "voxels_per_s", "rate"),
    ("GFLOP/step", "gflop_per_step", ""),
    ("TFLOP/s", "achieved_tflops", ""),
    ("of peak", "peak_share", "share"),
  ],
  "remat": [
    ("case", "case", ""),
    ("remat", "remat", ""),
    ("step ms", "step_ms", ""),
    ("memory (XLA estimate)", "memory_bytes", "bytes"),
  ],
  "inference": [
    ("case", "case", ""),
    ("image", "patch", ""),
    ("path", "path", ""),
    ("seconds", "seconds", ""),
    ("voxels/s", "voxels_per_s", "rate"),
    ("forward calls", "forward_calls", ""),
    ("overhead ratio", "overhead_ratio", ""),
  ],
  "layers": [
    ("layer", "case", ""),
    ("input", "shape", ""),
    ("variant", "variant", ""),
    ("ms", "ms", ""),
    ("vs PyTorch", "vs_pytorch", ""),
  ],
  "pipeline": [
    ("config", "case", ""),
    ("batch", "batch", ""),
    ("pipeline batches/s", "pipeline_batches_per_s", ""),
    ("step batches/s", "step_batches_per_s", ""),
    ("ratio", "ratio", ""),
  ],
}


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown tables, one per section, then the environment line."""
  out = []
  for section in dict.fromkeys(r["section"] for r in rows):
    section_rows = [r for r in rows if r["section"] == section]
    columns = COLUMNS.get(section) or [
      (k, k, "") for k in section_rows[0] if k not in ("section", "device", "host", "versions", "date")
    ]
    out.append(f"{section}:\n")
    out.append("| " + " | ".join(c[0] for c in columns) + " |")
    out.append("|" + "---|" * len(columns))
    for r in section_rows:
      if r.get("status", "ok") != "ok":
        cells = [_fmt(r.get(key), kind) for _, key, kind in columns[:3]]
        cells += [r["status"]] + [""] * (len(columns) - 4)
      else:
        cells = [_fmt(r.get(key), kind) for _, key, kind in columns]
      out.append("| " + " | ".join(cells) + " |")
    out.append("")
  if rows:
    r = rows[0]
    out.append(f"device: {r['device']}; host: {r['host']}; {r['versions']}; {r['date']}")
  return "\n".join(out)
