"""Reproducibility: identical reruns, kill-and-resume, and the spread over seeds (U-Net, CT phantom).

Runs `configs/unet_ct.py` at the protocol's budget:

1. seeds 0..N-1, each once (`seed<k>`): the test metrics' spread over seeds
   (mean ± std and the 95% t interval of the mean foreground Dice);
2. seed 0 again, in a *fresh process* (`seed0_repeat`): its final training
   state (parameters, batch statistics, optimiser state) and its test
   metrics must be bitwise identical to `seed0`'s;
3. seed 0 again, killed after the first checkpoint (`seed0_resumed`: the
   training batch iterator raises KeyboardInterrupt, as in tests/test_train.py,
   so the steps after that checkpoint are lost), then rerun in the same
   workdir, which resumes from the checkpoint: again bitwise identical to
   `seed0`.

Identity is checked leaf by leaf with `numpy.array_equal` on the restored
states, and reported with a SHA-256 of every leaf's bytes; the metrics are
compared as their JSON text. It is a CPU claim: XLA on CPU is deterministic
for these programs; on a GPU, reductions in convolution backward passes and
scatter-adds may not be unless XLA is told (`--xla_gpu_deterministic_ops`),
which `config.deterministic=True` sets before JAX starts its backend
(`jaxseg.parallel.configure_determinism`); the report's last section says
which device ran and with which flags.

  python experiments/reproducibility.py              # --scale=cpu: 3 seeds (the committed results)
  python experiments/reproducibility.py --quick      # the test suite's tiny protocol
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "reproducibility"
DATASETS = ("ct_phantom",)
PROTOCOLS = {
  "quick": dict(
    num_cases=5, patch_size=(64, 64), num_steps=6, batch_size=2, features=4, depth=2, checkpoint_every_steps=3, seeds=2
  ),
  "cpu": dict(
    num_cases=0,
    patch_size=(96, 96),
    num_steps=100,
    batch_size=8,
    features=None,
    depth=None,
    checkpoint_every_steps=50,
    seeds=3,
  ),
  "gpu": dict(
    num_cases=0,
    patch_size=(128, 128),
    num_steps=400,
    batch_size=8,
    features=None,
    depth=None,
    checkpoint_every_steps=100,
    seeds=5,
  ),
}


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--dataset", default="ct_phantom", help="one of " + ", ".join(DATASETS))
  p.add_argument("--run_only", default="", help=argparse_suppress())
  args = _study.parse(p, argv, default_seeds=None)
  _study.refuse_unknown(args.prog, "dataset", [args.dataset], DATASETS)
  if args.seeds is None:
    args.seeds = protocol(args)["seeds"]
  return args


def argparse_suppress():
  import argparse  # pylint: disable=g-import-not-at-top

  return argparse.SUPPRESS  # Internal: run one named run (the fresh-process repeat) and exit.


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def run_config(seed: int, args):
  p = protocol(args)
  config = _study.protocol_config("unet_ct", seed, args, p)
  config.deterministic = True  # A no-op on CPU; on a GPU, XLA's deterministic ops (jaxseg.parallel).
  config.train.log_every_steps = min(config.train.log_every_steps, p["checkpoint_every_steps"])
  config.train.eval_every_steps = p["checkpoint_every_steps"]
  config.train.checkpoint_every_steps = p["checkpoint_every_steps"]
  return _study.checked(config, args.prog)


def final_state(config, workdir):
  """The restored final training state (host numpy) and its step."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import checkpointing, experiment  # pylint: disable=g-import-not-at-top

  exp = experiment.setup(config, workdir)
  checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
  try:
    state, step = checkpoints.restore(exp.abstract_state(), "latest")
  finally:
    checkpoints.close()
  return jax.device_get(state), step


def leaves(state) -> list[np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top

  return [np.asarray(x) for x in jax.tree.leaves(state)]


def state_hash(state) -> str:
  digest = hashlib.sha256()
  for leaf in leaves(state):
    digest.update(str(leaf.dtype).encode() + str(leaf.shape).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def compare(config, workdir_a, workdir_b, results_a, results_b) -> dict:
  a, step_a = final_state(config, workdir_a)
  b, step_b = final_state(config, workdir_b)
  la, lb = leaves(a), leaves(b)
  same_leaves = len(la) == len(lb) and all(
    x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb)
  )
  max_diff = max(
    (
      float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
      for x, y in zip(la, lb)
      if x.shape == y.shape and x.size and np.issubdtype(x.dtype, np.number)
    ),
    default=0.0,
  )
  text_a = json.dumps(results_a, sort_keys=True)
  text_b = json.dumps(results_b, sort_keys=True)
  return {
    "steps": [step_a, step_b],
    "leaves": len(la),
    "state_identical": bool(same_leaves),
    "max_abs_difference": max_diff,
    "hash_a": state_hash(a),
    "hash_b": state_hash(b),
    "metrics_identical": text_a == text_b,
  }


def kill_after_first_checkpoint(config, workdir) -> dict:
  """Trains until one batch after the first checkpoint, then raises KeyboardInterrupt inside the loop."""
  from jaxseg import checkpointing, train  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

  original = pipeline.train_batches
  batches = config.train.checkpoint_every_steps + 1  # The last one's step runs; nothing after the checkpoint is saved.

  def crashing_batches(*a, **k):
    iterator = original(*a, **k)
    for _ in range(batches):
      yield next(iterator)
    raise KeyboardInterrupt("simulated kill (experiments/reproducibility.py)")

  pipeline.train_batches = crashing_batches
  try:
    train.train_and_evaluate(config, workdir)
    raise SystemExit(f"{workdir}: the simulated kill did not happen (did the run finish before it?)")
  except KeyboardInterrupt:
    pass
  finally:
    pipeline.train_batches = original
  step = checkpointing.Checkpoints(pathlib.Path(workdir), read_only=True).latest_step()
  return {"killed_after_batches": batches, "latest_checkpoint_at_kill": step}


def determinism_status() -> dict:
  """`config.deterministic`'s XLA flags and the XLA flags this study ran with."""
  from jaxseg import parallel  # pylint: disable=g-import-not-at-top

  return {"deterministic_flags": list(parallel.DETERMINISTIC_XLA_FLAGS), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main(argv=None):
  args = parse_args(argv)
  from jaxseg import parallel  # pylint: disable=g-import-not-at-top

  parallel.configure_determinism(True)  # Before anything starts JAX's backend (the runs ask for it too).
  start = time.time()
  workdir = args.workdir
  if args.run_only:  # The fresh-process repeat of seed 0.
    if args.run_only != "seed0_repeat":
      raise SystemExit(f"{args.prog}: unknown --run_only {args.run_only!r}")
    _study.run_training(run_config(0, args), workdir / "seed0_repeat")
    return
  configs = {seed: run_config(seed, args) for seed in range(args.seeds)}  # Validated before any training.
  runs = {}
  for seed, config in configs.items():
    runs[f"seed{seed}"] = _study.run_training(config, workdir / f"seed{seed}")
    print(
      f"seed {seed}: test mean foreground Dice {runs[f'seed{seed}']['results']['test']['mean_foreground']['dice']:.4f}"
      f" ({runs[f'seed{seed}']['seconds']:.0f} s)",
      flush=True,
    )
  # The repeat, in a fresh Python process (nothing shared with the first run but the files).
  repeat_dir = workdir / "seed0_repeat"
  repeat_now = not (repeat_dir / _study.RUN_RECORD).exists()
  if repeat_now:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *args.argv, "--run_only=seed0_repeat"]
    if subprocess.run(cmd, check=False).returncode != 0:
      raise SystemExit(f"{args.prog}: the repeat run in a fresh process failed ({' '.join(cmd)})")
  runs["seed0_repeat"] = _study.run_training(configs[0], repeat_dir)
  if repeat_now:  # Trained by this invocation (in its child process), not by an earlier one.
    runs["seed0_repeat"]["reused"] = False
  # Killed and resumed.
  resumed_dir = workdir / "seed0_resumed"
  kill_record = resumed_dir / "study_kill.json"
  if not (resumed_dir / _study.RUN_RECORD).exists() and not kill_record.exists():
    _study.atomic_write(kill_record, json.dumps(kill_after_first_checkpoint(configs[0], resumed_dir)))
  runs["seed0_resumed"] = _study.run_training(configs[0], resumed_dir)
  kill = json.loads(kill_record.read_text()) if kill_record.exists() else {}

  results = {name: run["results"] for name, run in runs.items()}
  checks = {
    "repeat": compare(configs[0], workdir / "seed0", repeat_dir, results["seed0"], results["seed0_repeat"]),
    "resumed": {
      **compare(configs[0], workdir / "seed0", resumed_dir, results["seed0"], results["seed0_resumed"]),
      **kill,
    },
  }
  test = {name: r["test"] for name, r in results.items()}
  classes = [k for k, v in test["seed0"].items() if isinstance(v, dict) and "dice" in v]
  seed_names = [f"seed{s}" for s in range(args.seeds)]
  spread = {
    c: {m: _study.mean_std([test[n][c][m] for n in seed_names]) for m in ("dice", "iou", "hd95")} for c in classes
  }
  mf = [test[n]["mean_foreground"]["dice"] for n in seed_names]
  interval = _study.t_interval(mf)
  determinism = determinism_status()
  meta = _study.metadata(args, start)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  _study.write_report(
    args.output,
    markdown(meta, args, runs, checks, spread, classes, interval, determinism),
    {
      **meta,
      "protocol": protocol(args),
      "checks": checks,
      "spread": spread,
      "mean_foreground_dice_ci95": list(interval),
      "determinism": determinism,
      "runs": {n: {k: v for k, v in r.items() if k != "config_hash"} for n, r in runs.items()},
    },
  )
  print(args.output.with_suffix(".md").read_text())


def markdown(meta, args, runs, checks, spread, classes, interval, determinism) -> str:
  p = protocol(args)
  n = args.seeds
  yes = lambda b: "**yes**" if b else "**NO**"
  lines = ["# Reproducibility: identical reruns, kill-and-resume, spread over seeds", ""]
  lines += _study.metadata_lines(meta)
  lines += [
    f"- Run: `configs/unet_ct.py`, {p['num_steps']} steps of {p['patch_size'][0]} x {p['patch_size'][1]} "
    f"patches, batch {p['batch_size']}, checkpoints every {p['checkpoint_every_steps']} steps; test split, "
    "final checkpoint.",
    "",
    "## Bitwise identity (seed 0)",
    "",
    "| comparison | final steps | state leaves | state identical | max abs difference | metrics identical |"
    " state SHA-256 (first 16) |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, label in (("repeat", "rerun in a fresh process"), ("resumed", "killed and resumed")):
    c = checks[name]
    lines.append(
      f"| {label} | {c['steps'][0]} / {c['steps'][1]} | {c['leaves']} | {yes(c['state_identical'])} | "
      f"{c['max_abs_difference']:.3g} | {yes(c['metrics_identical'])} | {c['hash_a'][:16]} / "
      f"{c['hash_b'][:16]} |"
    )
  k = checks["resumed"]
  if "latest_checkpoint_at_kill" in k:
    lines += [
      "",
      f"The killed run stopped after {k['killed_after_batches']} training batches, with its latest "
      f"checkpoint at step {k['latest_checkpoint_at_kill']}; the rerun resumed from there.",
    ]
  lines += [
    "",
    f"## Spread over {n} seeds",
    "",
    "Test metrics, mean ± std over seeds of each run's mean over test cases:",
    "",
    "| class | Dice | IoU | HD95 (mm) |",
    "|---|---|---|---|",
  ]
  for c in classes:
    s = spread[c]
    lines.append(
      f"| {c} | {_study.fmt(s['dice'], n, 4)} | {_study.fmt(s['iou'], n, 4)} | {_study.fmt(s['hd95'], n, 1)} |"
    )
  if interval[0] is not None:
    lines += [
      "",
      f"Mean foreground Dice: 95% t interval of the mean over seeds {interval[0]:.4f} to {interval[1]:.4f}.",
    ]
  lines += [
    "",
    "Per run (wall time of the train_and_evaluate call that finished it: for seed0_resumed, the resumed "
    "part; 'reused': finished by an earlier invocation of this study and read back):",
    "",
    "| run | mean foreground Dice | wall time (s) | reused |",
    "|---|---|---|---|",
  ]
  for name, run in runs.items():
    lines.append(
      f"| {name} | {run['results']['test']['mean_foreground']['dice']:.4f} | {run['seconds']:.0f} | "
      f"{'yes' if run['reused'] else 'no'} |"
    )
  lines += ["", "## GPU determinism", ""]
  flags = " ".join(determinism["deterministic_flags"])
  if meta["device"]["platform"] == "gpu":
    lines.append(
      f"This study ran on {meta['device']['kind']} with XLA_FLAGS={determinism['xla_flags']!r}: the "
      f"identity checks above compare GPU runs made {'with' if flags in determinism['xla_flags'] else 'WITHOUT'} "
      f"`config.deterministic`'s flags (`{flags}`)."
    )
  else:
    lines.append(
      f"This study ran on {meta['device']['platform']}, where XLA is deterministic without extra flags "
      f"(XLA_FLAGS={determinism['xla_flags']!r}). On a GPU, `config.deterministic=True` adds `{flags}` "
      "to XLA_FLAGS before JAX starts its backend (deterministic convolution algorithms and scatter-adds, "
      "slower); no GPU was used for this report, so neither the GPU identity nor the flags' cost is "
      "measured here."
    )
  return "\n".join(lines)


if __name__ == "__main__":
  main()
