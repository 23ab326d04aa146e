"""Reproduce the Keras lstm_seq2seq example on manythings.org's fra.txt.

  .venv/bin/python experiments/reproduce_keras_fra.py /path/to/fra.txt --workdir runs/keras_fra

Same model and settings as keras-io examples/nlp/lstm_seq2seq.py (configs/keras_lstm_seq2seq.py);
then the recommended settings on the same data and the same validation split for comparison
(--also-recommended). The example's published run reached its best val_loss 0.4358 at epoch
25 (accuracy counting padding); ours reports token accuracy without padding.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seq2seq_jax import config as config_lib  # noqa: E402
from seq2seq_jax.errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ours on the Keras data: masked loss, length buckets (so not the example's padding,
# keras_compat), embeddings, attention, clipping; the split and model size stay the example's.
RECOMMENDED = ["keras_compat=false", "loss_on_padding=false", "input_mode=embed",
               "attention=general", "clip_norm=1.0", "bucket_width=16",
               "best_metric=val/exact_match"]


def build_configs(fra_txt: str, epochs: int, also_recommended: bool) -> dict:
  """The runs to train, by workdir name, each config checked before any of them trains."""
  keras = config_lib.load_config_file(os.path.join(ROOT, "configs", "keras_lstm_seq2seq.py"))
  keras = config_lib.apply_overrides(keras, [f"data=anki:{fra_txt}", f"num_epochs={epochs}"])
  configs = {"keras": keras}
  if also_recommended:
    configs["recommended"] = config_lib.apply_overrides(keras, RECOMMENDED)
  return configs


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("fra_txt", help="path to fra.txt (English<TAB>French<TAB>attribution)")
  parser.add_argument("--workdir", default="runs/keras_fra")
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--also-recommended", action="store_true",
                      help="then train masked loss + embeddings + attention on the same data")
  args = parser.parse_args()
  try:
    configs = build_configs(args.fra_txt, args.epochs, args.also_recommended)
    from seq2seq_jax.loop import train_and_evaluate  # JAX starts here, after the checks
    for name, config in configs.items():
      train_and_evaluate(config, os.path.join(args.workdir, name))
  except UserError as error:
    print(f"reproduce_keras_fra: error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
