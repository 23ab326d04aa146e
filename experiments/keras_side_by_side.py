"""The Keras lstm_seq2seq example and our Keras-parity configuration, trained side by side.

Both train on the same data for a few epochs; their loss curves are printed side by side
and plotted.

  .venv/bin/python experiments/keras_side_by_side.py --data anki:fra.txt --epochs 5 --out runs/side_by_side
  .venv/bin/python experiments/keras_side_by_side.py --data numbers:fr --num-samples 10000 --epochs 5

Needs keras (pip install -e '.[dev]'); Keras runs on its JAX backend. Same data, same
vocabulary, same padding, same loss and optimizer settings; the weights start from
different random draws and the batches are shuffled by different generators, so the
curves agree within noise, not to the digit (tests/test_keras.py checks exact parity).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seq2seq_jax import keras_import as ki  # noqa: E402
from seq2seq_jax.inference import load_run_data  # noqa: E402
from seq2seq_jax.loop import train_and_evaluate  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="numbers:fr", help="anki:PATH, tsv:PATH or numbers:LANG")
  parser.add_argument("--num-samples", type=int, default=10_000)
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--latent-dim", type=int, default=256)
  parser.add_argument("--out", default="runs/side_by_side")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  config = ki.import_config(args.data, args.num_samples, args.latent_dim)
  config = dataclasses.replace(config, num_epochs=args.epochs, eval_decode_samples=100)
  if args.data.startswith("numbers:"):  # the first num_samples numbers, Keras' 80/20 split
    config = dataclasses.replace(config, numbers_train=int(args.num_samples * 0.8),
                                 numbers_val=args.num_samples - int(args.num_samples * 0.8),
                                 numbers_test=0, numbers_max=999_999)
  translator, train, val, test = load_run_data(config)
  src_chars, tgt_chars = ki.keras_characters(train + val + test)
  model = ki.build_example_model(len(src_chars), len(tgt_chars), args.latent_dim)
  enc, dec, target = ki.example_arrays(train + val, src_chars, tgt_chars, translator.keras_dims)
  start = time.time()
  history = model.fit([enc, dec], target, batch_size=config.batch_size, epochs=args.epochs,
                      validation_split=len(val) / (len(train) + len(val)), verbose=0).history
  keras_seconds = time.time() - start
  workdir = os.path.join(args.out, "seq2seq_jax")
  start = time.time()
  train_and_evaluate(config, workdir, progress=False)
  ours_seconds = time.time() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [r for r in map(json.loads, f) if "val/loss" in r and not r.get("final")]
  print(f"{'epoch':>5}  {'keras loss':>10} {'ours loss':>10}  {'keras val':>10} {'ours val':>10}")
  for i, record in enumerate(epochs):
    print(f"{i + 1:>5}  {history['loss'][i]:>10.4f} {record['train/loss']:>10.4f}  "
          f"{history['val_loss'][i]:>10.4f} {record['val/loss']:>10.4f}")
  print(f"wall time: keras {keras_seconds:.0f}s, seq2seq_jax {ours_seconds:.0f}s (ours includes "
        "compilation, validation decoding and checkpoints)")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axis = plt.subplots(figsize=(7, 4))
  steps = range(1, len(epochs) + 1)
  axis.plot(steps, history["loss"][:len(epochs)], "o-", label="Keras train")
  axis.plot(steps, [r["train/loss"] for r in epochs], "s--", label="seq2seq_jax train")
  axis.plot(steps, history["val_loss"][:len(epochs)], "o-", label="Keras validation")
  axis.plot(steps, [r["val/loss"] for r in epochs], "s--", label="seq2seq_jax validation")
  axis.set_xlabel("epoch")
  axis.set_ylabel("categorical cross-entropy (padding included)")
  axis.set_title(f"Keras lstm_seq2seq vs seq2seq_jax parity config, {args.data}")
  axis.legend()
  figure.tight_layout()
  path = os.path.join(args.out, "keras_vs_seq2seq_jax.png")
  figure.savefig(path, dpi=120)
  print("plot:", path)


if __name__ == "__main__":
  main()
