"""Dice against the number of training cases, the loss, the learning rate and augmentation (U-Net, CT phantom).

One factor at a time around a baseline: `configs/unet_ct.py` (2D U-Net) at the
protocol's size, trained on every training case of the phantom with the
Dice + cross-entropy loss, the config's learning rate and its augmentation.
Each other run changes one thing:

- data_size     `config.data.max_train_cases` = k (`--sizes`, default 2,4,8,16):
                the first k of a fixed seeded permutation of the training split
                (`jaxseg.data.folds.subset_train`), so the 2 cases are among the
                4, those among the 8...; validation and test are the same for all;
- loss          `config.train.loss` (`--losses`, default every one of
                `jaxseg.losses.LOSSES`: ce, dice, dice_ce, focal);
- learning_rate `config.train.learning_rate` (`--learning_rates`, default the
                config's lr times 1/4 and 4: a log grid around it);
- augmentation  off: every augmentation probability of `config.data.augment` 0.

The baseline run of a seed serves every factor (the 'all cases', 'dice_ce',
shipped-lr and augmentation-on point). Every run of a seed shares its
initialisation and its batch sampling seed, so differences to the baseline are
paired by seed; the report gives test Dice per class and the mean foreground
Dice (final checkpoint, no post-processing), mean ± std over seeds, and the
paired difference to the baseline with a 95% Student t interval.

  python experiments/data_size_and_hyperparameters.py               # --scale=cpu (the committed results)
  python experiments/data_size_and_hyperparameters.py --quick       # the test suite's tiny protocol
  python experiments/data_size_and_hyperparameters.py --scale=gpu   # shipped patch, 400 steps, 5 seeds

Protocols (every run of one protocol has the same budget):
  --scale=cpu  30 phantom cases (20 training), 150 steps of 64 x 64 patches, batch 8, features 16, depth 4;
               subsets 2, 4, 8 (+ all 20); 3 seeds, 30 runs. Measured: about 90 CPU-seconds a run
               (2026-12-01, 2 shared cores at load average ~15: 57 min a seed), i.e. roughly 25 minutes for
               the 30 runs on an idle 2-core CPU. At this budget the tumour is not learned (Dice 0).
  --scale=gpu  the shipped config: 400 steps of 128 x 128 patches (configs/unet_ct.py notes test Dice
               liver 0.957, spleen 0.935, kidney 0.953 at 400 steps); subsets 2, 4, 8, 16 (+ all 20);
               5 seeds, 55 runs. Not run here (no GPU was lent).
  --quick      8 phantom cases, 3 steps of a features-4 depth-2 U-Net; 2 seeds, 10 runs; checks the
               machinery only (its Dice means nothing).
  python experiments/data_size_and_hyperparameters.py --factors=data_size --sizes=2,4 --seeds=2
  python experiments/data_size_and_hyperparameters.py --report_only  # the report of the seeds finished so far

Writes `<output>.md`, `<output>.json`, `<output>_data_size.png` (Dice against the
number of training cases) and `<output>_factors.png` (Dice per loss, learning
rate and augmentation), with 95% t intervals over seeds as error bars.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "data_size_and_hyperparameters"
CONFIG = "unet_ct"
DATASET = "ct_phantom"
FACTORS = ("data_size", "loss", "learning_rate", "augmentation")
BASELINE_LOSS = "dice_ce"
LR_FACTORS = (0.25, 4.0)  # Default learning rates: the config's times these (and the config's own, the baseline).
# Training budget per protocol (equal for every run; None keeps the config file's value). num_cases: phantom size
# (30 = the phantom's default: 20 training, 4 validation, 6 test cases).
# cpu: 10 runs per seed (baseline, 3 subsets, 3 losses, 2 learning rates, augmentation off); a probe of the baseline
# at 200 steps reached test Dice liver 0.94, spleen 0.89, kidney 0.68, tumour 0.00 (80 steps of 64 x 64 with
# features 8, depth 3: liver only), so 16 of the 20 training cases, close to all of them, is left to --scale=gpu.
PROTOCOLS = {
  "quick": dict(
    num_cases=8,
    patch_size=(64, 64),
    num_steps=3,
    batch_size=2,
    features=4,
    depth=2,
    seeds=2,
    sizes=(2,),
    losses=("ce",),
    lr_factors=(4.0,),
  ),
  "cpu": dict(
    num_cases=30,
    patch_size=(64, 64),
    num_steps=150,
    batch_size=8,
    features=16,
    depth=4,
    seeds=3,
    sizes=(2, 4, 8),
    losses=("ce", "dice", "dice_ce", "focal"),
    lr_factors=LR_FACTORS,
  ),
  "gpu": dict(
    num_cases=30,
    patch_size=(128, 128),
    num_steps=400,
    batch_size=8,
    features=None,
    depth=None,
    seeds=5,
    sizes=(2, 4, 8, 16),
    losses=("ce", "dice", "dice_ce", "focal"),
    lr_factors=LR_FACTORS,
  ),
}


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def _numbers(prog: str, option: str, text: str, kind, positive_message: str) -> list:
  values = []
  for name in _study.split_names(text):
    try:
      value = kind(name)
    except ValueError:
      raise SystemExit(f"{prog}: {option}: {name!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not value > 0 or not math.isfinite(value):
      raise SystemExit(f"{prog}: {option}: {name!r} {positive_message}")
    values.append(value)
  if not values:
    raise SystemExit(f"{prog}: {option} is empty")
  return values


def train_split_size(num_cases: int) -> int:
  """Training cases of the phantom of `num_cases` cases (its fixed split), without generating it."""
  from jaxseg.data import phantoms  # pylint: disable=g-import-not-at-top

  return len(phantoms.split_case_ids([str(i) for i in range(num_cases)])["train"])


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--factors", default=",".join(FACTORS), help="comma-separated: " + ", ".join(FACTORS))
  p.add_argument(
    "--sizes", default=None, help="numbers of training cases (default: the protocol's; the baseline uses all of them)"
  )
  p.add_argument(
    "--losses", default=None, help="comma-separated losses (default: the protocol's; dice_ce is the baseline)"
  )
  p.add_argument(
    "--learning_rates", default=None, help="comma-separated learning rates (default: the config's times 1/4 and 4)"
  )
  p.add_argument(
    "--report_only",
    action="store_true",
    help="train nothing: write the report from the seeds whose "
    "runs have all finished (e.g. while the study is still running in another process)",
  )
  args = _study.parse(p, argv, default_seeds=None)
  prog, prot = args.prog, protocol(args)
  if args.seeds is None:
    args.seeds = prot["seeds"]
  args.factors = _study.split_names(args.factors)
  _study.refuse_unknown(prog, "factor", args.factors, FACTORS)
  if not args.factors:
    raise SystemExit(f"{prog}: --factors is empty; choose from {', '.join(FACTORS)}")
  from jaxseg import losses  # pylint: disable=g-import-not-at-top

  args.losses = _study.split_names(args.losses) if args.losses is not None else list(prot["losses"])
  _study.refuse_unknown(prog, "loss", args.losses, losses.LOSSES)
  available = train_split_size(prot["num_cases"])
  args.sizes = (
    _numbers(prog, "--sizes", args.sizes, int, "must be >= 1 case") if args.sizes is not None else list(prot["sizes"])
  )
  too_many = [k for k in args.sizes if k > available]
  if too_many:
    raise SystemExit(
      f"{prog}: --sizes: {too_many[0]} training cases asked for, the {DATASET} of this protocol "
      f"({prot['num_cases']} cases) has {available} in its training split"
    )
  shipped = _study.load_config(CONFIG).train.learning_rate
  args.learning_rates = (
    _numbers(prog, "--learning_rates", args.learning_rates, float, "must be > 0")
    if args.learning_rates is not None
    else [shipped * f for f in prot["lr_factors"]]
  )
  args.train_cases = available
  return args


# The runs.


def levels(args) -> dict[str, list]:
  """Factor -> its levels, the baseline's level first ('all' cases, dice_ce, the config's lr, augmentation on)."""
  shipped = _study.load_config(CONFIG).train.learning_rate
  out = {}
  if "data_size" in args.factors:
    out["data_size"] = ["all"] + sorted(k for k in dict.fromkeys(args.sizes) if k != args.train_cases)
  if "loss" in args.factors:
    out["loss"] = [BASELINE_LOSS] + [name for name in dict.fromkeys(args.losses) if name != BASELINE_LOSS]
  if "learning_rate" in args.factors:
    out["learning_rate"] = [shipped] + sorted(lr for lr in dict.fromkeys(args.learning_rates) if lr != shipped)
  if "augmentation" in args.factors:
    out["augmentation"] = ["on", "off"]
  return out


def run_name(factor: str, level) -> str:
  """The run directory's name ('baseline' for every factor's baseline level)."""
  if factor == "learning_rate":
    return f"lr{float(level):g}"
  return {"data_size": f"cases{level}", "loss": f"loss_{level}", "augmentation": f"augment_{level}"}[factor]


def runs_of(args) -> dict[str, tuple[str, object]]:
  """Run name -> (factor, level) of every non-baseline run, plus 'baseline' -> (None, None)."""
  out = {"baseline": (None, None)}
  for factor, values in levels(args).items():
    for level in values[1:]:
      out[run_name(factor, level)] = (factor, level)
  return out


def switch_off_augmentation(config) -> None:
  """Every augmentation probability of `config.data.augment` set to 0 (patches are then plain crops)."""
  for key in config.data.augment:
    if key.endswith("_prob"):
      config.data.augment[key] = 0.0


def run_config(factor: str | None, level, seed: int, args):
  """One run's config: the baseline (factor None) or the baseline with `factor` at `level`."""
  p = protocol(args)
  config = _study.protocol_config(CONFIG, seed, args, p)
  config.train.log_every_steps = max(1, min(config.train.log_every_steps, p["num_steps"]))
  config.train.checkpoint_every_steps = p["num_steps"]
  config.train.loss = BASELINE_LOSS
  config.eval.postprocess = False  # The network's own output: what the factors change.
  if factor == "data_size":
    config.data.max_train_cases = int(level)
  elif factor == "loss":
    config.train.loss = level
  elif factor == "learning_rate":
    config.train.learning_rate = float(level)
  elif factor == "augmentation" and level == "off":
    switch_off_augmentation(config)
  return _study.checked(config, args.prog)


# Statistics.


def classes_of(test: dict) -> list[str]:
  """The foreground classes of a test summary, then 'mean_foreground'."""
  names = [k for k, v in test.items() if isinstance(v, dict) and "dice" in v and k != "mean_foreground"]
  return names + ["mean_foreground"]


def summarise(args, dice: dict[str, dict[int, dict[str, float]]]) -> dict:
  """Per factor and level: mean ± std over seeds and 95% t interval of each class's test Dice, and the
  paired difference to the baseline (same seed).

  Args:
    dice: run name -> seed -> class -> test Dice.
  """
  seeds = list(range(args.seeds))
  classes = list(next(iter(dice["baseline"].values())))
  out = {}
  for factor, values in levels(args).items():
    rows = []
    for i, level in enumerate(values):
      name = "baseline" if i == 0 else run_name(factor, level)
      per_class = {}
      for c in classes:
        vals = [dice[name][s][c] for s in seeds]
        base = [dice["baseline"][s][c] for s in seeds]
        per_class[c] = {
          "per_seed": vals,
          "stat": _study.mean_std(vals),
          "ci95": list(_study.t_interval(vals)),
          "paired_vs_baseline": None if i == 0 else _study.paired_interval(base, vals),
        }
      rows.append({"level": level, "run": name, "baseline": i == 0, "dice": per_class})
    out[factor] = rows
  return out


# Report.


LEVEL_TEXT = {
  "data_size": lambda v, n: f"{n} (all)" if v == "all" else str(v),
  "loss": lambda v, n: str(v),
  "learning_rate": lambda v, n: f"{v:g}",
  "augmentation": lambda v, n: str(v),
}
FACTOR_TITLE = {
  "data_size": "Number of training cases",
  "loss": "Loss",
  "learning_rate": "Learning rate",
  "augmentation": "Augmentation",
}


def _fmt(stat, n: int, digits: int) -> str:
  """`_study.fmt`, but one seed is its value alone (a std of one value is not 0)."""
  return _study.fmt(stat, n, digits) if n > 1 or stat[0] is None else f"{stat[0]:.{digits}f}"


def _interval(stat_ci) -> str:
  low, high = stat_ci
  return "n/a" if low is None else f"[{low:+.3f}, {high:+.3f}]"


def reading(summary: dict, n: int) -> list[str]:
  """One generated line per factor: each level's paired mean foreground Dice change and whether its 95% interval
  excludes 0."""
  lines = []
  for factor, rows in summary.items():
    parts = []
    for row in rows[1:]:
      paired = row["dice"]["mean_foreground"]["paired_vs_baseline"]
      mean = paired["stat"][0]
      low, high = paired["ci95"]
      if mean is None:
        continue
      if low is None:
        verdict = "one seed: no interval"
      elif low <= 0 <= high:
        verdict = "95% interval includes 0"
      else:
        verdict = "better than the baseline" if mean > 0 else "worse than the baseline"
      parts.append(f"{row['run']} {mean:+.3f} ({verdict})")
    lines.append(
      f"- {FACTOR_TITLE[factor]}: paired change of the mean foreground test Dice against the baseline "
      f"over {_seeds(n)}: {'; '.join(parts) or 'no other level'}."
    )
  return lines


def markdown(meta, args, summary, per_run, figures) -> str:
  p = protocol(args)
  n = args.seeds
  base = per_run["baseline"][0]["config"]
  classes = list(summary[next(iter(summary))][0]["dice"])
  lines = ["# Data size and hyperparameters: U-Net on the CT phantom", ""]
  lines += _study.metadata_lines(meta)
  lines += [
    f"- Baseline: `configs/{CONFIG}.py` 2D U-Net, features {base['model']['features']}, depth "
    f"{base['model']['depth']}; {p['num_steps']} steps of {p['patch_size'][0]} x {p['patch_size'][1]} patches, "
    f"batch {p['batch_size']}, {base['train']['optimizer']} lr {base['train']['learning_rate']:g} (warm-up "
    f"{base['train']['warmup_steps']} steps, then cosine), loss {BASELINE_LOSS}, the config's augmentation "
    f"(rotation up to ±{base['data']['augment']['rotate_max_deg']:g}° with probability "
    f"{base['data']['augment']['rotate_prob']:g}, zoom {tuple(base['data']['augment']['scale_range'])} with "
    f"probability {base['data']['augment']['scale_prob']:g}, no mirroring; {_intensity_text(base)}), all "
    f"{args.train_cases} training cases of the `{DATASET}` ({p['num_cases']} cases; its fixed split: "
    f"{args.train_cases} training, the rest validation and test).",
    "- One factor changed at a time; the baseline run of each seed is every factor's reference level. Subsets: "
    "`config.data.max_train_cases=k`, the first k of a fixed seeded permutation of the training split (nested: "
    f"{' ⊂ '.join(map(str, sorted(args.sizes) + [args.train_cases]))}), the same subset for every seed. "
    "Augmentation off: every `config.data.augment.*_prob` 0.",
    f"- Seeds {', '.join(map(str, range(n)))}: a seed fixes initialisation and batch sampling in every run, so "
    "differences to the baseline are paired by seed.",
    "- Score: test Dice (the final checkpoint, no post-processing; per class the mean over test cases), "
    f"mean ± sample std over {_seeds(n)}, and the paired difference to the baseline (same "
    "seed) with its 95% Student t interval (none with one seed).",
    "",
    "## Reading (generated from the numbers below)",
    "",
  ]
  lines += reading(summary, n)
  for factor, rows in summary.items():
    lines += [
      "",
      f"## {FACTOR_TITLE[factor]}",
      "",
      f"| {FACTOR_TITLE[factor].lower()} | run | "
      + " | ".join(f"Dice {c}" for c in classes)
      + " | paired change, mean foreground | 95% interval |",
      "|---|---|" + "---|" * (len(classes) + 2),
    ]
    for row in rows:
      paired = row["dice"]["mean_foreground"]["paired_vs_baseline"]
      change = "(baseline)" if paired is None else _fmt(paired["stat"], n, 3)
      ci = "" if paired is None else _interval(paired["ci95"])
      lines.append(
        f"| {LEVEL_TEXT[factor](row['level'], args.train_cases)} | {row['run']} | "
        + " | ".join(_fmt(row["dice"][c]["stat"], n, 3) for c in classes)
        + f" | {change} | {ci} |"
      )
  total = sum(r["seconds"] for seeds in per_run.values() for r in seeds.values())
  lines += [
    "",
    "## Runs",
    "",
    "Test mean foreground Dice and wall time of the train_and_evaluate call that "
    "made each run (set-up, compilation, training, test evaluation; the first run also "
    "generated and prepared the phantom; 'reused': finished by an earlier invocation and read back). "
    f"Sum over the {sum(len(s) for s in per_run.values())} runs: {total / 60:.1f} min.",
    "",
    "| run | seed | mean foreground Dice | wall time (s) | reused |",
    "|---|---|---|---|---|",
  ]
  for name, seeds in per_run.items():
    for seed, r in seeds.items():
      lines.append(
        f"| {name} | {seed} | {r['results']['test']['mean_foreground']['dice']:.4f} | {r['seconds']:.0f} | "
        f"{'yes' if r['reused'] else 'no'} |"
      )
  if figures:
    lines += [
      "",
      "Figures: " + ", ".join(f"`{f}`" for f in figures) + " (error bars: 95% t interval of the mean "
      "over seeds; none with one seed).",
    ]
  return "\n".join(lines)


def _seeds(n: int) -> str:
  return f"{n} seed{'s' if n != 1 else ''}"


def _intensity_text(config: dict) -> str:
  """Which of the intensity augmentations the config leaves on."""
  augment = config["data"]["augment"]
  on = [
    k[: -len("_prob")]
    for k in (
      "noise_prob",
      "blur_prob",
      "brightness_prob",
      "contrast_prob",
      "lowres_prob",
      "gamma_prob",
      "inverted_gamma_prob",
      "elastic_prob",
    )
    if augment[k] > 0
  ]
  return f"also {', '.join(on)}" if on else "no intensity or elastic transforms"


def _errorbar(ax, xs, row_stats, **kwargs):
  """Points at the means, bars over the 95% t intervals (no bar where there is none)."""
  means = [s["stat"][0] for s in row_stats]
  low = [m - s["ci95"][0] if s["ci95"][0] is not None else 0.0 for m, s in zip(means, row_stats)]
  high = [s["ci95"][1] - m if s["ci95"][1] is not None else 0.0 for m, s in zip(means, row_stats)]
  ax.errorbar(xs, means, yerr=[low, high], capsize=3, marker="o", **kwargs)


def save_figures(args, summary: dict) -> list[str]:
  """`<output>_data_size.png` and `<output>_factors.png` (those whose factors ran); returns their names."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top

  plt = visualize._pyplot()  # pylint: disable=protected-access
  written = []
  if "data_size" in summary:
    rows = sorted(summary["data_size"], key=lambda r: args.train_cases if r["level"] == "all" else r["level"])
    xs = [args.train_cases if r["level"] == "all" else r["level"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = list(rows[0]["dice"])
    for i, c in enumerate(names):
      shift = 2 ** (0.04 * (i - (len(names) - 1) / 2))  # Side by side, so that the bars do not hide each other.
      _errorbar(
        ax,
        [x * shift for x in xs],
        [r["dice"][c] for r in rows],
        label=c.replace("_", " "),
        linewidth=2.5 if c == "mean_foreground" else 1.0,
        color="black" if c == "mean_foreground" else None,
      )
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("training cases")
    ax.set_ylabel("test Dice")
    ax.set_title(f"U-Net, CT phantom: Dice vs training cases ({_seeds(args.seeds)})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    written.append(_save(plt, fig, args.output.with_name(args.output.name + "_data_size.png")))
  others = [f for f in ("loss", "learning_rate", "augmentation") if f in summary]
  if others:
    fig, axes = plt.subplots(1, len(others), figsize=(3.6 * len(others), 3.6), squeeze=False, sharey=True)
    for ax, factor in zip(axes[0], others):
      rows = summary[factor]
      if factor == "learning_rate":
        rows = sorted(rows, key=lambda r: r["level"])
      labels = [LEVEL_TEXT[factor](r["level"], args.train_cases) + (" *" if r["baseline"] else "") for r in rows]
      _errorbar(ax, range(len(rows)), [r["dice"]["mean_foreground"] for r in rows], linestyle="none", color="black")
      ax.set_xticks(range(len(rows)), labels)
      ax.set_xlim(-0.5, len(rows) - 0.5)
      ax.set_title(FACTOR_TITLE[factor], fontsize=9)
      ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean foreground test Dice")
    fig.suptitle(f"U-Net, CT phantom ({_seeds(args.seeds)}; * = baseline)", fontsize=9)
    written.append(_save(plt, fig, args.output.with_name(args.output.name + "_factors.png")))
  return written


def _save(plt, fig, path: pathlib.Path) -> str:
  fig.tight_layout()
  _study.save_figure(fig, path, dpi=90)
  return path.name


def report(args, start: float, per_run: dict, seeds_done: int) -> None:
  """Writes `<output>.md`, `.json` and the figures from the runs of the first `seeds_done` seeds."""
  requested = args.seeds
  args.seeds = seeds_done  # The statistics and the text are over the seeds that finished.
  try:
    done = {name: {s: r for s, r in seeds.items() if s < seeds_done} for name, seeds in per_run.items()}
    classes = classes_of(done["baseline"][0]["results"]["test"])
    dice = {
      name: {seed: {c: r["results"]["test"][c]["dice"] for c in classes} for seed, r in seeds.items()}
      for name, seeds in done.items()
    }
    summary = summarise(args, dice)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figures = save_figures(args, summary)
    meta = _study.metadata(args, start)
    meta["seeds_requested"] = requested
    text = markdown(meta, args, summary, done, figures)
    if seeds_done < requested:
      text = text.replace(
        "\n",
        f"\n\n**Partial: {seeds_done} of {requested} seeds finished so far** (rerunning "
        "the command resumes the rest).\n",
        1,
      )
    _study.write_report(
      args.output,
      text,
      {
        **meta,
        "dataset": DATASET,
        "config": CONFIG,
        "protocol": protocol(args),
        "train_cases": args.train_cases,
        "factors": args.factors,
        "levels": levels(args),
        "summary": summary,
        "reading": reading(summary, seeds_done),
        "figures": figures,
        "runs": {
          name: {seed: {k: v for k, v in r.items() if k not in ("config_hash", "config")} for seed, r in seeds.items()}
          for name, seeds in done.items()
        },
      },
    )
  finally:
    args.seeds = requested


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  # Every config is built and validated before anything is trained.
  configs = {
    (name, seed): run_config(factor, level, seed, args)
    for name, (factor, level) in runs_of(args).items()
    for seed in range(args.seeds)
  }
  _study.use_compilation_cache(args.workdir / "jax_cache")
  per_run = {}
  if args.report_only:
    finished = lambda seed: all(
      (args.workdir / f"{name}_seed{seed}" / _study.RUN_RECORD).exists() for name in runs_of(args)
    )
    seeds_done = next((s for s in range(args.seeds) if not finished(s)), args.seeds)
    if not seeds_done:
      raise SystemExit(f"{args.prog}: --report_only: no seed has finished all its runs in {args.workdir}")
    for seed in range(seeds_done):
      for name in runs_of(args):  # Read back (finished runs only).
        run = _study.run_training(configs[name, seed], args.workdir / f"{name}_seed{seed}")
        per_run.setdefault(name, {})[seed] = {**run, "config": configs[name, seed].to_dict()}
    report(args, start, per_run, seeds_done)
    print(args.output.with_suffix(".md").read_text())
    return
  for seed in range(args.seeds):
    for name in runs_of(args):
      run = _study.run_training(configs[name, seed], args.workdir / f"{name}_seed{seed}")
      run["config"] = configs[name, seed].to_dict()
      per_run.setdefault(name, {})[seed] = run
      print(
        f"{name} seed {seed}: test mean foreground Dice {run['results']['test']['mean_foreground']['dice']:.4f} "
        f"({'reused' if run['reused'] else 'trained'} {run['seconds']:.0f} s)",
        flush=True,
      )
    report(args, start, per_run, seed + 1)  # After every seed: a killed study leaves the seeds it finished.
  print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
