"""Training and evaluation: pure jitted steps and the loop around them."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax.checkpoint import Checkpointer
from seq2seq_jax.config import Config
from seq2seq_jax.decode import decode_texts, first_argmax, make_greedy_decoder
from seq2seq_jax.errors import CheckpointError, UserError
from seq2seq_jax.metrics import exact_match, text_metrics
from seq2seq_jax.model import Seq2Seq, build_model, count_params, init_params
from seq2seq_jax.optim import build_optimizer, learning_rate_schedule
from seq2seq_jax.parallel import DataParallel, is_primary, maybe_initialize_distributed, to_numpy
from seq2seq_jax.vocab import PAD_ID, Vocab

log = logging.getLogger(__name__)

# Settings that may differ when a run is resumed: they change no trained number.
RESUMABLE_CHANGES = ("log_every_steps", "num_summary_samples", "eval_decode_samples",
                     "keep_checkpoints", "checkpoint_every_steps")


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compilations = [0]


def _count_compilation(event: str, duration: float, **kwargs) -> None:
  if event == _COMPILE_EVENT:
    _compilations[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compilation_count() -> int:
  """XLA compilations in this process so far (every jit cache miss, any function)."""
  return _compilations[0]


class TrainingInterrupted(Exception):
  """SIGINT/SIGTERM arrived; a checkpoint was saved."""


class NonFiniteLoss(UserError):
  """The loss became NaN or infinite."""


from seq2seq_jax.steps import create_state, eval_step, loss_and_counts, train_step  # noqa: F401


# ---------------------------------------------------------------------------
# The task: data, vocabularies and model of a run, built once
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Task:
  config: Config
  src_vocab: Vocab
  tgt_vocab: Vocab
  model: Seq2Seq
  parallel: DataParallel = dataclasses.field(default_factory=DataParallel)
  scaler: Any = None  # series.Scaler for series:PATH models
  keras_dims: dict[str, int] | None = None  # keras_compat: the example's padded lengths

  @property
  def is_series(self) -> bool:
    return self.config.input_mode == "real"

  @property
  def decode_max_len(self) -> int:
    if self.keras_dims:  # decode_sequence stops after max_decoder_seq_length + 1 characters
      return self.keras_dims["max_decoder_seq_length"] + 1
    return self.config.decode_max_len or self.config.max_target_len + 1

  @functools.cached_property
  def decoder(self):
    return make_greedy_decoder(self.model, self.decode_max_len)

  @functools.cached_property
  def eval_step(self):
    return jax.jit(functools.partial(eval_step, model=self.model, config=self.config))

  def encode(self, pairs) -> data_lib.Encoded:
    if self.is_series:  # already windows
      return pairs
    return data_lib.encode_pairs(pairs, self.src_vocab, self.tgt_vocab, self.keras_dims)

  @functools.cached_property
  def forward(self):
    """Jitted model outputs for a batch (series forecasts in scaled units)."""
    return jax.jit(lambda params, src, tgt_in: self.model.apply({"params": params}, src, tgt_in))

  def forecast(self, params, data: data_lib.Encoded) -> np.ndarray:
    """Scaled predictions N x series_output_steps x targets for every window."""
    outputs = np.zeros(data.tgt_NxT[:, 1:].shape, np.float32)
    batch_size = self.parallel.round_batch_size(self.config.batch_size)
    for start in range(0, len(data), batch_size):
      rows = np.arange(start, min(start + batch_size, len(data)))
      batch = data_lib.make_batch(data, rows, batch_size, 0)
      placed = self.parallel.shard_batch(batch)
      predicted = to_numpy(self.forward(params, placed["src"], placed["tgt_in"]))
      outputs[rows] = predicted[:len(rows)]
    return outputs

  def translate(self, params, sources: list[str], batch_size: int | None = None,
                decoder=None) -> list[str]:
    """Translations of raw source strings (inputs longer than the maximum are cut): greedy,
    or by decoder(params, src_BxS) -> ids_BxL (decode.make_beam_decoder, make_sample_decoder)."""
    if not sources:
      return []
    if self.config.source_lowercase:
      sources = [s.lower() for s in sources]
    keras_width = self.keras_dims["max_encoder_seq_length"] if self.keras_dims else 0
    src_NxS, _ = data_lib.encode_sources(sources, self.src_vocab,
                                         keras_width or self.config.max_source_len, keras_width)
    batch_size = self.parallel.round_batch_size(batch_size or self.config.batch_size)
    return decode_texts(decoder or self.decoder, params, src_NxS, self.tgt_vocab, batch_size,
                        self.config.bucket_width,
                        place=lambda src: self.parallel.shard_batch({"src": src})["src"],
                        fetch=to_numpy)

  def input_warnings(self, sources: list[str]) -> list[str]:
    """What translate() will do silently to these inputs: unknown tokens, truncation."""
    seen_as = [s.lower() for s in sources] if self.config.source_lowercase else sources
    unknown = sorted({token for s in seen_as for token in self.src_vocab.unknown_tokens(s)})
    unit = "characters" if self.src_vocab.level == "char" else "words"
    warnings = []
    if unknown:
      warnings.append(f"{unit} never seen in training (read as unknown): "
                      + " ".join(repr(token) for token in unknown))
    too_long = sum(len(self.src_vocab.tokenize(s)) > self.config.max_source_len for s in seen_as)
    if too_long:
      warnings.append(f"{too_long} input(s) longer than max_source_len={self.config.max_source_len} "
                      f"{unit} were truncated")
    return warnings

  def meta(self) -> dict[str, Any]:
    meta = {"config": self.config.to_dict(), "src_vocab": self.src_vocab.to_list(),
            "tgt_vocab": self.tgt_vocab.to_list(), "tokenizer": self.src_vocab.level}
    if self.scaler is not None:
      meta["series"] = self.scaler.to_dict()
    if self.keras_dims:
      meta["keras"] = dict(self.keras_dims)
    return meta


def make_task(config: Config, src_vocab: Vocab, tgt_vocab: Vocab,
              parallel: DataParallel | None = None, scaler=None,
              keras_dims: dict[str, int] | None = None) -> Task:
  if scaler is not None:  # series: input features in, target columns out
    model = build_model(config, len(scaler.columns), len(scaler.targets))
  else:
    model = build_model(config, len(src_vocab), len(tgt_vocab))
  return Task(config, src_vocab, tgt_vocab, model, parallel or DataParallel(), scaler, keras_dims)


def evaluate_pairs(task: Task, params, pairs, decode_limit: int = 0,
                   full_text_metrics: bool = True, decoder=None) -> tuple[dict[str, float], list[str]]:
  """Loss and token accuracy over all pairs; output metrics over the first decode_limit,
  decoded greedily or with decoder (e.g. make_beam_decoder's).

  For series models `pairs` are windows: loss (scaled MSE), MSE/MAE in the data's units
  and those of the naive last-value forecast.
  """
  encoded = task.encode(pairs)
  if task.is_series:
    from seq2seq_jax.series import series_metrics
    predictions = task.forecast(params, encoded)
    truth = encoded.tgt_NxT[:, 1:]
    metrics = {"loss": float(np.mean((predictions - truth) ** 2)) if len(encoded) else 0.0}
    if len(encoded):
      metrics.update(series_metrics(predictions, encoded, task.scaler))
    return metrics, []
  totals = {"loss_sum": 0.0, "weight": 0.0, "correct": 0.0, "tokens": 0.0}
  batch_size = task.parallel.round_batch_size(task.config.batch_size)
  for batch in data_lib.eval_batches(encoded, batch_size, task.config.bucket_width):
    counts = task.parallel.settle(task.eval_step(params, task.parallel.shard_batch(batch)))
    for key in totals:
      totals[key] += float(to_numpy(counts[key]))
  metrics = {"loss": totals["loss_sum"] / max(totals["weight"], 1.0),
             "token_accuracy": totals["correct"] / max(totals["tokens"], 1.0)}
  subset = pairs[:decode_limit] if decode_limit else pairs
  hypotheses = task.translate(params, [s for s, _ in subset], decoder=decoder)
  references = [t for _, t in subset]
  if full_text_metrics:
    metrics.update(text_metrics(hypotheses, references))
  else:
    metrics["exact_match"] = exact_match(hypotheses, references)
  return metrics, hypotheses


# ---------------------------------------------------------------------------
# Workdir bookkeeping
# ---------------------------------------------------------------------------

def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(type(value))


def write_atomically(path: str, text: str) -> None:
  """A kill at any moment leaves the old file or the new one, never half of one."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def append_metrics(workdir: str, record: dict[str, Any]) -> None:
  if not is_primary():
    return
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")


def rewind_metrics(workdir: str, step: int) -> int:
  """Drops metrics.jsonl records written after `step` (the checkpoint a run resumes from,
  0 for a run that starts again without one):
  a run killed without its last checkpoint (kill -9, power loss) logged steps that the
  resumed run computes and logs again, so each step keeps one record and the curves never
  go back in time. A half-written last line goes too. Returns the records dropped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not is_primary() or not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if isinstance(record, dict) and record.get("step", 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    write_atomically(path, "".join(kept))
    log.info("metrics.jsonl: dropped %d record(s) logged after checkpoint %d by the "
             "interrupted run; the resumed run logs those steps again", dropped, step)
  return dropped


def write_run_info(workdir: str, argv: list[str] | None, parallel: DataParallel) -> None:
  import flax
  import orbax.checkpoint
  if not is_primary():
    return
  info = {
      "command": argv if argv is not None else sys.argv,
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                   "flax": flax.__version__, "optax": optax.__version__,
                   "orbax-checkpoint": orbax.checkpoint.__version__,
                   "numpy": np.__version__},
      **parallel.describe(),
      "host": platform.node(),
      "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump(info, f, indent=2)


def check_workdir_config(workdir: str, config: Config) -> None:
  """Refuses to mix a new configuration into a workdir that holds another run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as error:
    raise CheckpointError(f"'{path}' is unreadable ({error}); use a new --workdir.") from None
  current = config.to_dict()
  saved = dict(Config().to_dict(), **saved)  # a key added since that run: its default
  changed = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
  if changed:
    diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:6])
    raise CheckpointError(
        f"workdir '{workdir}' holds a run with a different configuration ({diffs}). "
        "To resume it, run the same command as before (its settings are in "
        f"{path}); to start fresh, pass a new --workdir. Its checkpoints were not touched.")


def setup_logging(workdir: str | None = None, stream=None) -> None:
  """Library messages go to stdout, or stream (and workdir/train.log); not the root logger."""
  logger = logging.getLogger("seq2seq_jax")
  logger.setLevel(logging.INFO)
  logger.propagate = False
  if not any(getattr(h, "_seq2seq_jax", False) for h in logger.handlers):
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._seq2seq_jax = True
    logger.addHandler(handler)
  for noisy in ("absl", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
    logger.removeHandler(handler)
    handler.close()
  if workdir:
    file_handler = logging.FileHandler(os.path.abspath(os.path.join(workdir, "train.log")))
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(file_handler)


class _SignalCatcher:
  """Turns SIGINT/SIGTERM into a flag checked between steps."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def load_task_data(config: Config, parallel: DataParallel | None = None):
  """(task, train, val, test): text pairs with vocabularies built from the training
  split, or scaled windows of a series:PATH CSV."""
  kind, arg = data_lib.parse_spec(config.data)
  if kind == "series":
    from seq2seq_jax.series import load_series
    splits = load_series(config, arg)
    task = make_task(config, Vocab([]), Vocab([]), parallel, splits.scaler)
    return task, splits.train, splits.val, splits.test
  splits = data_lib.load_splits(config)
  train_pairs = data_lib.drop_long(splits.train, config, "train")
  val_pairs = data_lib.drop_long(splits.val, config, "val")
  test_pairs = data_lib.drop_long(splits.test, config, "test")
  if not train_pairs:
    raise UserError("no training pair fits max_source_len/max_target_len; raise them.")
  if config.keras_compat:
    src_vocab, tgt_vocab, dims = data_lib.keras_vocabs(train_pairs + val_pairs + test_pairs)
    task = make_task(config, src_vocab, tgt_vocab, parallel, keras_dims=dims)
    return task, train_pairs, val_pairs, test_pairs
  src_vocab, tgt_vocab = data_lib.build_vocabs(train_pairs, config.tokenizer,
                                               config.max_vocab_size, config.min_token_freq)
  return make_task(config, src_vocab, tgt_vocab, parallel), train_pairs, val_pairs, test_pairs


def train_and_evaluate(config: Config, workdir: str, argv: list[str] | None = None,
                       progress: bool | None = None, stop_after_step: int | None = None,
                       ) -> dict[str, Any]:
  """Trains (or resumes) a run in workdir; returns the final metrics.

  stop_after_step: behave as if interrupted after that step (checkpoint, then
  TrainingInterrupted), as SIGINT/SIGTERM do.
  """
  maybe_initialize_distributed()
  parallel = DataParallel()
  parallel.check_batch_size(config.batch_size)
  os.makedirs(workdir, exist_ok=True)
  setup_logging(workdir if is_primary() else None)
  if not is_primary():
    logging.getLogger("seq2seq_jax").setLevel(logging.WARNING)
  check_workdir_config(workdir, config)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  resuming = checkpointer.latest_step() is not None
  if is_primary():
    write_atomically(os.path.join(workdir, "config.json"), config.to_json())
  write_run_info(workdir, argv, parallel)

  # --- data ---------------------------------------------------------------------
  t0 = time.time()
  task, train_pairs, val_pairs, test_pairs = load_task_data(config, parallel)
  train_data = task.encode(train_pairs)
  if is_primary():
    with open(os.path.join(workdir, "vocab.json"), "w") as f:
      json.dump({k: v for k, v in task.meta().items() if k != "config"}, f,
                ensure_ascii=False, indent=0)
  steps_per_epoch = data_lib.steps_per_epoch(train_data, config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  log.info("data %s: %d train / %d val / %d test %s, %s, %.1fs",
           config.data, len(train_pairs), len(val_pairs), len(test_pairs),
           "windows" if task.is_series else "pairs",
           (f"{len(task.scaler.columns)} column(s) -> {len(task.scaler.targets)} target(s)"
            if task.is_series else f"vocab {len(task.src_vocab)} -> {len(task.tgt_vocab)}"),
           time.time() - t0)

  # --- model and optimizer --------------------------------------------------------
  tx = build_optimizer(config, total_steps)
  schedule = learning_rate_schedule(config, total_steps)
  state = parallel.replicate(create_state(config, task.model, tx))
  log.info("model: %s parameters, %d step(s)/epoch, %d epoch(s); mesh data=%d (%d x %s, "
           "%d process(es)), %d pairs per device per step",
           f"{count_params(state['params']):,}", steps_per_epoch, config.num_epochs,
           parallel.size, parallel.size, parallel.devices[0].device_kind, jax.process_count(),
           config.batch_size // parallel.size)
  position = {"epoch": 0, "batch": 0}
  sums = {"window": [0.0, 0.0], "epoch": [0.0, 0.0, 0.0, 0.0]}
  if resuming:
    state, meta, restored_step = checkpointer.restore(parallel.abstract_replicated(state))
    if meta["src_vocab"] != task.src_vocab.to_list() or meta["tgt_vocab"] != task.tgt_vocab.to_list():
      raise CheckpointError(f"workdir '{workdir}': the data's vocabulary differs from the "
                            "checkpoint's; resume with the same data or use a new --workdir.")
    position, sums = meta["position"], meta["sums"]
    log.info("resumed from checkpoint %d (epoch %d, batch %d)", restored_step,
             position["epoch"] + 1, position["batch"])
    rewind_metrics(workdir, restored_step)
  else:  # a run killed before its first checkpoint starts again from step 0
    rewind_metrics(workdir, 0)

  jit_train_step = jax.jit(functools.partial(train_step, model=task.model, tx=tx, config=config),
                           donate_argnums=(0,))
  base_rng = jax.random.fold_in(jax.random.key(config.seed), 2)

  def save(metrics=None):
    meta = dict(task.meta(), position=position, sums=sums,
                rng=np.asarray(jax.random.key_data(base_rng)).tolist(),
                step=int(to_numpy(state["step"])), metrics=metrics)
    checkpointer.save(int(to_numpy(state["step"])), state, meta, metrics)

  show_bar = sys.stderr.isatty() if progress is None else progress
  from tqdm import tqdm

  with _SignalCatcher() as signals:
    first_epoch = position["epoch"]
    while position["epoch"] < config.num_epochs:
      epoch = position["epoch"]
      batches = data_lib.epoch_batches(train_data, config.batch_size, config.seed, epoch,
                                       config.bucket_width)
      bar = tqdm(total=len(batches), initial=position["batch"], disable=not show_bar,
                 desc=f"epoch {epoch + 1}/{config.num_epochs} [{parallel.size}x "
                 f"{parallel.devices[0].platform}]", unit="step", leave=False)
      epoch_start = time.time()
      epoch_compilations = compilation_count()
      samples = 0
      pending = None  # metrics of the step in flight: read after dispatching the next

      def consume(step_metrics, step):
        step_metrics = {key: to_numpy(value) for key, value in step_metrics.items()}
        loss = float(step_metrics["loss"])
        if not np.isfinite(loss):
          good = checkpointer.latest_step()
          raise NonFiniteLoss(
              f"loss is {loss} at step {step}. Last good checkpoint: "
              f"{good if good is not None else 'none'} (kept, nothing saved over it). "
              "Train again in a new --workdir with a lower learning_rate or with clip_norm.")
        loss_sum, weight = float(step_metrics["loss_sum"]), float(step_metrics["weight"])
        sums["window"][0] += loss_sum
        sums["window"][1] += weight
        for k, key in enumerate(("loss_sum", "weight", "correct", "tokens")):
          sums["epoch"][k] += float(step_metrics[key])
        if step % config.log_every_steps == 0:
          window_loss = sums["window"][0] / max(sums["window"][1], 1.0)
          rate = samples / max(time.time() - epoch_start, 1e-9)
          append_metrics(workdir, {"step": step, "epoch": epoch + 1, "train/loss": window_loss,
                                   "lr": float(schedule(step - 1)),
                                   "grad_norm": float(step_metrics["grad_norm"]),
                                   "samples_per_sec": rate})
          if show_bar:
            bar.set_postfix(loss=f"{window_loss:.4f}", samples_s=f"{rate:.0f}")
          else:
            log.info("step %d  epoch %d  loss %.4f  %.0f samples/s", step, epoch + 1,
                     window_loss, rate)
          sums["window"] = [0.0, 0.0]

      while position["batch"] < len(batches):
        rows = batches[position["batch"]]
        batch = data_lib.make_batch(train_data, rows, config.batch_size, config.bucket_width)
        state, metrics = parallel.settle(jit_train_step(state, parallel.shard_batch(batch), base_rng))
        samples += len(rows)
        position["batch"] += 1
        if pending is not None:
          consume(*pending)
        pending = (metrics, position_step := int(to_numpy(state["step"])))
        bar.update(1)
        if stop_after_step is not None and position_step >= stop_after_step:
          signals.signum = signals.signum or "stop_after_step"
        if signals.signum is not None:
          consume(*pending)
          pending = None
          save()
          bar.close()
          raise TrainingInterrupted(
              f"stopped by signal {signals.signum} at step {position_step}; checkpoint saved. "
              "Run the same command again to resume.")
        if config.checkpoint_every_steps and position_step % config.checkpoint_every_steps == 0 \
            and position["batch"] < len(batches):
          consume(*pending)
          pending = None
          save()
      if pending is not None:
        consume(*pending)
      bar.close()
      epoch_time = time.time() - epoch_start
      epoch_sums = sums["epoch"]
      record = {"step": int(to_numpy(state["step"])), "epoch": epoch + 1,
                "train/loss": epoch_sums[0] / max(epoch_sums[1], 1.0),
                "train/token_accuracy": epoch_sums[2] / max(epoch_sums[3], 1.0),
                "train/epoch_seconds": epoch_time,
                "train/samples_per_sec": samples / max(epoch_time, 1e-9)}
      sums["epoch"] = [0.0, 0.0, 0.0, 0.0]
      position = {"epoch": epoch + 1, "batch": 0}
      last = epoch + 1 == config.num_epochs
      checkpoint_metrics = None
      if (epoch + 1) % config.eval_every_epochs == 0 or last:
        val_metrics, _ = evaluate_pairs(task, state["params"], val_pairs,
                                        config.eval_decode_samples, full_text_metrics=False)
        val_record = {f"val/{k}": v for k, v in val_metrics.items()}
        record.update(val_record)
        checkpoint_metrics = val_record
      # batch shapes come from fixed length buckets: only a process's first epoch compiles
      record["train/compilations"] = compilation_count() - epoch_compilations
      if record["train/compilations"] and epoch > first_epoch:
        log.warning("epoch %d compiled %d new program(s): batch shapes are not settling.",
                    epoch + 1, record["train/compilations"])
      append_metrics(workdir, record)
      log.info("epoch %d/%d  step %d  train loss %.4f  %s  %.0fs (%.0f samples/s)",
               epoch + 1, config.num_epochs, record["step"], record["train/loss"],
               "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/")),
               epoch_time, record["train/samples_per_sec"])
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or last:
        save(checkpoint_metrics)

  # --- final evaluation with the checkpoint `translate` would use -------------------------
  final_step = checkpointer.best_step() or checkpointer.latest_step()
  params = state["params"]
  if final_step is not None and final_step != int(to_numpy(state["step"])):
    restored, _, _ = checkpointer.restore(parallel.abstract_replicated(state), step=final_step)
    params = restored["params"]
  checkpointer.close()
  summary = {"step": final_step}
  for name, pairs in (("val", val_pairs), ("test", test_pairs)):
    if len(pairs):
      split_metrics, hypotheses = evaluate_pairs(task, params, pairs)
      summary.update({f"{name}/{k}": v for k, v in split_metrics.items()})
  append_metrics(workdir, dict(summary, final=True))
  if is_primary():
    write_atomically(os.path.join(workdir, "results.json"), json.dumps(summary, indent=2))
  log.info("\nfinal (checkpoint %s): %s", final_step,
           "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != "step"))
  shown = test_pairs if len(test_pairs) else val_pairs
  if task.is_series:
    predictions = task.scaler.unscale_targets(task.forecast(params, shown))
    truth = task.scaler.unscale_targets(shown.tgt_NxT[:, 1:])
    for i in range(min(config.num_summary_samples, len(shown))):
      log.info("-\nForecast: %s\nActual:   %s", np.round(predictions[i, :, 0], 4).tolist(),
               np.round(truth[i, :, 0], 4).tolist())
    return summary
  samples_to_show = shown[:config.num_summary_samples]
  for (source, target), hypothesis in zip(samples_to_show, task.translate(
      params, [s for s, _ in samples_to_show])):
    log.info("-\nInput sentence: %s\nDecoded sentence: %s\nReference: %s%s", source,
             hypothesis, target, "" if hypothesis == target else "   (differs)")
  return summary


# ---------------------------------------------------------------------------
# Restoring a trained model from a workdir alone
# ---------------------------------------------------------------------------

def load_trained(workdir: str, which: str = "best") -> tuple[Task, Any, int]:
  """(task, params, step) from a workdir: config and vocabularies come from the checkpoint."""
  if not os.path.isdir(workdir):
    raise CheckpointError(f"workdir '{workdir}' does not exist. Train first with "
                          f"`seq2seq-jax train --workdir {workdir}`.")
  best_metric = "val/exact_match"
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      best_metric = json.load(f).get("best_metric", best_metric)
  except (OSError, ValueError):
    pass  # the checkpoint's own copy of the config is what counts
  checkpointer = Checkpointer(workdir, best_metric=best_metric, read_only=True)
  step = None
  if which == "best":
    step = checkpointer.best_step()
  elif which != "latest":
    try:
      step = int(which)
    except ValueError:
      raise UserError(f"--checkpoint must be best, latest or a step number, got '{which}'.") from None
  state, meta, step = checkpointer.restore(step=step, fallback=which in ("best", "latest"))
  config = config_lib.from_dict(meta["config"], f"checkpoint {step} of {workdir}")
  scaler = None
  if "series" in meta:
    from seq2seq_jax.series import Scaler
    scaler = Scaler.from_dict(meta["series"])
  keras_dims = meta.get("keras")
  level = meta.get("tokenizer", config.tokenizer)  # checkpoints before words: characters
  tgt_vocab = Vocab(meta["tgt_vocab"], start_text=data_lib.KERAS_START if keras_dims else "",
                    level=level)
  task = make_task(config, Vocab.from_list(meta["src_vocab"], level), tgt_vocab, scaler=scaler,
                   keras_dims=keras_dims)
  params = task.parallel.replicate(jax.tree.map(np.asarray, state["params"]))
  return task, params, step
