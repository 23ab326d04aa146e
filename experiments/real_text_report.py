"""The README's real-text figures from one trained workdir.

Greedy and beam test metrics, validation chrF against minutes, and translations drawn at
random from the test pages.

  .venv/bin/python experiments/real_text_report.py --workdir runs/libreoffice_fr --out runs/libreoffice_fr/report.md

Test metrics cover every pair of the test pages first (longer sources translated sentence
by sentence where the run has split_sentences, else cut as `translate` cuts them), then the
pairs within the model's length limits (the same outputs, that subset). The samples are
drawn with --seed from all test pairs, good and bad alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from seq2seq_jax import data as data_lib  # noqa: E402
from seq2seq_jax.decode import make_beam_decoder  # noqa: E402
from seq2seq_jax.errors import UserError  # noqa: E402
from seq2seq_jax.inference import evaluate_pairs, load_trained  # noqa: E402
from seq2seq_jax.metrics import text_metrics  # noqa: E402
from seq2seq_jax.workdir import read_metrics  # noqa: E402

COLUMNS = ("chrf", "bleu", "cer", "exact_match")


def row(name: str, pairs: str, metrics: dict, seconds: float) -> str:
  return (f"| {name} | {pairs} | {metrics['chrf']:.1f} | {metrics['bleu']:.1f} | "
          f"{metrics['cer']:.3f} | {metrics['exact_match']:.3f} | {seconds:.0f} s |")


def main() -> int:
  try:
    report()
  except UserError as error:  # a missing workdir, changed data: one line, as the command says it
    print(f"real_text_report: error: {error}", file=sys.stderr)
    return 2
  return 0


def report() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--beam", type=int, default=5)
  parser.add_argument("--length-penalty", type=float, default=0.6)
  parser.add_argument("--samples", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the Markdown here")
  args = parser.parse_args()

  translator, params, step = load_trained(args.workdir)
  config = translator.config
  splits = data_lib.load_splits(config)
  # the test split the run was trained beside, as `seq2seq-jax evaluate` checks
  data_lib.check_same_split(translator.data_info, splits, "test", config.data, step,
                            "Report on the data the run was trained with.")
  every = splits.test
  if not every:
    sys.exit(f"real_text_report: the run {args.workdir} has no test pairs "
             f"(test_fraction={config.test_fraction}): nothing to report.")
  within = translator.long_pairs(every)
  within = [not long for long in within]
  limited = [p for p, fits in zip(every, within) if fits]
  beam = make_beam_decoder(translator.model, translator.decode_max_len, args.beam,
                           args.length_penalty)
  how = "translated sentence by sentence" if config.split_sentences else "cut"
  lines = [f"checkpoint {step} of {args.workdir}; test split: {len(every)} pairs, "
           f"{len(limited)} within max_source_len={config.max_source_len} / "
           f"max_target_len={config.max_target_len} tokens (longer sources {how})", "",
           "| decoding | test pairs | chrF | BLEU | CER | exact match | decode time |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  outputs = {}
  for name, decoder in (("greedy", None), (f"beam {args.beam}", beam)):
    start = time.time()
    metrics, hypotheses = evaluate_pairs(translator, params, every, decoder=decoder)
    seconds = time.time() - start
    outputs[name] = hypotheses
    subset = text_metrics([h for h, fits in zip(hypotheses, within) if fits],
                          [t for (_, t), fits in zip(every, within) if fits])
    lines.append(row(name, f"all ({len(every):,})", metrics, seconds))
    lines.append(row(name, f"within the limits ({len(limited):,})", subset, seconds)
                 .replace(f"| {seconds:.0f} s |", "| (the same run) |"))
    print("\n".join(lines[-2:]), flush=True)

  decoded = (f"{config.eval_decode_samples} greedy outputs" if config.eval_decode_samples
             else "every validation pair, greedy")
  lines += ["", f"Validation chrF ({decoded}) against wall time of the command:", "",
            "| epoch | minutes | val chrF | val BLEU |", "| --- | --- | --- | --- |"]
  for record in read_metrics(args.workdir):
    if "val/chrf" in record and "elapsed_seconds" in record:
      lines.append(f"| {record['epoch']} | {record['elapsed_seconds'] / 60:.1f} | "
                   f"{record['val/chrf']:.1f} | {record['val/bleu']:.1f} |")

  rng = np.random.default_rng(args.seed)
  chosen = sorted(rng.choice(len(every), size=min(args.samples, len(every)), replace=False))
  lines += ["", f"{len(chosen)} test pairs drawn at random (seed {args.seed}):", ""]
  for i in chosen.tolist() if hasattr(chosen, "tolist") else chosen:
    source, reference = every[i]
    lines += [f"- source: {source}", f"  - reference: {reference}",
              f"  - greedy: {outputs['greedy'][i]}",
              f"  - beam {args.beam}: {outputs[f'beam {args.beam}'][i]}"]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  sys.exit(main())
