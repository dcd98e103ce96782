"""Input-pipeline rows: batches/s of the grain pipeline next to the step's.

Runs `experiments/bench_pipeline.py`'s `bench` (a source checkout only: it
prepares the config's phantom dataset on first use) for one config: the
pipeline's batches/s while nothing else runs, the jitted train step's
batches/s on a fixed batch, and their ratio (target >= 3).
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_pipeline.py"
CONFIGS = {"gpu": "configs/unet_ct.py", "cpu": "configs/unet_ct.py", "quick": "configs/unet_ct.py:quick"}


def run(scale: str, repeats: int) -> list[dict[str, Any]]:
  row = {"section": "pipeline", "case": CONFIGS[scale], "framework": "jaxseg"}
  if not SCRIPT.exists():
    return [dict(row, status=f"skipped: {SCRIPT} not found (needs a source checkout)")]
  spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_arg = str(SCRIPT.parents[1] / CONFIGS[scale])
  result = module.bench(config_arg, [], batches=10 if scale == "quick" else 40, steps_per_repeat=3, repeats=repeats)
  return [
    dict(
      row,
      status="ok",
      batch=result["batch"],
      pipeline_batches_per_s=result["pipeline"],
      step_batches_per_s=result["step"],
      ratio=result["ratio"],
    )
  ]
