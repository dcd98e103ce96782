"""Markdown tables of the scaling model (launch/README.md) from tests/scripts/scaling_model.py's JSON line.

  python tests/scripts/scaling_table.py scaling.json

Model (data parallel, per-device batch b fixed, ring all-reduce of fp32 gradients, no overlap with the
backward pass, which makes it an upper bound on step time):
  T(n) = T1 + 2 (n - 1) / n * P / BW,   efficiency E(n) = T1 / T(n),   throughput n * b / T(n).
"""

import json
import sys

BANDWIDTHS = {"100 GbE (12.5 GB/s)": 12.5e9, "400 Gb/s IB (50 GB/s)": 50e9, "NVLink / ICI (300 GB/s)": 300e9}
NAMES = {"unet2d": "2D U-Net", "unet3d": "3D U-Net", "deeplabv3": "DeepLab v3"}


def allreduce_s(n: int, param_bytes: float, bandwidth: float) -> float:
  return 2 * (n - 1) / n * param_bytes / bandwidth


def main(path: str) -> None:
  data = json.loads(open(path).read().strip().splitlines()[-1])
  print(
    "| model | config | params | gradient bytes | b | T1 measured | all-reduce n=8 / n=64 at "
    + " / ".join(BANDWIDTHS)
    + " | T1 for 90% efficiency (n=64) |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for key, name in NAMES.items():
    row = data[key]
    p = row["param_bytes"]
    ar = " / ".join(
      f"{1e3 * allreduce_s(8, p, bw):.2f}, {1e3 * allreduce_s(64, p, bw):.2f} ms" for bw in BANDWIDTHS.values()
    )
    need = ", ".join(f"{9e3 * allreduce_s(64, p, bw):.1f} ms" for bw in BANDWIDTHS.values())
    print(
      f"| {name} | `{row['config'].replace('.', '/')}.py` | {row['params'] / 1e6:.2f} M | {p / 1e6:.1f} MB | "
      f"{row['batch_per_device']} x {' x '.join(map(str, row['patch']))} | {row['step_s_1_device']:.2f} s | {ar} | "
      f"{need} |"
    )
  u = data["unet2d"]
  t1, b, p = u["step_s_1_device"], u["batch_per_device"], u["param_bytes"]
  print()
  print("| 2D U-Net, virtual CPU devices sharing 2 cores | global batch | step | images/s | model all-reduce term |")
  print("|---|---|---|---|---|")
  mem = 5e9  # Assumed memory-copy bandwidth of an all-reduce between virtual CPU devices.
  for label, n, batch, step in (
    ("1 device", 1, b, t1),
    ("4 devices, weak scaling", 4, 4 * b, u["step_s_4_devices_weak"]),
    ("4 devices, strong scaling", 4, b, u["step_s_4_devices_strong"]),
  ):
    term = allreduce_s(n, p, mem)
    print(
      f"| {label} | {batch} | {step:.2f} s | {batch / step:.2f} | {1e3 * term:.1f} ms "
      f"({100 * term / step:.2f}% of the step) |"
    )
  print()
  print(
    f"Measured with jax {data['jax']} on {data['cpu_count']} CPU cores, load average "
    f"{', '.join(f'{x:.1f}' for x in data['load_average'])} (shared machine)."
  )


if __name__ == "__main__":
  main(sys.argv[1])
