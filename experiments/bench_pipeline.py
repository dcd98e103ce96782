"""Throughput of the training input pipeline next to what the train step consumes.

For each config (default: the 2D `configs/unet_ct.py` and the 3D
`configs/unet_mr.py`), on this machine, in one process:

- pipeline batches/s: batches delivered by `pipeline.train_batches` (grain
  with the config's read threads / worker processes and prefetch, sampling,
  augmentation) while nothing else runs;
- step batches/s: the config's jitted train step, as train.py builds it, on a
  fixed batch already on the device (compilation excluded);
- ratio = pipeline / step, the target being >= 3; and the pipeline's CPU
  seconds per batch (threads of this process) as a share of one step's wall
  time, i.e. how much of a core feeding the step costs.

Pipeline and step are timed alternately `--repeats` times and medians are
reported, so a change of load on a shared machine affects both alike. The
datasets are generated and prepared on first use (under $JAXSEG_DATA_DIR).
Prints a table and writes it to `--output`.

  python experiments/bench_pipeline.py
  python experiments/bench_pipeline.py --configs=configs/unet_microscopy.py,configs/msd.py:unet3d \\
      --override=data.root=/data/Task09_Spleen
"""

import argparse
import ast
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax

from jaxseg import config as config_lib
from jaxseg import experiment, models, parallel, steps
from jaxseg.data import pipeline


def load_config(config_arg: str, overrides: list[str]):
  """`configs/NAME.py[:ARG]`'s config with `KEY=VALUE` overrides (Python literals, else strings)."""
  config = config_lib.load(config_arg)
  for override in overrides:
    key, value = override.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    try:
      node[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[leaf] = value  # A string, e.g. a path.
  return config


def _rate(fn, count: int) -> tuple[float, float]:
  """(calls/s, CPU s of this process per call) over `count` calls."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    fn()
  return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count


def bench(config_arg: str, overrides: list[str], batches: int, steps_per_repeat: int, repeats: int) -> dict:
  config = load_config(config_arg, overrides)
  config.train.num_steps = 1_000_000
  with tempfile.TemporaryDirectory() as workdir:
    exp = experiment.setup(config, workdir)
  config = exp.config
  source = pipeline.CaseSource(exp.prepared, "train", config.data.cache_cases)
  local_batch = parallel.check_batch_size(config.train.batch_size, exp.mesh)
  iterator = pipeline.train_batches(config, source, start_step=0, local_batch_size=local_batch)
  first = next(iterator)
  for _ in range(min(len(source), config.data.cache_cases)):  # Decode every case once before timing.
    next(iterator)

  train_step = jax.jit(
    steps.make_train_step(exp.model, exp.tx, exp.schedule, config.train.loss, models.output_weights(config.model)),
    in_shardings=(parallel.replicated(exp.mesh), parallel.batch_sharding(exp.mesh)),
    out_shardings=(parallel.replicated(exp.mesh), None),
    donate_argnums=0,
  )
  state = exp.init_state()
  batch = parallel.global_batch(first, exp.mesh)
  state, metrics = train_step(state, batch)  # Compiles.
  jax.block_until_ready(metrics)

  def step():
    nonlocal state
    state, step_metrics = train_step(state, batch)
    jax.block_until_ready(step_metrics)

  pipeline_rates, step_rates, cpu_per_batch = [], [], []
  for _ in range(repeats):
    for _ in range(config.data.prefetch):  # Batches made while the step was timed are not counted.
      next(iterator)
    rate, cpu = _rate(lambda: next(iterator), batches)
    pipeline_rates.append(rate)
    cpu_per_batch.append(cpu)
    step_rates.append(_rate(step, steps_per_repeat)[0])
  ratio = statistics.median(p / s for p, s in zip(pipeline_rates, step_rates))
  step_rate = statistics.median(step_rates)
  return {
    "config": config_arg,
    "model": f"{config.model.name} (features {config.model.features}, depth {config.model.depth})",
    "batch": f"{config.train.batch_size} x {tuple(config.data.patch_size)} x {exp.prepared.num_channels} ch",
    "reader": (
      f"{config.data.num_workers} worker processes" if config.data.num_workers else f"{config.data.num_threads} threads"
    ),
    "pipeline": statistics.median(pipeline_rates),
    "step": step_rate,
    "ratio": ratio,
    # CPU of worker processes is not counted in this process's time.
    "cpu_share": None if config.data.num_workers else statistics.median(cpu_per_batch) * step_rate,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--configs",
    default="configs/unet_ct.py,configs/unet_mr.py",
    help="comma-separated config files (with :ARG variants)",
  )
  parser.add_argument(
    "--override", action="append", default=[], help="KEY=VALUE applied to every config, e.g. data.num_workers=2"
  )
  parser.add_argument("--batches", type=int, default=40, help="pipeline batches timed per repeat")
  parser.add_argument("--steps", type=int, default=5, help="train steps timed per repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--output", default="runs/bench_pipeline/report.md")
  args = parser.parse_args()

  rows = [bench(c, args.override, args.batches, args.steps, args.repeats) for c in args.configs.split(",")]
  header = (
    f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
    f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, jax {jax.__version__}, devices {jax.devices()}\n"
    f"medians over {args.repeats} alternating repeats of {args.batches} batches / {args.steps} steps\n"
  )
  table = [
    "| config | model | batch | reader | pipeline batches/s | step batches/s | ratio (target >= 3) "
    "| pipeline CPU per step |",
    "|" + "---|" * 8,
  ]
  for r in rows:
    cpu = "in the workers" if r["cpu_share"] is None else f"{100 * r['cpu_share']:.1f}% of a core"
    table.append(
      f"| {r['config']} | {r['model']} | {r['batch']} | {r['reader']} | {r['pipeline']:.2f} "
      f"| {r['step']:.3f} | {r['ratio']:.1f} | {cpu} |"
    )
  report = header + "\n" + "\n".join(table) + "\n"
  print(report)
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(report)
  print(f"written to {output}")
  if min(r["ratio"] for r in rows) < 3:
    print("WARNING: the pipeline delivers less than 3x what the train step consumes")


if __name__ == "__main__":
  main()
