"""`python -m jaxseg.benchmark`: see `jaxseg.benchmark`'s docstring."""

import argparse
import json
import sys

from jaxseg import benchmark


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxseg.benchmark", description=benchmark.__doc__.split("\n")[0])
  parser.add_argument(
    "--scale",
    default=None,
    choices=sorted(benchmark.cases_lib.SCALES),
    help="case sizes (default: gpu on an accelerator, cpu on the CPU backend)",
  )
  parser.add_argument("--quick", action="store_true", help="tiny sizes (= --scale=quick), few repeats")
  parser.add_argument("--cases", default="", help="comma-separated case names of the scale (default: all)")
  parser.add_argument("--dtypes", default=",".join(benchmark.DTYPES))
  parser.add_argument("--sections", default=",".join(benchmark.SECTIONS))
  parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=None, help="alternating timed blocks (medians)")
  parser.add_argument("--no-torch", action="store_true", help="jaxseg rows only")
  parser.add_argument(
    "--model",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config.model override for every jaxseg case, e.g. conv3d=native (repeatable)",
  )
  parser.add_argument("--json", default="", help="also write the rows to this JSON file")
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  scale = "quick" if args.quick else args.scale or ("cpu" if jax.default_backend() == "cpu" else "gpu")
  split = lambda text: [v for v in text.split(",") if v]
  try:
    overrides = {}
    for item in args.model:
      key, sep, value = item.partition("=")
      if not sep:
        raise ValueError(f"--model={item!r} is not KEY=VALUE")
      overrides[key] = {"true": True, "false": False}.get(value.lower(), value)
    rows = benchmark.run(
      scale,
      split(args.cases),
      split(args.dtypes),
      split(args.sections),
      model_overrides=overrides,
      steps=args.steps or (1 if args.quick else 3),
      repeats=args.repeats or (1 if args.quick else 3),
      with_torch=not args.no_torch,
      log=lambda line: print(line, file=sys.stderr, flush=True),
    )
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"python -m jaxseg.benchmark {' '.join(argv if argv is not None else sys.argv[1:])} (scale {scale})")
  print(benchmark.table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
