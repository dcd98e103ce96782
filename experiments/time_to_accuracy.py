"""Time to accuracy: host augmentation against device augmentation, same config, same steps.

For each input path, runs `python -m jaxseg.main --config=CONFIG` in its own
workdir (host: the default grain pipeline; device: `data.device_augment=True`;
cache: also `data.device_cache=True`) with validation every `--eval_every`
steps, and reports, from the run's TensorBoard events:

  - seconds from the start of the command to the first validation foreground
    Dice >= `--threshold` (event wall time minus the moment the command was
    started; preparation, compilation and evaluation time included);
  - the same for the mean Dice of the foreground classes other than
    `--exclude_classes` (default: the phantom's small tumour, whose Dice
    stays near 0 in a 400-step run and so caps the foreground mean);
  - the validation Dice at every evaluation and the final test summary
    (`results/test/summary.json`, best checkpoint), i.e. Dice after the same
    number of steps on both paths.

The runs go concurrently (default; `--sequential` otherwise) so that a shared
machine's load hits every path alike; the load average is recorded before and
after. `--budget_s` stops the runs and reports what they reached;
`--stop_at_threshold` stops each run once it has reached the threshold (then
there is no final test evaluation);
`--report_only=OLD.json` rewrites a report from finished runs. Writes
`--output`.json and .md.

  python experiments/time_to_accuracy.py --paths=host,device --output=experiments/results/time_to_accuracy
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

POLL_S = 5.0  # How often a run's events are read for --stop_at_threshold and --budget_s.

PATHS = {
  "host": [],
  "device": ["--config.data.device_augment=True"],
  "cache": ["--config.data.device_augment=True", "--config.data.device_cache=True"],
}


def validation_history(workdir: pathlib.Path, start: float) -> dict[str, list[tuple[int, float, float]]]:
  """{tag: [(step, value, seconds since `start`)]} of every `validation/dice_*` scalar of the run."""
  from jaxseg import writers  # pylint: disable=g-import-not-at-top

  history: dict[str, list[tuple[int, float, float]]] = {}
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    for event in writers.read_events(path):
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        if value.tag.startswith("validation/dice_"):
          history.setdefault(value.tag, []).append(
            (int(event.step), float(value.simple_value), float(event.wall_time) - start)
          )
  return {tag: sorted(rows) for tag, rows in history.items()}


def first_at(rows: list[tuple[int, float, float]], threshold: float):
  """(seconds, step, value) of the first row >= threshold, or None."""
  return next(((secs, step, value) for step, value, secs in rows if value >= threshold), None)


def without_classes(history: dict[str, list[tuple[int, float, float]]], excluded: list[str]):
  """Rows of the mean validation Dice over the foreground classes not in `excluded`."""
  tags = [
    t for t in history if t != "validation/dice_foreground" and t.removeprefix("validation/dice_") not in excluded
  ]
  if not tags:
    return []
  steps = sorted({step for t in tags for step, _, _ in history[t]})
  rows = []
  for step in steps:
    values = [(v, secs) for t in tags for s, v, secs in history[t] if s == step]
    if len(values) == len(tags):
      rows.append((step, sum(v for v, _ in values) / len(values), max(secs for _, secs in values)))
  return rows


def launch(args, root: pathlib.Path) -> dict:
  """Runs every path; returns {name: {command, start, end, exit_code, stopped_at_budget}}."""
  runs = {}
  for name in args.paths.split(","):
    workdir = root / name
    if workdir.exists():
      raise SystemExit(f"{workdir} exists: remove it (a rerun would resume instead of timing from scratch)")
    command = [
      sys.executable,
      "-m",
      "jaxseg.main",
      f"--config={args.config}",
      f"--workdir={workdir}",
      f"--config.train.eval_every_steps={args.eval_every}",
      *PATHS[name],
      *args.override,
    ]
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / f"{name}.log", "w")  # pylint: disable=consider-using-with
    start = time.time()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    runs[name] = {"command": " ".join(command[1:]), "start": start, "process": process, "log": log}
    if args.sequential:
      finish(runs[name], workdir, args)
  for name, run in runs.items():
    if "end" not in run:
      finish(run, root / name, args)
  return {
    name: {
      "command": run["command"],
      "start": run["start"],
      "end": run["end"],
      "exit_code": run["process"].returncode,
      "stopped_at_budget": run.get("stopped_at_budget", False),
      "stopped_at_threshold": run.get("stopped_at_threshold", False),
    }
    for name, run in runs.items()
  }


def finish(run: dict, workdir: pathlib.Path, args) -> None:
  """Waits for one run to end; stops it (SIGTERM to our own child, its events so far are on disk) when
  `--budget_s` seconds have passed since its start or, with `--stop_at_threshold`, once its validation
  foreground Dice has reached the threshold. Sets run["end"]."""
  deadline = run["start"] + args.budget_s if args.budget_s else None
  process = run["process"]
  while True:
    try:
      process.wait(timeout=POLL_S if args.stop_at_threshold or deadline else None)
      break
    except subprocess.TimeoutExpired:
      if deadline is not None and time.time() >= deadline:
        run["stopped_at_budget"] = True
      elif args.stop_at_threshold:
        rows = validation_history(workdir, run["start"]).get("validation/dice_foreground", [])
        run["stopped_at_threshold"] = first_at(rows, args.threshold) is not None
      if run.get("stopped_at_budget") or run.get("stopped_at_threshold"):
        process.terminate()
        process.wait()
        break
  run["end"] = time.time()
  run["log"].close()


def previous_runs(report_path: pathlib.Path, root: pathlib.Path) -> tuple[dict, dict]:
  """Runs and header facts of an earlier report (start times recovered from its event timings)."""
  old = json.loads(report_path.read_text())
  runs = {}
  for name, row in old["paths"].items():
    start = row.get("start_unix")
    if start is None:  # Reports before start_unix: event wall time minus its recorded offset.
      history = validation_history(root / name, 0.0)["validation/dice_foreground"]
      start = history[0][2] - row["validation_dice"][0][2]
    runs[name] = {
      "command": row["command"],
      "start": start,
      "end": start + row["wall_s"],
      "exit_code": row["exit_code"],
      "stopped_at_budget": row.get("stopped_at_budget", False),
      "stopped_at_threshold": row.get("stopped_at_threshold", False),
    }
  return runs, old


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/unet_ct.py")
  parser.add_argument("--paths", default="host,device")
  parser.add_argument("--threshold", type=float, default=0.90)
  parser.add_argument(
    "--exclude_classes",
    default="tumour",
    help="also time the mean Dice of the foreground classes without these (comma-separated)",
  )
  parser.add_argument("--eval_every", type=int, default=50)
  parser.add_argument("--workdir_root", default="/tmp/jaxseg_time_to_accuracy")
  parser.add_argument("--sequential", action="store_true", help="run the paths one after the other")
  parser.add_argument(
    "--stop_at_threshold",
    action="store_true",
    help="stop each run once its validation foreground Dice reaches the threshold (no final test evaluation)",
  )
  parser.add_argument("--override", action="append", default=[], help="extra --config.KEY=VALUE flags")
  parser.add_argument("--output", default="experiments/results/time_to_accuracy")
  parser.add_argument(
    "--budget_s",
    type=float,
    default=0.0,
    help="stop every run after this many seconds and report what was reached (0: no limit)",
  )
  parser.add_argument(
    "--report_only", default="", help="rewrite the report from the runs of this earlier report JSON (no training)"
  )
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(args.workdir_root)
  if args.report_only:
    runs, old = previous_runs(pathlib.Path(args.report_only), root)
    load_before, load_after, date = old["load_average_before"], old["load_average_after"], old["date"]
  else:
    load_before = os.getloadavg()
    runs = launch(args, root)
    load_after = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
  excluded = [c for c in args.exclude_classes.split(",") if c]
  command = f"python experiments/time_to_accuracy.py {shlex.join(sys.argv[1:])}".strip()
  report = {
    "command": old.get("command", command) if args.report_only else command,
    "config": args.config,
    "threshold": args.threshold,
    "eval_every_steps": args.eval_every,
    "date": date,
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "concurrent": not args.sequential,
    "load_average_before": load_before,
    "load_average_after": load_after,
    "excluded_classes": excluded,
    "paths": {},
  }
  for name, run in runs.items():
    workdir = root / name
    history = validation_history(workdir, run["start"])
    foreground = history.get("validation/dice_foreground", [])
    partial = without_classes(history, excluded)
    hit, hit_partial = first_at(foreground, args.threshold), first_at(partial, args.threshold)
    summary_path = workdir / "results" / "test" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    report["paths"][name] = {
      **run,
      "start_unix": run["start"],
      "wall_s": round(run["end"] - run["start"], 1),
      "seconds_to_threshold": None if hit is None else round(hit[0], 1),
      "step_at_threshold": None if hit is None else hit[1],
      "seconds_to_threshold_without_excluded": None if hit_partial is None else round(hit_partial[0], 1),
      "step_at_threshold_without_excluded": None if hit_partial is None else hit_partial[1],
      "validation_dice": [(step, round(dice, 4), round(secs, 1)) for step, dice, secs in foreground],
      "validation_dice_without_excluded": [(step, round(dice, 4), round(secs, 1)) for step, dice, secs in partial],
      "validation_dice_per_class": {
        t.removeprefix("validation/dice_"): [(s, round(v, 4)) for s, v, _ in rows]
        for t, rows in history.items()
        if t != "validation/dice_foreground"
      },
      "test_dice_mean_foreground": None if summary is None else summary["mean_foreground"]["dice"],
      "test_dice": None
      if summary is None
      else {k: v["dice"] for k, v in summary.items() if isinstance(v, dict) and "dice" in v and k != "mean_foreground"},
      "test_step": None if summary is None else summary["step"],
    }
    del report["paths"][name]["start"], report["paths"][name]["end"]
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
  without = "+".join(excluded)
  lines = [
    f"# Time to validation Dice >= {args.threshold} ({args.config})",
    "",
    f"Command: `{report['command']}`",
    "",
    f"{report['date']}, {report['machine']}, jax {report['jax']} ({report['backend']}); runs "
    f"{'concurrent' if report['concurrent'] else 'sequential'}; load average (1/5/15 min) before "
    f"{tuple(round(x, 1) for x in load_before)}, after {tuple(round(x, 1) for x in load_after)}; validation "
    f"every {args.eval_every} steps (seconds from the start of the command, evaluation time included).",
    "",
    f"| path | s to foreground Dice >= {args.threshold} (step) | s to Dice without {without} >= "
    f"{args.threshold} (step) | total s | test Dice, mean foreground (best checkpoint step) |",
    "|---|---|---|---|---|",
  ]

  def stopped(row):
    if row["stopped_at_budget"]:
      return " (stopped at budget)"
    return " (stopped at threshold)" if row["stopped_at_threshold"] else ""

  def reached(secs, step):
    return "not reached" if secs is None else f"{secs:.0f} (step {step})"

  for name, row in report["paths"].items():
    test = (
      "n/a"
      if row["test_dice_mean_foreground"] is None
      else f"{row['test_dice_mean_foreground']:.4f} (step {row['test_step']})"
    )
    lines.append(
      f"| {name} | {reached(row['seconds_to_threshold'], row['step_at_threshold'])} | "
      f"{reached(row['seconds_to_threshold_without_excluded'], row['step_at_threshold_without_excluded'])}"
      f" | {row['wall_s']:.0f}{stopped(row)} | {test} |"
    )
  lines += ["", "Validation foreground Dice (step, Dice, seconds since start):", ""]
  lines += [f"- {name}: {row['validation_dice']}" for name, row in report["paths"].items()]
  tested = {name: row["test_dice"] for name, row in report["paths"].items() if row["test_dice"] is not None}
  if tested:  # Runs stopped early have no final test evaluation.
    lines += ["", "Test Dice per class:", ""]
    lines += [f"- {name}: {dice}" for name, dice in tested.items()]
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
