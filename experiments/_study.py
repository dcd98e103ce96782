"""The harness every study in experiments/ shares.

- `parser(doc)`: the common command line (`--quick`, `--seeds N`,
  `--scale=cpu|gpu`, `--workdir`, `--data_dir`, `--output`); a bad option is
  refused in one line (`SystemExit` naming it) before anything is trained.
- `refuse_unknown(kind, names, known)`: the same one-line refusal for an
  unknown model, dataset or other name given to a study.
- `load_config(path_or_name, arg)`: a config file of `configs/` (its
  `get_config`), and `checked(config)`: `jaxseg.config.validate` with a
  one-line refusal.
- `run_training(config, workdir)`: `jaxseg.train.train_and_evaluate`, except
  that a run whose final results exist (`<workdir>/study_run.json`, written
  last) is read back instead of redone; a half-finished run resumes from its
  checkpoints (train_and_evaluate's own resumption). A finished run made with
  another config is refused rather than mixed in.
- `use_compilation_cache(directory)`: JAX's persistent compilation cache, so
  that a study's runs (seeds, levels of a factor) compile each program once.
- `metadata(start)`: command, date, wall time, machine, CPU count, jax / flax /
  optax versions, device kind.
- `write_report(output, markdown, data)`: `<output>.md` and `<output>.json`,
  each written to a temporary file and renamed into place.
- `mean_std(values)`, `fmt(stat, n, digits)`, `paired_interval(a, b)`:
  mean ± sample std over seeds and paired differences with 95% t intervals.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Iterable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
SCALES = ("cpu", "gpu")
RUN_RECORD = "study_run.json"


class _Parser(argparse.ArgumentParser):
  """argparse, but a bad command line is one line naming the option (no usage block)."""

  def error(self, message):
    raise SystemExit(f"{self.prog}: {message}")


def parser(doc: str, name: str, *, default_seeds: int = 1) -> argparse.ArgumentParser:
  """The options every study takes; `name` sets the default workdir and output."""
  p = _Parser(prog=f"experiments/{name}.py", description=doc.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny protocol for the test suite (seconds to a minute)")
  p.add_argument("--seeds", type=int, default=None, help=f"number of seeds 0..N-1 (default {default_seeds})")
  p.add_argument(
    "--scale",
    default="cpu",
    choices=SCALES,
    help="cpu: <= 30 minutes on 2 CPU cores (the committed results); gpu: the paper-size protocol",
  )
  p.add_argument(
    "--workdir",
    default=f"/tmp/jaxseg_studies/{name}",
    help="run directories (rerunning resumes finished and half-finished runs)",
  )
  p.add_argument("--data_dir", default="", help="phantoms and prepared data (default: <workdir>/data)")
  p.add_argument("--output", default=str(RESULTS / name), help="writes <output>.md, .json and figures")
  return p


def parse(
  p: argparse.ArgumentParser, argv: Sequence[str] | None = None, *, default_seeds: int = 1
) -> argparse.Namespace:
  args = p.parse_args(argv)
  if args.seeds is not None and args.seeds < 1:
    raise SystemExit(f"{p.prog}: --seeds must be >= 1, got {args.seeds}")
  if args.seeds is None:
    args.seeds = default_seeds
  args.workdir = pathlib.Path(args.workdir)
  args.data_dir = pathlib.Path(args.data_dir) if args.data_dir else args.workdir / "data"
  args.output = pathlib.Path(args.output)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  args.prog = p.prog
  return args


def refuse_unknown(prog: str, kind: str, names: Iterable[str], known: Iterable[str]) -> None:
  """SystemExit naming the first unknown name of `kind` (model, dataset, method...) and the known ones."""
  known = list(known)
  bad = [n for n in names if n not in known]
  if bad:
    raise SystemExit(f"{prog}: unknown {kind} {bad[0]!r}; choose from {', '.join(known)}")


def split_names(text: str) -> list[str]:
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top

  return list(config_lib.split_names([text]))


def load_config(path: str | pathlib.Path, arg: str | None = None):
  """`get_config(arg)` of a config file (a path, or a name in configs/ such as 'unet_ct')."""
  path = pathlib.Path(path)
  if not path.suffix:
    path = ROOT / "configs" / f"{path}.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def protocol_config(path: str | pathlib.Path, seed: int, args: argparse.Namespace, protocol: dict[str, Any]):
  """A config file's config at a study protocol's size (`num_cases`, `patch_size`, `features`, `depth`
  (0 = the file's), `num_steps`, `batch_size`), evaluated on the test split with the final weights (no
  validation during training)."""
  config = load_config(path)
  config.seed = seed
  config.data.data_dir = str(args.data_dir)
  config.data.num_cases = protocol["num_cases"]
  if args.quick:
    config.data.num_threads = 1
  config.data.patch_size = protocol["patch_size"]
  if protocol["features"]:
    config.model.features = protocol["features"]
  if protocol["depth"]:
    config.model.depth = protocol["depth"]
  config.train.num_steps = protocol["num_steps"]
  config.train.batch_size = protocol["batch_size"]
  config.train.warmup_steps = max(1, min(config.train.warmup_steps, protocol["num_steps"] // 10))
  config.train.eval_every_steps = 0  # No validation passes: the final weights are what is scored.
  config.eval.splits = ("test",)
  config.eval.checkpoint = "latest"  # Equal budget: the final weights.
  config.eval.num_figures = 0
  return config


def checked(config, prog: str):
  """`jaxseg.config.validate(config)`, a ConfigError becoming a one-line refusal before training."""
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg.errors import ConfigError  # pylint: disable=g-import-not-at-top

  try:
    config_lib.validate(config)
  except ConfigError as e:
    raise SystemExit(f"{prog}: {e}") from None
  return config


def config_hash(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def run_training(config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains and evaluates one run, or reads back its results when it had finished.

  Returns {"results": {split: summary}, "seconds": wall time of the run that made them, "reused": bool,
  "workdir": str}. The record `<workdir>/study_run.json` is written (atomically) only after
  train_and_evaluate returns, so a killed run has none and resumes from its last checkpoint.
  """
  from jaxseg import train  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  record_path = workdir / RUN_RECORD
  digest = config_hash(config)
  version = data_version()
  if record_path.exists():
    record = json.loads(record_path.read_text())
    if record["config_hash"] != digest:
      raise SystemExit(
        f"{record_path}: this finished run was made with another config; delete {workdir} or choose another --workdir"
      )
    if record.get("data_version", version) != version:  # Records from before the field are taken as current.
      raise SystemExit(
        f"{record_path}: this finished run was made on data prepared by builder version "
        f"{record['data_version']}, not the current {version}; delete {workdir} or choose another "
        "--workdir"
      )
    return {**record, "reused": True, "workdir": str(workdir)}
  start = time.time()
  results = train.train_and_evaluate(config, workdir)
  record = {"config_hash": digest, "data_version": version, "results": results, "seconds": time.time() - start}
  atomic_write(record_path, json.dumps(record, indent=2, default=float))
  return {**record, "reused": False, "workdir": str(workdir)}


def use_compilation_cache(directory: str | pathlib.Path) -> None:
  """Keeps compiled programs in `directory` (JAX's persistent compilation cache) unless one is set already.

  A study's runs compile the same programs: the seeds of a model, and the runs of a factor that keep the
  shapes. Every compilation after the first is then a read of the same executable, so results do not change.
  A cache directory the user set (`JAX_COMPILATION_CACHE_DIR`, or an earlier study in the same process) is kept.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def data_version() -> str:
  """The prepared-data format a run trains on (`SegmentationBuilder.VERSION`)."""
  from jaxseg.data.builders import segmentation  # pylint: disable=g-import-not-at-top

  return str(segmentation.SegmentationBuilder.VERSION)


def atomic_write(path: pathlib.Path, text: str) -> None:
  from jaxseg import paths  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  paths.write_text_atomic(path, text)


def command(prog: str, argv: Sequence[str]) -> str:
  return " ".join(shlex.quote(a) for a in ["python", prog, *argv])


def metadata(args: argparse.Namespace, start: float) -> dict[str, Any]:
  """What made the numbers: command, date, wall time, machine, versions, devices."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  return {
    "command": command(args.prog, args.argv),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "wall_seconds": round(time.time() - start, 1),
    "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}",
    "cpu_count": os.cpu_count(),
    "load_average": [round(x, 2) for x in os.getloadavg()],
    "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
    "quick": args.quick,
    "scale": "quick" if args.quick else args.scale,
    "seeds": args.seeds,
  }


def metadata_lines(meta: dict[str, Any]) -> list[str]:
  """The provenance bullets at the top of every study's markdown."""
  v, d = meta["versions"], meta["device"]
  return [
    f"- Command: `{meta['command']}`",
    f"- Date: {meta['date']} (wall time {meta['wall_seconds'] / 60:.1f} min, protocol `{meta['scale']}`)",
    f"- Machine: {meta['machine']}, {meta['cpu_count']} CPU cores (load average at the end "
    f"{', '.join(map(str, meta['load_average']))}); {d['count']} {d['platform']} device(s) ({d['kind']})",
    f"- Versions: jax {v['jax']}, flax {v['flax']}, optax {v['optax']}",
  ]


def write_report(output: pathlib.Path, markdown: str, data: dict[str, Any]) -> None:
  """`<output>.md` and `<output>.json`, each atomically (NaN becomes null in the JSON)."""
  output = pathlib.Path(output)
  atomic_write(output.with_suffix(".md"), markdown if markdown.endswith("\n") else markdown + "\n")
  atomic_write(output.with_suffix(".json"), json.dumps(_finite(data), indent=2, default=str))


def _finite(tree):
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_finite(v) for v in tree]
  return tree


# Statistics over seeds.


def mean_std(values) -> tuple[float | None, float | None, int]:
  """Mean, sample std and count of the finite values (None, None, 0 when there are none)."""
  finite = [v for v in values if v is not None and not math.isnan(v)]
  if not finite:
    return None, None, 0
  return statistics.mean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0), len(finite)


def fmt(stat: tuple[float | None, float | None, int], num: int, digits: int) -> str:
  """'mean ± std', with '(k of n)' when only k of the n values were finite; 'n/a' when none."""
  mean, std, count = stat
  if mean is None:
    return "n/a"
  text = f"{mean:.{digits}f} ± {std:.{digits}f}"
  return text if count == num else f"{text} ({count} of {num})"


def t_interval(values) -> tuple[float | None, float | None]:
  """95% Student t interval of the mean of the finite values ((None, None) with fewer than two)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  finite = [v for v in values if v is not None and not math.isnan(v)]
  if len(finite) < 2:
    return None, None
  mean = statistics.mean(finite)
  half = stats.t.ppf(0.975, len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
  return mean - half, mean + half


def paired_interval(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  """Paired differences b - a (same seed), their mean ± std and 95% t interval."""
  diffs = [y - x for x, y in zip(a, b) if x is not None and y is not None and not math.isnan(x - y)]
  low, high = t_interval(diffs)
  return {"per_seed": diffs, "stat": mean_std(diffs), "ci95": [low, high]}


# Finished runs and figures.


def restore_final(config, workdir):
  """(experiment, train state, step) of a finished run's final ('latest') checkpoint, for studies that
  examine trained models after `run_training`."""
  from jaxseg import checkpointing, experiment  # pylint: disable=g-import-not-at-top

  exp = experiment.setup(config, workdir)
  checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
  try:
    state, step = experiment.restore_state(exp, checkpoints, "latest")
  finally:
    checkpoints.close()
  return exp, state, step


def save_figure(fig, path: pathlib.Path, dpi: int) -> None:
  """Writes a matplotlib figure to `path` (PNG) through a temporary file renamed into place, and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from jaxseg import paths  # pylint: disable=g-import-not-at-top

  try:
    paths.replace_atomically(pathlib.Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi), ".png")
  finally:
    plt.close(fig)
