"""The README's quality table, each row trained on the same budget.

From the Keras example's model to attention and a bidirectional encoder, greedy vs beam 5.

Every row is `seq2seq-jax train` on a base config with `--set` overrides, then
`seq2seq-jax evaluate --json` (and `--beam 5`) on the test split; the commands are
printed as they run and the table is written as Markdown and JSON.

  .venv/bin/python experiments/quality_table.py --corpus numbers --out runs/quality
  .venv/bin/python experiments/quality_table.py --corpus gettext --out runs/quality
  .venv/bin/python experiments/quality_table.py --corpus gettext --data anki:fra.txt --out runs/quality_fra

Rows (cumulative):
  keras      the example's model: one-hot inputs, loss over padding, every batch padded
             to the longest pair, no attention;
  +mask+emb  masked loss and length buckets, learned embeddings;
  +attention Luong attention with input feeding;
  +bidir     a bidirectional encoder;
  and the last row decoded with beam search (5 beams).
The optimizer, batch size, model size and number of epochs are the same in every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORPORA = {
    # the embedded task: 30,000 training pairs
    "numbers": ("configs/default.py", ["num_epochs=3"]),
    # the machine's gettext catalogs (Debian packages' French translations)
    "gettext": ("configs/gettext_fr.py", ["num_epochs=3", "latent_dim=128", "embed_dim=64",
                                          "best_metric=val/loss"]),
}
ROWS = [
    ("Keras-parity baseline", ["input_mode=onehot", "loss_on_padding=true", "bucket_width=0",
                               "attention=none", "reverse_source=false"]),
    ("+ masking and embeddings", ["input_mode=embed", "attention=none", "reverse_source=false"]),
    ("+ attention", ["attention=general", "input_feeding=true"]),
    ("+ bidirectional encoder", ["attention=general", "input_feeding=true",
                                 "bidirectional_encoder=true"]),
]


def run(command: list[str]) -> str:
  print("$ " + " ".join(command), flush=True)
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if result.returncode != 0:
    sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result.stdout


def param_count(workdir: str) -> int:
  from seq2seq_jax.model import count_params
  from seq2seq_jax.inference import load_trained
  _, params, _ = load_trained(workdir)
  return count_params(params)


def train_seconds(workdir: str) -> float:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return sum(r.get("train/epoch_seconds", 0.0) for r in records)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--corpus", choices=sorted(CORPORA), required=True)
  parser.add_argument("--out", default="runs/quality")
  parser.add_argument("--data", help="another corpus with the --corpus settings, e.g. "
                      "anki:fra.txt (the Keras example's file, when you have it)")
  parser.add_argument("--set", action="append", default=[], help="extra overrides for every row")
  args = parser.parse_args()
  config, base = CORPORA[args.corpus]
  if args.data:
    base = base + [f"data={args.data}"]
  seq2seq = [sys.executable, "-m", "seq2seq_jax"]
  table = []
  for k, (name, overrides) in enumerate(ROWS):
    workdir = os.path.join(args.out, args.corpus, f"row{k}")
    sets = [x for o in base + overrides + args.set for x in ("--set", o)]
    start = time.time()
    run(seq2seq + ["train", "--config", config, "--workdir", workdir, *sets])
    wall = time.time() - start
    decoders = [("greedy", [])] + ([("beam 5", ["--beam", "5"])] if k == len(ROWS) - 1 else [])
    for decoding, flags in decoders:
      metrics = json.loads(run(seq2seq + ["evaluate", "--workdir", workdir, "--json", *flags]))
      table.append({"row": name, "decoding": decoding, "workdir": workdir,
                    "exact_match": metrics["exact_match"], "cer": metrics["cer"],
                    "chrf": metrics["chrf"], "bleu": metrics["bleu"],
                    "train_seconds": train_seconds(workdir), "train_command_seconds": wall,
                    "params": param_count(workdir)})
      print(json.dumps(table[-1]), flush=True)
  lines = ["| model | decoding | exact match | CER | chrF | BLEU | train time | parameters |",
           "|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['row']} | {r['decoding']} | {r['exact_match']:.4f} | {r['cer']:.4f} | "
                 f"{r['chrf']:.2f} | {r['bleu']:.2f} | {r['train_seconds'] / 60:.1f} min | "
                 f"{r['params']:,} |")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{args.corpus}.json"), "w") as f:
    json.dump(table, f, indent=2)
  with open(os.path.join(args.out, f"{args.corpus}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
