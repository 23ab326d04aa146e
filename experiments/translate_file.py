"""Restore a trained workdir and translate a text file, one sentence per line.

  python experiments/translate_file.py --workdir runs/default input.txt > output.txt

Needs only the workdir: config and vocabularies are stored in the checkpoint.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seq2seq_jax.inference import load_trained  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("input", help="UTF-8 text file, one source sentence per line")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--checkpoint", default="best", help="best, latest or a step number")
  parser.add_argument("--batch-size", type=int, default=512)
  args = parser.parse_args()
  task, params, step = load_trained(args.workdir, args.checkpoint)
  with open(args.input, encoding="utf-8") as f:
    sources = [line.rstrip("\r\n") for line in f]
  start = time.time()
  outputs = task.translate(params, sources, args.batch_size)
  seconds = time.time() - start
  for source, output in zip(sources, outputs):
    print(output if source else "")
  print(f"checkpoint {step}: {len(sources)} lines in {seconds:.2f}s "
        f"({len(sources) / max(seconds, 1e-9):.0f} sentences/s, compile included)", file=sys.stderr)


if __name__ == "__main__":
  main()
