"""U-Net with and without adversarial training on the CT phantom, over seeds.

Trains `configs/unet_ct.py` (plain) and `configs/unet_adversarial_ct.py`
(the same run plus the patch discriminator and lambda x the non-saturating
adversarial loss) for the same number of steps with each seed, evaluates the
final checkpoint of every run on the `ct_phantom` test split and writes a
table of mean and std over seeds of the test Dice and HD95 (mm) per class,
the paired Dice differences (same seed: same initialisation and batches), and
the discriminator's final training accuracies.

  python experiments/adversarial.py               # --scale=cpu: 3 seeds, 150 steps of 64 x 64 (committed)
  python experiments/adversarial.py --quick       # the test suite's tiny protocol
  python experiments/adversarial.py --scale=gpu   # the shipped configs: 400 steps of 128 x 128, 5 seeds
  # Rewrite the tables (and the README paragraph) from <output>.json without training:
  python experiments/adversarial.py --rewrite_report
  # Rewrite only the README's result paragraph from <output>.json:
  python experiments/adversarial.py --readme

The adversarial term starts after a quarter of the steps, as in
`configs/unet_adversarial_ct.py` (100 of 400).

Writes `<output>.md` and `<output>.json` (default
`experiments/results/adversarial`) and the result paragraph of the README's
"Does it help?" section (between its adversarial-result markers); every run's workdir is kept under
`--workdir` (rerunning resumes finished and half-finished runs).
"""

import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxseg import writers  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARMS = {"plain": ROOT / "configs" / "unet_ct.py", "adversarial": ROOT / "configs" / "unet_adversarial_ct.py"}
METRICS = ("dice", "hd95")
DISC_SCALARS = ("train/disc_accuracy_real", "train/disc_accuracy_fake", "train/disc_loss", "train/adversarial_loss")


NAME = "adversarial"
# Training budget per protocol (equal in both arms; None keeps the config files' value).
PROTOCOLS = {
  "quick": dict(num_cases=8, patch_size=(64, 64), num_steps=8, batch_size=2, features=4, depth=2, seeds=2),
  "cpu": dict(num_cases=0, patch_size=(64, 64), num_steps=150, batch_size=8, features=None, depth=None, seeds=3),
  "gpu": dict(num_cases=0, patch_size=(128, 128), num_steps=400, batch_size=8, features=None, depth=None, seeds=5),
}


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--weight", type=float, default=None, help="lambda of the adversarial term (default: the config's)")
  p.add_argument(
    "--rewrite_report",
    action="store_true",
    help="train nothing: rewrite <output>.md, .json and the README paragraph from <output>.json",
  )
  p.add_argument(
    "--readme", action="store_true", help="train nothing: rewrite the README's result paragraph from <output>.json"
  )
  args = _study.parse(p, argv, default_seeds=None)
  if args.seeds is None:
    args.seeds = protocol(args)["seeds"]
  if args.weight is not None and not args.weight > 0:
    raise SystemExit(f"{args.prog}: --weight must be > 0, got {args.weight}")
  return args


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def run_config(arm: str, seed: int, args):
  """One run's config: the arm's config file at the protocol's budget, final-checkpoint test evaluation."""
  p = protocol(args)
  config = _study.protocol_config(ARMS[arm], seed, args, p)
  steps = p["num_steps"]
  config.train.log_every_steps = max(1, min(config.train.log_every_steps, steps // 4))
  config.train.checkpoint_every_steps = steps
  if arm == "adversarial":  # The config's warm-up share of the steps (100 of 400).
    shipped = _study.load_config(ARMS["adversarial"])
    config.adversarial.warmup_steps = round(steps * shipped.adversarial.warmup_steps / shipped.train.num_steps)
    if args.weight is not None:
      config.adversarial.weight = args.weight
  return _study.checked(config, args.prog)


def last_scalars(workdir: pathlib.Path, tags) -> dict[str, float]:
  """The last logged value of each TensorBoard scalar in `tags`."""
  return {tag: values[-1][1] for tag, values in writers.read_scalars(workdir).items() if tag in tags}


TIE = 0.01  # Paired Dice differences within this are counted as ties.


mean_std = _study.mean_std  # Mean, sample std and count of the finite values.
fmt = _study.fmt  # 'mean ± std', '(k of n)' when only k of n values were finite.


def aggregate(runs: list[dict], classes: list[str]) -> dict:
  """Mean and std over seeds per arm, class and metric; paired Dice differences per class."""
  table = {}
  for arm in ARMS:
    arm_runs = [r for r in runs if r["arm"] == arm]
    table[arm] = {name: {m: mean_std([r["test"][name][m] for r in arm_runs]) for m in METRICS} for name in classes}
  paired = {}
  for name in classes:
    diffs = []
    for plain in (r for r in runs if r["arm"] == "plain"):
      adv = next((r for r in runs if r["arm"] == "adversarial" and r["seed"] == plain["seed"]), None)
      if adv is not None:
        diffs.append(adv["test"][name]["dice"] - plain["test"][name]["dice"])
    paired[name] = {
      "stat": mean_std(diffs),
      "per_seed": diffs,
      "better_seeds": sum(d > TIE for d in diffs),
      "worse_seeds": sum(d < -TIE for d in diffs),
    }
  return {"table": table, "paired_dice_difference": paired}


def verdict(summary: dict) -> str:
  """One sentence on the mean foreground Dice from the paired differences (95% t interval)."""
  diff = summary["paired_dice_difference"]["mean_foreground"]
  diffs = diff["per_seed"]
  if not diffs:
    return "No paired runs finished; no conclusion."
  mean = statistics.mean(diffs)
  ties = len(diffs) - diff["better_seeds"] - diff["worse_seeds"]
  size = (
    f"{mean:+.4f} (adversarial better by more than {TIE} in {diff['better_seeds']}, worse in "
    f"{diff['worse_seeds']}, within {TIE} in {ties} of {len(diffs)} seeds"
  )
  if len(diffs) < 2:
    return f"Mean foreground test Dice change {size}); one seed, no conclusion."
  low, high = _study.t_interval(diffs)
  size += f"; 95% t interval {low:+.4f} to {high:+.4f})"
  if low <= 0 <= high:
    return (
      "The adversarial term made no difference distinguishable from seed-to-seed noise: mean foreground "
      f"test Dice change {size}."
    )
  direction = "helped" if mean > 0 else "hurt"
  return f"The adversarial term {direction}: mean foreground test Dice change {size}."


def write_report(path: pathlib.Path, runs: list[dict], meta: dict) -> None:
  """Writes `path`.md and `path`.json; `meta` holds command, date, wall_seconds, machine and quick."""
  classes = [k for k, v in runs[0]["test"].items() if isinstance(v, dict) and "dice" in v and "hd95" in v]
  summary = aggregate(runs, classes)
  seeds = sorted({r["seed"] for r in runs})
  n = len(seeds)
  cfg = runs[0]["config"]
  adv_cfg = next(r["config"] for r in runs if r["arm"] == "adversarial")["adversarial"]
  lines = [
    "# Adversarial training on the CT phantom: U-Net with and without the adversarial term",
    "",
    *_study.metadata_lines(meta),
    f"- Data: `{cfg['data']['name']}` (synthetic CT phantom), test split, {runs[0]['test']['num_cases']} cases; "
    "every run's final checkpoint, evaluated as `--mode=evaluate` does (with the post-processing chosen on "
    "the validation split).",
    f"- Segmenter: `{cfg['model']['name']}` features {cfg['model']['features']}, depth {cfg['model']['depth']}, "
    f"{cfg['model']['norm']} norm; patch {tuple(cfg['data']['patch_size'])}, batch {cfg['train']['batch_size']}, "
    f"{cfg['train']['num_steps']} steps, {cfg['train']['optimizer']} lr {cfg['train']['learning_rate']}, "
    f"loss {cfg['train']['loss']}.",
    f"- Adversarial arm: the same plus a patch discriminator ({adv_cfg['input']} input, "
    f"{adv_cfg['num_layers']} stride-2 layers, {adv_cfg['features']} features, spectral norm "
    f"{adv_cfg['spectral_norm']}), lambda = {adv_cfg['weight']} from step {adv_cfg['warmup_steps']}, "
    f"discriminator Adam lr {adv_cfg['learning_rate']} (beta1 {adv_cfg['beta1']}) every "
    f"{adv_cfg['disc_every_steps']} step(s), real-label smoothing {adv_cfg['label_smoothing']}.",
    f"- Seeds: {', '.join(map(str, seeds))} (same seed = same initialisation and batches in both arms).",
    "",
    "## Result",
    "",
    verdict(summary),
    "",
    f"Test Dice and HD95 (mm): mean ± std over {n} seeds of each run's mean over test cases "
    "(HD95 leaves out cases where a side is empty, and a run where it is empty in every case).",
    "",
    "| class | Dice plain | Dice adversarial | paired Dice change | HD95 plain | HD95 adversarial |",
    "|---|---|---|---|---|---|",
  ]
  for name in classes:
    plain, adv = summary["table"]["plain"][name], summary["table"]["adversarial"][name]
    lines.append(
      f"| {name} | {fmt(plain['dice'], n, 4)} | {fmt(adv['dice'], n, 4)} | "
      f"{fmt(summary['paired_dice_difference'][name]['stat'], n, 4)} | {fmt(plain['hd95'], n, 1)} | "
      f"{fmt(adv['hd95'], n, 1)} |"
    )
  lines += [
    "",
    "Per run: test Dice per class, the discriminator's last logged training means, and the wall "
    "time of the whole run (set-up, compilation, training, evaluation):",
    "",
    "| arm | seed | "
    + " | ".join(f"Dice {c}" for c in classes)
    + " | disc acc. real | disc acc. fake | disc loss | adv. loss | time (s) |",
    "|---|---|" + "---|" * (len(classes) + 5),
  ]
  for r in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
    dice = [f"{r['test'][c]['dice']:.4f}" for c in classes]
    disc = ["-" if r["disc"].get(t) is None else f"{r['disc'][t]:.3f}" for t in DISC_SCALARS]
    lines.append(f"| {r['arm']} | {r['seed']} | {' | '.join(dice)} | {' | '.join(disc)} | {r['seconds']:.0f} |")
  _study.write_report(
    path, "\n".join(lines), {**meta, "seeds": seeds, "summary": summary, "verdict": verdict(summary), "runs": runs}
  )


README = ROOT / "README.md"
README_BEGIN = "<!-- adversarial-result:begin (generated by experiments/adversarial.py --readme; do not edit) -->"
README_END = "<!-- adversarial-result:end -->"


def readme_block(saved: dict, results_path: str) -> str:
  """The README's result paragraph, generated from a saved `<output>.json`."""
  summary, n = saved["summary"], len(saved["seeds"])
  runs = saved["runs"]
  cfg = runs[0]["config"]
  size = f"{cfg['train']['num_steps']} steps of {' x '.join(map(str, cfg['data']['patch_size']))} patches"
  machine = f"{saved['machine']}, {saved['cpu_count']} CPU cores, jax {saved['versions']['jax']}"
  lines = [
    f"Latest result ({size}, the `--scale={saved['scale']}` protocol, {n} seeds, {saved['date'][:10]}, {machine}; "
    f"full tables in `{results_path}`):",
    "",
    f"> {saved['verdict']}",
    "",
    "| class | test Dice plain | test Dice adversarial | paired change |",
    "|---|---|---|---|",
  ]
  for name, paired in summary["paired_dice_difference"].items():
    plain = summary["table"]["plain"][name]["dice"]
    adv = summary["table"]["adversarial"][name]["dice"]
    lines.append(f"| {name} | {fmt(plain, n, 3)} | {fmt(adv, n, 3)} | {fmt(paired['stat'], n, 3)} |")
  return "\n".join(lines)


def update_readme(saved: dict, results_path: str, readme: pathlib.Path = README) -> None:
  """Replaces the text between the README's adversarial-result markers (atomically)."""
  text = readme.read_text()
  start, end = text.find(README_BEGIN), text.find(README_END)
  if start < 0 or end < start:
    raise SystemExit(
      f"{readme}: the markers {README_BEGIN!r} and {README_END!r} are missing; "
      "put them where the result paragraph belongs"
    )
  new = text[: start + len(README_BEGIN)] + "\n" + readme_block(saved, results_path) + "\n" + text[end:]
  _study.atomic_write(readme, new)


def relative_to_root(path: pathlib.Path) -> str:
  try:
    return str(path.resolve().relative_to(ROOT))
  except ValueError:
    return str(path)


def main(argv=None):
  args = parse_args(argv)
  output = args.output
  results_md = relative_to_root(output.with_suffix(".md"))
  if args.readme or args.rewrite_report:
    saved = json.loads(output.with_suffix(".json").read_text())
    if args.rewrite_report:
      write_report(
        output, saved["runs"], {k: v for k, v in saved.items() if k not in ("seeds", "summary", "verdict", "runs")}
      )
    update_readme(json.loads(output.with_suffix(".json").read_text()), results_md)
    print(readme_block(saved, results_md))
    return
  seeds = range(args.seeds)
  configs = {(arm, seed): run_config(arm, seed, args) for seed in seeds for arm in ARMS}  # All checked first.
  start = time.time()
  runs = []
  for (arm, seed), config in configs.items():
    run = _study.run_training(config, args.workdir / f"{arm}_seed{seed}")
    workdir = pathlib.Path(run["workdir"])
    runs.append(
      {
        "arm": arm,
        "seed": seed,
        "workdir": str(workdir),
        "seconds": run["seconds"],
        "reused": run["reused"],
        "test": run["results"]["test"],
        "disc": last_scalars(workdir, DISC_SCALARS),
        "config": json.loads((workdir / "config.json").read_text()),
      }
    )
    print(
      f"{arm} seed {seed}: test mean foreground Dice {runs[-1]['test']['mean_foreground']['dice']:.4f} "
      f"({run['seconds']:.0f} s{', reused' if run['reused'] else ''})",
      flush=True,
    )
  write_report(output, runs, _study.metadata(args, start))
  if not args.quick:
    update_readme(json.loads(output.with_suffix(".json").read_text()), results_md)
  print(output.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
