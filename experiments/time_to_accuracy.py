"""Time to accuracy: host augmentation against device augmentation, same config, same steps.

For each input path, runs `python -m jaxseg.main --config=CONFIG` in its own
workdir (host: the default grain pipeline; device: `data.device_augment=True`;
cache: also `data.device_cache=True`) with validation every `--eval_every`
steps, and reports, from the run's TensorBoard events:

  - seconds from the start of the command to the first validation foreground
    Dice >= `--threshold` (event wall time minus the moment the command was
    started; preparation, compilation and evaluation time included);
  - the validation Dice at every evaluation and the final test summary
    (`results/test/summary.json`, best checkpoint), i.e. Dice after the same
    number of steps on both paths.

The runs go concurrently (`--concurrent`, default) so that a shared machine's
load hits every path alike; the load average is recorded before and after.
Writes `--output`.json and .md.

  python experiments/time_to_accuracy.py --paths=host,device --output=experiments/results/time_to_accuracy
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

PATHS = {
    "host": [],
    "device": ["--config.data.device_augment=True"],
    "cache": ["--config.data.device_augment=True", "--config.data.device_cache=True"],
}


def first_time_at(workdir: pathlib.Path, tag: str, threshold: float, start: float):
  """(seconds since `start`, step, value) of the first `tag` >= threshold, and every (step, value, seconds)."""
  from jaxseg import writers  # pylint: disable=g-import-not-at-top
  history = []
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    for event in writers.read_events(path):
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        if value.tag == tag:
          history.append((int(event.step), float(value.simple_value), float(event.wall_time) - start))
  history.sort()
  hit = next(((secs, step, dice) for step, dice, secs in history if dice >= threshold), None)
  return hit, history


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/unet_ct.py")
  parser.add_argument("--paths", default="host,device")
  parser.add_argument("--threshold", type=float, default=0.90)
  parser.add_argument("--eval_every", type=int, default=50)
  parser.add_argument("--workdir_root", default="/tmp/jaxseg_time_to_accuracy")
  parser.add_argument("--sequential", action="store_true", help="run the paths one after the other")
  parser.add_argument("--override", action="append", default=[], help="extra --config.KEY=VALUE flags")
  parser.add_argument("--output", default="experiments/results/time_to_accuracy")
  parser.add_argument("--budget_s", type=float, default=0.0,
                      help="stop every run after this many seconds and report what was reached (0: no limit)")
  args = parser.parse_args()

  root = pathlib.Path(args.workdir_root)
  paths = args.paths.split(",")
  load_before = os.getloadavg()
  runs = {}
  for name in paths:
    workdir = root / name
    if workdir.exists():
      raise SystemExit(f"{workdir} exists: remove it (a rerun would resume instead of timing from scratch)")
    command = [sys.executable, "-m", "jaxseg.main", f"--config={args.config}", f"--workdir={workdir}",
               f"--config.train.eval_every_steps={args.eval_every}", *PATHS[name], *args.override]
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / f"{name}.log", "w")  # pylint: disable=consider-using-with
    start = time.time()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    runs[name] = {"command": " ".join(command[1:]), "start": start, "process": process, "log": log}
    if args.sequential:
      process.wait()
      runs[name]["end"] = time.time()
  started = time.time()
  for run in runs.values():
    try:
      run["process"].wait(timeout=max(1.0, started + args.budget_s - time.time()) if args.budget_s else None)
    except subprocess.TimeoutExpired:
      run["process"].terminate()  # Our own child; its events so far are on disk.
      run["process"].wait()
      run["stopped_at_budget"] = True
    run.setdefault("end", time.time())
    run["log"].close()
  load_after = os.getloadavg()

  import jax  # pylint: disable=g-import-not-at-top
  report = {"config": args.config, "threshold": args.threshold, "eval_every_steps": args.eval_every,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
            "jax": jax.__version__, "backend": jax.default_backend(),
            "concurrent": not args.sequential, "load_average_before": load_before, "load_average_after": load_after,
            "paths": {}}
  for name, run in runs.items():
    workdir = root / name
    hit, history = first_time_at(workdir, "validation/dice_foreground", args.threshold, run["start"])
    summary_path = workdir / "results" / "test" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    report["paths"][name] = {
        "command": run["command"], "exit_code": run["process"].returncode,
        "stopped_at_budget": run.get("stopped_at_budget", False),
        "wall_s": round(run["end"] - run["start"], 1),
        "seconds_to_threshold": None if hit is None else round(hit[0], 1),
        "step_at_threshold": None if hit is None else hit[1],
        "validation_dice": [(step, round(dice, 4), round(secs, 1)) for step, dice, secs in history],
        "test_dice_mean_foreground": None if summary is None else summary["mean_foreground"]["dice"],
        "test_dice": None if summary is None else {k: v["dice"] for k, v in summary.items()
                                                    if isinstance(v, dict) and "dice" in v and k != "mean_foreground"},
        "test_step": None if summary is None else summary["step"],
    }
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
  lines = [f"# Time to validation foreground Dice >= {args.threshold} ({args.config})", "",
           f"{report['date']}, {report['machine']}, jax {report['jax']} ({report['backend']}); runs "
           f"{'concurrent' if report['concurrent'] else 'sequential'}; load average (1/5/15 min) before "
           f"{tuple(round(x, 1) for x in load_before)}, after {tuple(round(x, 1) for x in load_after)}.", "",
           "| path | s to Dice >= threshold (step) | total s | test Dice (mean foreground, best ckpt step) |",
           "|---|---|---|---|"]
  for name, row in report["paths"].items():
    reached = "not reached" if row["seconds_to_threshold"] is None else \
        f"{row['seconds_to_threshold']:.0f} (step {row['step_at_threshold']})"
    test = "n/a" if row["test_dice_mean_foreground"] is None else \
        f"{row['test_dice_mean_foreground']:.4f} (step {row['test_step']})"
    lines.append(f"| {name} | {reached} | {row['wall_s']:.0f} | {test} |")
  lines += ["", "Validation Dice (step, Dice, seconds since start):", ""]
  lines += [f"- {name}: {row['validation_dice']}" for name, row in report["paths"].items()]
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
