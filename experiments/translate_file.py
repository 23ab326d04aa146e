"""Restore a trained workdir and translate a text file, one sentence per line.

  .venv/bin/python experiments/translate_file.py --workdir runs/default input.txt > output.txt

Needs only the workdir: config and vocabularies are stored in the checkpoint.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seq2seq_jax.data import read_text, text_lines  # noqa: E402
from seq2seq_jax.errors import UserError  # noqa: E402
from seq2seq_jax.inference import load_trained  # noqa: E402


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("input", help="UTF-8 text file, one source sentence per line")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--checkpoint", default="best", help="best, latest or a step number")
  parser.add_argument("--batch-size", type=int, default=512)
  args = parser.parse_args()
  try:  # the file first: a wrong path or encoding is named before the model loads
    sources = text_lines(read_text(args.input))  # BOM, CRLF, non-UTF-8 as train reads files
    task, params, step = load_trained(args.workdir, args.checkpoint)
    for warning in task.input_warnings(sources):  # as `seq2seq-jax translate` warns
      print(f"warning: {warning}", file=sys.stderr)
    start = time.time()
    outputs = task.translate(params, sources, args.batch_size)
  except UserError as error:
    print(f"translate_file: error: {error}", file=sys.stderr)
    return 2
  seconds = time.time() - start
  for output in outputs:  # an empty line for an empty line
    print(output)
  print(f"checkpoint {step}: {len(sources)} lines in {seconds:.2f}s "
        f"({len(sources) / max(seconds, 1e-9):.0f} sentences/s, compile included)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
