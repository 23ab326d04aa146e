"""Data, in the order a run reads it: sources, splits, batches.

Sources parse `--data SPEC` into text pairs (sources.py, tasks.py), splits cut and limit
them and build vocabularies (splits.py; long pairs into sentence pairs with sentences.py),
batches encode them to int32 ids and cut length-bucketed batches (batches.py)."""

from seq2seq_jax.data.batches import (Encoded, bucket_keys, encode_pairs, encode_sources,  # noqa: F401
                                      epoch_batches, eval_batches, make_batch, steps_per_epoch)
from seq2seq_jax.data.sources import (MO_MAGIC, Pair, gettext_pairs, gettext_skip_reason,  # noqa: F401
                                      number_pairs, parse_spec, read_mo, read_text,
                                      sample_numbers, spec_paths, tab_pairs, text_lines)
from seq2seq_jax.data.splits import (KERAS_END, KERAS_START, Splits, build_vocabs,  # noqa: F401
                                     changed_splits, check_same_split,
                                     drop_long, keras_vocabs, load_splits, split_pairs)
from seq2seq_jax.data.tasks import TASKS, task_pairs  # noqa: F401 (the old tasks.py's)
