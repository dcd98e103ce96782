"""Robustness to image quality: test Dice of trained U-Nets under graded image-quality shifts.

Trains (or reuses) on the clean CT phantom a 2D U-Net in four arms at an
equal training budget: `none` (no augmentation at all), `shipped`
(`configs/unet_ct.py`'s light spatial augmentation), `nnunet` (the same plus
nnU-Net's intensity augmentation at `base_config`'s defaults: noise, blur,
brightness, contrast, low resolution, gamma) and `adversarial`
(`configs/unet_adversarial_ct.py`: shipped augmentation plus the patch
discriminator's adversarial term); and on the clean MR phantom a 2D U-Net
without augmentation (`none`) and with `configs/unet_mr.py`'s augmentation
(nnU-Net's defaults, `nnunet`).

Then every test case is corrupted by each image-quality shift of
`jaxseg.data.corruptions` at each severity level (level 0 = clean): the
RAW image, in its original units and geometry (HU, mm), as a scanner would
produce it; the corrupted image then goes through the dataset's own
preprocessing (the plan and normalisation statistics of the clean training
data, `preprocess.preprocess_case`) and is scored exactly as `--mode=evaluate`
scores a case (`evaluate.Evaluator.score_case`: sliding window, restored to
the original geometry, the run's post-processing chosen on the clean
validation split, metrics against the raw label file). Level 0 therefore
reproduces the run's own test scores, which the study checks.

CT shifts: Gaussian noise (HU), blur (mm), contrast (factor about 0 HU),
intensity shift (HU), low resolution, k-space ghosting; MR: bias field
(plus noise and ghosting when asked). The same corrupted images (seeded by
the case) are given to every arm and seed, so arms are compared paired.

Writes `<output>.md`, `<output>.json` and `<output>.png` (mean foreground
Dice against severity, one panel per shift, one line per arm, error bars =
std over seeds). Each (shift, level) evaluation is stored under
`<workdir>/evaluations/`, so an interrupted study resumes finished runs and
finished evaluations.

  python experiments/robustness.py              # --scale=cpu: the committed results
  python experiments/robustness.py --quick      # the test suite's tiny protocol
  python experiments/robustness.py --scale=gpu  # longer training, all test cases, more seeds
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data import corruptions  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "robustness"
MODELS = ("unet", "attention_unet")
# Per dataset: the config file of each arm's base, the arms run on it and the shifts applied to it.
DATASETS = {
  "ct_phantom": dict(
    config="unet_ct",
    arms=("none", "shipped", "nnunet", "adversarial"),
    shifts=("noise", "blur", "contrast", "intensity_shift", "low_resolution", "ghosting"),
  ),
  "mr_phantom": dict(config="unet_mr", arms=("none", "nnunet"), shifts=("bias_field", "noise", "ghosting")),
}
ARMS = {
  "none": "no augmentation (every augmentation probability 0)",
  "shipped": "the config file's augmentation (CT: rotation +-15 deg and zoom 0.85-1.15, no flips, no "
  "intensity transforms)",
  "nnunet": "the config file's spatial augmentation plus nnU-Net's intensity augmentation at base_config's "
  "defaults (noise, blur, brightness, contrast, low resolution, gamma)",
  "adversarial": "shipped augmentation plus the adversarial term of configs/unet_adversarial_ct.py "
  "(from a quarter of the steps)",
}
INTENSITY_KEYS = config_lib.INTENSITY_AUGMENT_KEYS
PROBABILITY_KEYS = ("flip_prob", "rotate_prob", "scale_prob", "elastic_prob") + INTENSITY_KEYS
CORRUPTION_SEED = 2026  # The i-th evaluated test case is corrupted with seed CORRUPTION_SEED + i.
# Training budget and evaluation size per protocol (equal for every arm; None/0 keeps the config file's value).
PROTOCOLS = {
  "quick": dict(
    num_cases=8,
    patch_size=(64, 64),
    num_steps=4,
    batch_size=2,
    features=4,
    depth=2,
    test_cases=1,
    datasets="ct_phantom,mr_phantom",
    arms="none,adversarial",
    shifts={"ct_phantom": "noise", "mr_phantom": "bias_field,noise"},
  ),
  "cpu": dict(
    num_cases=0,
    patch_size=(96, 96),
    num_steps=250,
    batch_size=8,
    features=8,
    depth=4,
    test_cases=2,
    datasets="ct_phantom,mr_phantom",
    arms="",
    shifts={"ct_phantom": "", "mr_phantom": "bias_field"},
  ),
  "gpu": dict(
    num_cases=0,
    patch_size=(128, 128),
    num_steps=600,
    batch_size=8,
    features=None,
    depth=None,
    test_cases=0,
    datasets="ct_phantom,mr_phantom",
    arms="",
    shifts={"ct_phantom": "", "mr_phantom": ""},
  ),
}
DEFAULT_SEEDS = {"quick": 1, "cpu": 2, "gpu": 3}


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--model", default="unet", help="segmenter of every arm: " + ", ".join(MODELS))
  p.add_argument("--datasets", default=None, help="comma-separated: " + ", ".join(DATASETS))
  p.add_argument(
    "--arms", default=None, help="comma-separated (default: every arm of each dataset): " + ", ".join(ARMS)
  )
  p.add_argument(
    "--shifts",
    default=None,
    help="comma-separated, each applied to the datasets it is meant for "
    "(default: the protocol's; --scale=cpu: every CT shift, the MR bias field): " + ", ".join(corruptions.SHIFTS),
  )
  p.add_argument(
    "--test_cases",
    type=int,
    default=None,
    help="first N test cases evaluated under the shifts (0 = all; default: the protocol's)",
  )
  args = _study.parse(p, argv, default_seeds=0)  # 0: the protocol's number of seeds.
  scale = "quick" if args.quick else args.scale
  protocol = PROTOCOLS[scale]
  args.seeds = args.seeds or DEFAULT_SEEDS[scale]
  _study.refuse_unknown(args.prog, "model", [args.model], MODELS)
  args.datasets = _study.split_names(protocol["datasets"] if args.datasets is None else args.datasets)
  _study.refuse_unknown(args.prog, "dataset", args.datasets, DATASETS)
  args.arms = _study.split_names(protocol["arms"] if args.arms is None else args.arms)
  _study.refuse_unknown(args.prog, "arm", args.arms, ARMS)
  if args.shifts is None:  # The protocol's shifts of each dataset ('' = all of them).
    args.shifts = {d: _study.split_names(protocol["shifts"][d]) or list(DATASETS[d]["shifts"]) for d in args.datasets}
  else:
    names = _study.split_names(args.shifts)
    _study.refuse_unknown(args.prog, "shift", names, corruptions.SHIFTS)
    for name in names:
      if not any(name in DATASETS[d]["shifts"] for d in args.datasets):
        raise SystemExit(
          f"{args.prog}: shift {name!r} is not applied to {', '.join(args.datasets)} (shifts: "
          + "; ".join(f"{d}: {', '.join(DATASETS[d]['shifts'])}" for d in args.datasets)
          + ")"
        )
    args.shifts = {d: [s for s in DATASETS[d]["shifts"] if s in names] for d in args.datasets}
  args.test_cases = protocol["test_cases"] if args.test_cases is None else args.test_cases
  if args.test_cases < 0:
    raise SystemExit(f"{args.prog}: --test_cases must be >= 0 (0 = all), got {args.test_cases}")
  for name in args.arms:
    if not any(name in DATASETS[d]["arms"] for d in args.datasets):
      raise SystemExit(
        f"{args.prog}: arm {name!r} is not run on {', '.join(args.datasets)} (arms: "
        + "; ".join(f"{d}: {', '.join(DATASETS[d]['arms'])}" for d in args.datasets)
        + ")"
      )
  return args


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def arms_of(dataset: str, args) -> list[str]:
  return [a for a in DATASETS[dataset]["arms"] if not args.arms or a in args.arms]


def shifts_of(dataset: str, args) -> list[str]:
  return args.shifts[dataset]


def run_config(dataset: str, arm: str, seed: int, args):
  """One run's config: the dataset's config file at the protocol's size, a 2D `--model`, the arm's
  augmentation (and adversarial term), final-checkpoint test evaluation."""
  p = protocol(args)
  path = "unet_adversarial_ct" if arm == "adversarial" else DATASETS[dataset]["config"]
  config = _study.protocol_config(path, seed, args, p)
  config.model.name = args.model  # 2D on both phantoms (the MR config file's is a 3D U-Net).
  if dataset == "mr_phantom" and not p["depth"]:
    config.model.depth = 4
  if dataset == "mr_phantom" and not p["features"]:
    config.model.features = 16
  config.train.log_every_steps = max(1, min(config.train.log_every_steps, p["num_steps"]))
  config.train.checkpoint_every_steps = p["num_steps"]
  augment = config.data.augment
  if arm == "none":
    for key in PROBABILITY_KEYS:
      augment[key] = 0.0
  elif arm == "nnunet":
    defaults = config_lib.base_config().data.augment
    for key in INTENSITY_KEYS:
      augment[key] = defaults[key]
  if arm == "adversarial":
    config.adversarial.warmup_steps = max(1, p["num_steps"] // 4)
  return _study.checked(config, args.prog)


def run_name(dataset: str, arm: str, seed: int, model: str) -> str:
  return f"{dataset}_{model}_{arm}_seed{seed}"


# Evaluation under a shift.


@dataclasses.dataclass
class LoadedRun:
  """A trained run ready to score corrupted cases."""

  name: str
  arm: str
  seed: int
  config_hash: str
  evaluator: object  # evaluate.Evaluator
  choice: object  # postprocess.Postprocessing
  plan: object  # preprocess.Plan
  test_ids: list[str]


def load_run(name: str, arm: str, seed: int, config, workdir: pathlib.Path) -> LoadedRun:
  """Restores a finished run's final checkpoint into an `evaluate.Evaluator` with its post-processing."""
  from jaxseg import evaluate, postprocess  # pylint: disable=g-import-not-at-top

  exp, state, step = _study.restore_final(config, workdir)
  choice = postprocess.load(exp.workdir) or postprocess.Postprocessing(step=step)
  return LoadedRun(
    name,
    arm,
    seed,
    _study.config_hash(config),
    evaluate.Evaluator(exp, exp.predictor(state), step),
    choice,
    exp.prepared.plan,
    list(exp.prepared.splits.get("test", [])),
  )


def corrupted_case(raw, case_id: str, index: int, shift: str, level: int, plan, channel_names):
  """A test case's raw image under (shift, level), preprocessed with the clean data's plan.

  Returns a `sampling.Case` (no label: scoring reads the raw label file) as `evaluate` scores it."""
  from jaxseg.data import preprocess, sampling  # pylint: disable=g-import-not-at-top

  loaded = raw.load(case_id)
  image = corruptions.corrupt(
    loaded.image, loaded.spacing, shift, level, channel_names=channel_names, seed=CORRUPTION_SEED + index
  )
  case = preprocess.preprocess_case(dataclasses.replace(loaded, image=image, label=None), plan)
  return sampling.make_case(case.case_id, case.image, None, case.spacing, case.meta)


def evaluate_level(
  runs: list[LoadedRun], shift: str | None, level: int, case_ids: list[str], path: pathlib.Path
) -> dict[str, dict]:
  """{run name: {case id: {class: metrics}}} of every run under (shift, level) (`shift` None: the clean
  images, level 0 of every shift), reusing `path`'s finished runs (same cases, corruption and run config) and
  writing `path` atomically once the new ones are scored."""
  raw = runs[0].evaluator.raw
  channel_names = list(raw.dataset.channel_names)
  key = {"shift": shift, "level": level, "cases": case_ids, "seed": CORRUPTION_SEED}
  if shift is not None:
    key.update(
      parameters=corruptions.parameters(shift, channel_names)[level],
      table=dataclasses.asdict(corruptions.SHIFTS[shift]),
    )
  stored = json.loads(path.read_text()) if path.exists() else {}
  done = stored.get("runs", {}) if stored.get("key") == json.loads(json.dumps(key)) else {}
  done = {
    name: r for name, r in done.items() if any(x.name == name and x.config_hash == r["config_hash"] for x in runs)
  }
  todo = [r for r in runs if r.name not in done]
  if todo:
    for r in todo:
      if r.plan != todo[0].plan:
        raise SystemExit(f"runs {todo[0].name} and {r.name} were prepared with different plans; use one --data_dir")
    scores = {r.name: {} for r in todo}
    for index, case_id in enumerate(case_ids):
      case = corrupted_case(raw, case_id, index, shift or "noise", level if shift else 0, todo[0].plan, channel_names)
      for r in todo:
        scores[r.name][case_id] = r.evaluator.score_case(case, r.choice, compare_largest=False, with_view=False).scores
    done.update({r.name: {"config_hash": r.config_hash, "cases": scores[r.name]} for r in todo})
    _study.atomic_write(path, json.dumps({"key": key, "runs": done}, indent=1, default=float))
  return {r.name: done[r.name]["cases"] for r in runs}


def mean_dice(cases: dict[str, dict], classes: list[str]) -> dict[str, float]:
  """Per class and 'mean_foreground': the mean over cases of Dice (the mean foreground is the mean of the
  class means, as evaluate.summarize computes it)."""
  out = {c: float(np.mean([cases[k][c]["dice"] for k in cases])) for c in classes}
  out["mean_foreground"] = float(np.mean([out[c] for c in classes]))
  return out


def identity_check(run_workdir: pathlib.Path, clean: dict[str, dict], classes: list[str]) -> float | None:
  """Largest |Dice difference| between level 0 here and the run's own `results/test/cases.csv` (None when
  the run scored none of these cases)."""
  import csv  # pylint: disable=g-import-not-at-top

  path = run_workdir / "results" / "test" / "cases.csv"
  if not path.exists():
    return None
  rows = {(r["case_id"], r["class"]): float(r["dice"]) for r in csv.DictReader(path.open())}
  diffs = [abs(rows[(case, c)] - clean[case][c]["dice"]) for case in clean for c in classes if (case, c) in rows]
  return max(diffs) if diffs else None


# Summary, figure and report.


def summarise(records: list[dict], args) -> dict:
  """Per dataset, shift, arm and level: mean ± std over seeds of the mean foreground Dice; the paired
  difference of each arm against 'none' (same seed) at every level and averaged over levels >= 1."""
  out = {}
  for dataset in dict.fromkeys(r["dataset"] for r in records):
    for shift in dict.fromkeys(r["shift"] for r in records if r["dataset"] == dataset):
      rows = [r for r in records if r["dataset"] == dataset and r["shift"] == shift]
      levels = sorted({r["level"] for r in rows})
      table = {}
      for arm in dict.fromkeys(r["arm"] for r in rows):
        per_seed = {}
        for r in rows:
          if r["arm"] == arm:
            per_seed.setdefault(r["seed"], {})[r["level"]] = r["dice"]["mean_foreground"]
        seeds = sorted(per_seed)
        curve = {lv: _study.mean_std([per_seed[s].get(lv) for s in seeds]) for lv in levels}
        shifted = {s: float(np.mean([per_seed[s][lv] for lv in levels if lv > 0])) for s in seeds}
        entry = {
          "seeds": seeds,
          "dice": curve,
          "per_seed": per_seed,
          "mean_shifted": _study.mean_std(list(shifted.values())),
          "mean_shifted_per_seed": shifted,
          "drop_at_worst": _study.mean_std([per_seed[s][levels[0]] - per_seed[s][levels[-1]] for s in seeds]),
        }
        table[arm] = entry
      if "none" in table:
        base = table["none"]
        for arm, entry in table.items():
          if arm == "none":
            continue
          common = [s for s in entry["seeds"] if s in base["seeds"]]
          entry["vs_none"] = {
            "levels": {
              lv: _study.paired_interval(
                [base["per_seed"][s][lv] for s in common], [entry["per_seed"][s][lv] for s in common]
              )
              for lv in levels
            },
            "mean_shifted": _study.paired_interval(
              [base["mean_shifted_per_seed"][s] for s in common], [entry["mean_shifted_per_seed"][s] for s in common]
            ),
          }
      out.setdefault(dataset, {})[shift] = {"levels": levels, "arms": table}
  return out


def save_figure(path: pathlib.Path, summary: dict, channel_names: dict[str, list[str]]) -> None:
  """One panel per (dataset, shift): mean foreground Dice against severity, one line per arm (± std)."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top

  plt = visualize._pyplot()  # pylint: disable=protected-access
  panels = [(d, s) for d in summary for s in summary[d]]
  columns = min(3, len(panels))
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
  for ax in axes.ravel()[len(panels) :]:
    ax.axis("off")
  for ax, (dataset, shift) in zip(axes.ravel(), panels):
    entry = summary[dataset][shift]
    levels = entry["levels"]
    for offset, (arm, values) in enumerate(entry["arms"].items()):
      means = [values["dice"][lv][0] for lv in levels]
      stds = [values["dice"][lv][1] for lv in levels]
      ax.errorbar(
        np.asarray(levels) + 0.06 * (offset - 1.5),
        means,
        yerr=stds,
        marker="o",
        ms=3,
        capsize=2,
        label=arm,
        color=f"C{list(ARMS).index(arm)}",
      )  # One colour per arm in every panel.
    names = channel_names[dataset]
    table = corruptions.parameters(shift, names)
    ax.set_xticks(levels)
    ax.set_xticklabels([_short(table[lv][names[0]]) for lv in levels], fontsize=7)
    ax.set_xlabel(corruptions.SHIFTS[shift].label(corruptions.is_ct(names[0])), fontsize=7)
    ax.set_ylabel("mean foreground Dice", fontsize=7)
    ax.set_title(f"{dataset}: {shift}", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.tight_layout()
  _study.save_figure(fig, path, dpi=80)


def _short(value: float) -> str:
  return f"{value:g}"


def markdown(meta, args, runs, summary, checks, channel_names) -> str:
  p = protocol(args)
  n = args.seeds
  lines = ["# Robustness to image quality: Dice under graded image-quality shifts", ""]
  lines += _study.metadata_lines(meta)
  test_cases = {d: sorted({c for r in runs if r["dataset"] == d for c in r["evaluated_cases"]}) for d in summary}
  lines += [
    f"- Models: 2D `{args.model}`, {p['num_steps']} steps of {p['patch_size'][0]} x {p['patch_size'][1]} "
    f"patches, batch {p['batch_size']}, seeds {', '.join(map(str, range(n)))}; trained on the CLEAN phantoms; "
    "final checkpoint, the post-processing each run chose on its clean validation split.",
    "- Arms: " + "; ".join(f"`{a}`: {ARMS[a]}" for a in dict.fromkeys(r["arm"] for r in runs)) + ".",
    "- Shifts (`jaxseg/data/corruptions.py`): applied to the raw test image in its original units and geometry, "
    "then the clean data's preprocessing; scored as `--mode=evaluate` scores a case (original geometry). "
    + "; ".join(f"{d}: {len(test_cases[d])} test case(s) ({', '.join(test_cases[d])})" for d in test_cases)
    + ".",
    "- Identity check: level 0 through this path against each run's own test evaluation (`results/test/"
    f"cases.csv`): largest |Dice difference| {max(checks) if checks else float('nan'):.2e} over "
    f"{len(checks)} run(s).",
    "",
    "## Severity tables",
    "",
    "| shift | parameter | " + " | ".join(f"level {lv}" for lv in range(5)) + " |",
    "|---|---|" + "---|" * 5,
  ]
  for dataset, per_shift in summary.items():
    ct = corruptions.is_ct(channel_names[dataset][0])
    for shift in per_shift:
      spec = corruptions.SHIFTS[shift]
      levels = spec.levels_ct if ct else spec.levels_other
      lines.append(f"| {shift} ({dataset}) | {spec.label(ct)} | " + " | ".join(_short(v) for v in levels) + " |")
  lines += [
    "",
    "The reference intensity of an MR channel is its 99th percentile over the image; ghosting scales "
    "the k-space lines off every " + f"{corruptions.GHOSTS}th along the second voxel axis (Y) by (1 - a).",
    "",
  ]
  for dataset, per_shift in summary.items():
    lines += [
      f"## {dataset}",
      "",
      f"Mean foreground test Dice, mean ± std over {n} seed(s), at each severity "
      "level; 'mean shifted' is the mean over levels 1-4; 'vs none' the paired difference (same seed) "
      "from the unaugmented arm of that mean, with its 95% t interval.",
      "",
    ]
    for shift, entry in per_shift.items():
      levels = entry["levels"]
      lines += [
        f"### {shift}",
        "",
        "| arm | "
        + " | ".join(f"level {lv}" for lv in levels)
        + " | mean shifted | drop clean - worst | vs none (mean shifted) |",
        "|---|" + "---|" * (len(levels) + 3),
      ]
      for arm, values in entry["arms"].items():
        cells = [_study.fmt(values["dice"][lv], len(values["seeds"]), 3) for lv in levels]
        versus = "-"
        if "vs_none" in values:
          v = values["vs_none"]["mean_shifted"]
          versus = _study.fmt(v["stat"], v["stat"][2], 3)
          if v["ci95"][0] is not None:
            versus += f" [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
        lines.append(
          f"| {arm} | " + " | ".join(cells) + f" | {_study.fmt(values['mean_shifted'], len(values['seeds']), 3)}"
          f" | {_study.fmt(values['drop_at_worst'], len(values['seeds']), 3)} | {versus} |"
        )
      lines.append("")
  lines += ["## Reading (generated from the numbers above)", ""] + reading(summary)
  lines += [
    "",
    "## Runs",
    "",
    "| dataset | arm | seed | clean test Dice (run's own, all test cases) | trained |",
    "|---|---|---|---|---|",
  ]
  for r in runs:
    lines.append(
      f"| {r['dataset']} | {r['arm']} | {r['seed']} | "
      f"{r['results']['test']['mean_foreground']['dice']:.4f} ({r['results']['test']['num_cases']} cases) | "
      f"{'reused' if r['reused'] else 'trained'} {r['seconds']:.0f} s |"
    )
  lines += ["", f"Figure: `{args.output.name}.png`."]
  return "\n".join(lines)


def reading(summary) -> list[str]:
  """Per (dataset, shift): the most and least robust arm by mean shifted Dice, and the worst-level drop."""
  lines = []
  for dataset, per_shift in summary.items():
    for shift, entry in per_shift.items():
      arms = entry["arms"]
      ranked = sorted(arms, key=lambda a: -(arms[a]["mean_shifted"][0] or 0.0))
      worst = entry["levels"][-1]
      lines.append(
        f"- {dataset} {shift}: mean shifted Dice, best first: "
        + ", ".join(f"{a} {arms[a]['mean_shifted'][0]:.3f}" for a in ranked)
        + f"; Dice at level {worst}: "
        + ", ".join(f"{a} {arms[a]['dice'][worst][0]:.3f}" for a in ranked)
        + " (clean: "
        + ", ".join(f"{a} {arms[a]['dice'][entry['levels'][0]][0]:.3f}" for a in ranked)
        + ")."
      )
  return lines


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  from jaxseg.data import phantoms  # pylint: disable=g-import-not-at-top

  p = protocol(args)
  datasets = [d for d in args.datasets if arms_of(d, args) and shifts_of(d, args)]  # Something to do there.
  plan = [(d, a, s) for d in datasets for s in range(args.seeds) for a in arms_of(d, args)]
  configs = {(d, a, s): run_config(d, a, s, args) for d, a, s in plan}  # Every config validated before training.
  runs, records, checks, channel_names = [], [], [], {}
  for dataset in datasets:
    phantoms.ensure_phantom(dataset, args.data_dir, num_cases=p["num_cases"] or None)
    loaded = []
    for d, arm, seed in plan:
      if d != dataset:
        continue
      name = run_name(dataset, arm, seed, args.model)
      run = _study.run_training(configs[(d, arm, seed)], args.workdir / name)
      print(
        f"{name}: clean test mean foreground Dice {run['results']['test']['mean_foreground']['dice']:.4f} "
        f"({'reused' if run['reused'] else 'trained'} {run['seconds']:.0f} s)",
        flush=True,
      )
      runs.append({"dataset": dataset, "arm": arm, "seed": seed, "name": name, **run})
      loaded.append(load_run(name, arm, seed, configs[(d, arm, seed)], args.workdir / name))
    raw = loaded[0].evaluator.raw
    channel_names[dataset] = list(raw.dataset.channel_names)
    test_ids = loaded[0].test_ids
    case_ids = test_ids[: args.test_cases] if args.test_cases else test_ids
    classes = list(loaded[0].evaluator.labels)
    evaluations = args.workdir / "evaluations" / dataset / args.model
    t0 = time.time()
    clean = evaluate_level(loaded, None, 0, case_ids, evaluations / "clean.json")
    print(
      f"{dataset} clean: "
      + ", ".join(f"{r.arm}/{r.seed} {mean_dice(clean[r.name], classes)['mean_foreground']:.3f}" for r in loaded)
      + f" ({time.time() - t0:.0f} s)",
      flush=True,
    )
    for r in loaded:
      check = identity_check(args.workdir / r.name, clean[r.name], classes)
      if check is not None:
        checks.append(check)
    for shift in shifts_of(dataset, args):
      for level in range(corruptions.SHIFTS[shift].num_levels):
        t0 = time.time()
        scores = (
          clean
          if level == 0
          else evaluate_level(loaded, shift, level, case_ids, evaluations / f"{shift}_level{level}.json")
        )
        for r in loaded:
          records.append(
            {
              "dataset": dataset,
              "arm": r.arm,
              "seed": r.seed,
              "shift": shift,
              "level": level,
              "dice": mean_dice(scores[r.name], classes),
              "cases": scores[r.name],
            }
          )
        print(
          f"{dataset} {shift} level {level}: "
          + ", ".join(f"{r['arm']}/{r['seed']} {r['dice']['mean_foreground']:.3f}" for r in records[-len(loaded) :])
          + f" ({time.time() - t0:.0f} s)",
          flush=True,
        )
    for r in runs:
      if r["dataset"] == dataset:
        r["evaluated_cases"] = case_ids
  summary = summarise(records, args)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  save_figure(args.output.with_suffix(".png"), summary, channel_names)
  meta = _study.metadata(args, start)
  _study.write_report(
    args.output,
    markdown(meta, args, runs, summary, checks, channel_names),
    {
      **meta,
      "model": args.model,
      "datasets": datasets,
      "protocol": protocol(args),
      "corruption_seed": CORRUPTION_SEED,
      "shifts": {s: dataclasses.asdict(corruptions.SHIFTS[s]) for d in datasets for s in shifts_of(d, args)},
      "identity_check_max_abs_dice_difference": max(checks) if checks else None,
      "runs": [{k: v for k, v in r.items() if k != "config_hash"} for r in runs],
      "summary": summary,
      "reading": reading(summary),
      "records": [{k: v for k, v in r.items() if k != "cases"} for r in records],
    },
  )
  print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
