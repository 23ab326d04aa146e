"""Old import paths (seq2seq_jax 0.1), kept working.

Training moved to loop.py, the pure steps to steps.py, a run's files to workdir.py,
restoring and translating to inference.py."""

from seq2seq_jax.inference import Translator as Task  # noqa: F401
from seq2seq_jax.inference import evaluate_pairs, load_trained  # noqa: F401
from seq2seq_jax.inference import load_run_data as load_task_data  # noqa: F401
from seq2seq_jax.inference import make_translator as make_task  # noqa: F401
from seq2seq_jax.loop import NonFiniteLoss, TrainingInterrupted, train_and_evaluate  # noqa: F401
from seq2seq_jax.steps import create_state, eval_step, loss_and_counts, train_step  # noqa: F401
from seq2seq_jax.workdir import (append_metrics, check_workdir_config, rewind_metrics,  # noqa: F401
                                 write_atomically)
