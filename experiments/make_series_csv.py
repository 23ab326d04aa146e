"""Write a small multi-column time series CSV for trying `series:PATH`.

Seasonal signals with noise:  .venv/bin/python experiments/make_series_csv.py series.csv [--rows 2000] [--seed 0]"""

import argparse

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("path")
  parser.add_argument("--rows", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  t = np.arange(args.rows)
  load = 10 + 3 * np.sin(2 * np.pi * t / 24) + np.sin(2 * np.pi * t / 168) + 0.3 * rng.normal(size=t.size)
  temperature = 15 + 5 * np.sin(2 * np.pi * (t - 6) / 24) + 0.2 * rng.normal(size=t.size)
  with open(args.path, "w") as f:
    f.write("load,temperature\n")
    for a, b in zip(load, temperature):
      f.write(f"{a:.4f},{b:.4f}\n")


if __name__ == "__main__":
  main()
