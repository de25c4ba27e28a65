"""Overlays the learning curves of one or more runs (their metrics.jsonl) in one figure.

    python plot.py runs/a [runs/b ...] [--out curves.png]
"""
import argparse
import pathlib
import sys

from bilateral_jax import metric_writer, plots


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="run directories (each with a metrics.jsonl)")
  parser.add_argument("--out", default="curves.png", help="PNG to write (default: curves.png)")
  args = parser.parse_args(argv)
  runs = {}
  for workdir in args.workdirs:
    rows = metric_writer.read(workdir)
    if not rows:
      print(f"error: no metrics in {pathlib.Path(workdir) / 'metrics.jsonl'}", file=sys.stderr)
      return 2
    runs[pathlib.Path(workdir).name or workdir] = rows
  print(f"written to {plots.curves(runs, args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
