"""A model with its vocabularies, built for a run's data or restored from a workdir alone.

It translates, forecasts and evaluates."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.checkpoint import Checkpointer
from seq2seq_jax.config import Config
from seq2seq_jax.data import sentences as sentences_lib
from seq2seq_jax.decode import decode_texts, make_greedy_decoder
from seq2seq_jax.errors import CheckpointError, UserError, is_whole_number
from seq2seq_jax.metrics import exact_match, text_metrics
from seq2seq_jax.model import Seq2Seq, build_model
from seq2seq_jax.parallel import DataParallel, to_numpy
from seq2seq_jax.steps import eval_step
from seq2seq_jax.vocab import Vocab, check_texts, input_warnings, word_rules_of


@dataclasses.dataclass
class Translator:
  """The model of a run, its vocabularies and devices; parameters are passed in."""
  config: Config
  src_vocab: Vocab
  tgt_vocab: Vocab
  model: Seq2Seq
  parallel: DataParallel = dataclasses.field(default_factory=DataParallel)
  scaler: Any = None  # series.Scaler for series:PATH models
  keras_dims: dict[str, int] | None = None  # keras_compat: the example's padded lengths
  data_info: dict[str, Any] | None = None  # data.Splits.info() of the data it was built for

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

  @property
  def source_width(self) -> int:
    """The most source tokens the model reads: longer inputs are cut to it."""
    if self.keras_dims:
      return self.keras_dims["max_encoder_seq_length"]
    return self.config.max_source_len

  def encode(self, pairs) -> data_lib.Encoded:
    """Pairs as ids, sources cut to source_width as translate cuts them (the training
    splits hold none longer; evaluate --split all may)."""
    if self.is_series:  # already windows
      return pairs
    encoded = data_lib.encode_pairs(pairs, self.src_vocab, self.tgt_vocab, self.keras_dims)
    if encoded.src_NxS.shape[1] > self.source_width:
      encoded = dataclasses.replace(encoded, src_NxS=encoded.src_NxS[:, :self.source_width],
                                    src_len_N=np.minimum(encoded.src_len_N, self.source_width))
    return encoded

  def long_pairs(self, pairs) -> list[bool]:
    """Each pair: longer than the model reads or writes? (a source over source_width
    tokens, a target over max_target_len: outputs stop at decode_max_len)."""
    return [len(self.src_vocab.encode(s)) > self.source_width
            or len(self.tgt_vocab.encode(t)) > self.decode_max_len - 1 for s, t in pairs]

  def count_long(self, pairs) -> int:
    """Pairs longer than the model reads or writes (long_pairs)."""
    return sum(self.long_pairs(pairs))

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
                decoder=None, split_sentences: bool | None = None) -> list[str]:
    """Translations of raw source strings: greedy, or by decoder(params, src_BxS) -> ids_BxL
    (decode.make_beam_decoder, make_sample_decoder), in batches of batch_size rows (None:
    the config's batch_size, always that shape). An input longer than the model reads
    is cut, or with split_sentences (None: the config's) translated in pieces of whole
    sentences that fit (data.sentences.pieces) whose translations are joined by spaces."""
    check_texts(sources, batch_size, none_ok=True)
    if self.is_series:
      raise UserError("a series model forecasts numbers rather than translating text: use "
                      "Translator.forecast.")
    if not sources:
      return []
    if split_sentences is None:
      split_sentences = self.config.split_sentences
    if split_sentences:
      pieces, counts = sentences_lib.flatten_pieces(sources, self._fits)
      return sentences_lib.join_pieces(
          self.translate(params, pieces, batch_size, decoder, split_sentences=False), counts)
    if self.config.source_lowercase:
      sources = [s.lower() for s in sources]
    keras_width = self.keras_dims["max_encoder_seq_length"] if self.keras_dims else 0
    src_NxS, _ = data_lib.encode_sources(sources, self.src_vocab,
                                         keras_width or self.config.max_source_len, keras_width)
    if batch_size is not None:  # as asked, but no larger than the inputs need (a power of
      # two at least their count: few programs to compile), so a huge --batch-size for one
      # sentence allocates one row, not millions
      batch_size = min(batch_size, 1 << (len(src_NxS) - 1).bit_length())
    batch_size = self.parallel.round_batch_size(batch_size or self.config.batch_size)
    outputs = decode_texts(decoder or self.decoder, params, src_NxS, self.tgt_vocab, batch_size,
                           self.config.bucket_width,
                           place=lambda src: self.parallel.shard_batch({"src": src})["src"],
                           fetch=to_numpy)
    # an empty input, or one of spaces alone, gives an empty output (translate's empty
    # line, the export's): no model was trained on one (data files refuse blank sides)
    return [output if source.strip() else "" for source, output in zip(sources, outputs)]

  def _seen_as(self, text: str) -> str:
    """A source as the model reads it (lower-cased where it was trained so)."""
    return text.lower() if self.config.source_lowercase else text

  def _fits(self, text: str) -> bool:
    """Whether the model reads all of text (split_sentences cuts sources into pieces of
    whole sentences that do; a word longer than source_width stays whole, and is cut)."""
    return len(self.src_vocab.encode(self._seen_as(text))) <= self.source_width

  def input_warnings(self, sources: list[str], split_sentences: bool | None = None,
                     truncation: bool = True) -> list[str]:
    """What translate() will do silently to these inputs: unknown tokens, truncation at
    source_width (with split_sentences, of a piece no break brought within it; truncation
    False: unknown tokens only)."""
    if split_sentences is None:
      split_sentences = self.config.split_sentences
    if not split_sentences or not truncation:
      return input_warnings(self.src_vocab, [self._seen_as(s) for s in sources],
                            self.source_width if truncation else None)
    pieces, _ = sentences_lib.flatten_pieces(sources, self._fits)
    pieces = [self._seen_as(piece) for piece in pieces]
    return input_warnings(self.src_vocab, pieces, self.source_width,
                          "input piece(s) (split into sentences and words)")

  def checkpoint_meta(self, config: Config | None = None, **fields) -> workdir_lib.CheckpointMeta:
    """The meta a checkpoint of this model stores (config: a trial's own, default ours)."""
    return workdir_lib.CheckpointMeta(
        config=(config or self.config).to_dict(), src_vocab=self.src_vocab.to_list(),
        tgt_vocab=self.tgt_vocab.to_list(), tokenizer=self.src_vocab.level,
        series=self.scaler.to_dict() if self.scaler is not None else None,
        keras=dict(self.keras_dims) if self.keras_dims else None,
        sentencepiece=(workdir_lib.sentencepiece_field(self.src_vocab.model_proto,
                                                       self.tgt_vocab.model_proto)
                       if self.src_vocab.level == "sentencepiece" else None),
        data=self.data_info, word_rules=self.src_vocab.saved_word_rules, **fields)


def make_translator(config: Config, src_vocab: Vocab, tgt_vocab: Vocab,
                    parallel: DataParallel | None = None, scaler=None,
                    keras_dims: dict[str, int] | None = None) -> Translator:
  if scaler is not None:  # series: input features in, target columns out
    model = build_model(config, len(scaler.columns), len(scaler.targets))
  else:
    model = build_model(config, len(src_vocab), len(tgt_vocab))
  return Translator(config, src_vocab, tgt_vocab, model, parallel or DataParallel(), scaler,
                    keras_dims)


def load_run_data(config: Config, parallel: DataParallel | None = None):
  """(translator, train, val, test): text pairs with vocabularies built from the training
  split, or scaled windows of a series:PATH CSV."""
  kind, arg = data_lib.parse_spec(config.data)
  if kind == "series":
    from seq2seq_jax.series import load_series
    splits = load_series(config, arg)
    translator = make_translator(config, Vocab([]), Vocab([]), parallel, splits.scaler)
    return translator, splits.train, splits.val, splits.test
  splits = data_lib.load_splits(config)
  # subword lengths need the models, trained on the whole training split first; char and
  # word vocabularies hold the tokens of the pairs kept
  vocabs = None
  if config.tokenizer == "sentencepiece":
    vocabs = data_lib.build_vocabs(splits.train, config)
  train_pairs = data_lib.drop_long(splits.train, config, "train", vocabs,
                                   splits.held_out_sources())
  val_pairs = data_lib.drop_long(splits.val, config, "val", vocabs)
  test_pairs = data_lib.drop_long(splits.test, config, "test", vocabs)
  if not train_pairs:
    raise UserError("no training pair fits max_source_len/max_target_len; raise them.")
  if config.keras_compat:
    src_vocab, tgt_vocab, dims = data_lib.keras_vocabs(train_pairs + val_pairs + test_pairs)
    translator = make_translator(config, src_vocab, tgt_vocab, parallel, keras_dims=dims)
  else:
    src_vocab, tgt_vocab = vocabs or data_lib.build_vocabs(train_pairs, config)
    translator = make_translator(config, src_vocab, tgt_vocab, parallel)
  translator.data_info = splits.info()
  return translator, train_pairs, val_pairs, test_pairs


def all_pairs(config: Config, spec: str | None = None) -> list[data_lib.Pair]:
  """Every pair of a data spec (default config.data), in file order: no train/val/test
  cut, no num_samples limit, none dropped for length (evaluate --split all). An embedded
  source (numbers:LANG, a task) gives its train, val and test pairs in turn."""
  uncut = dataclasses.replace(config, val_fraction=0.0, test_fraction=0.0, split_mode="last",
                              num_samples=0)
  splits = data_lib.load_splits(uncut, spec)
  return splits.train + splits.val + splits.test


def evaluate_pairs(translator: Translator, params, pairs, decode_limit: int = 0,
                   full_text_metrics: bool = True, decoder=None,
                   split_sentences: bool | None = None) -> tuple[dict[str, float], list[str]]:
  """Loss and token accuracy over all pairs (with split_sentences, None: the config's,
  over those within the model's limits); output metrics over the first decode_limit,
  decoded greedily or with decoder (e.g. make_beam_decoder's), long sources translated
  sentence by sentence with split_sentences.

  For series models `pairs` are windows: loss (scaled MSE), MSE/MAE in the data's units
  and those of the naive last-value forecast.
  """
  if not len(pairs):  # scores of nothing would read as a model that got everything wrong
    raise UserError("no pairs to evaluate.")
  if not is_whole_number(decode_limit) or decode_limit < 0:
    raise ValueError(f"decode_limit must be a whole number, 0 for every pair, got "
                     f"{decode_limit!r}.")
  if translator.is_series:
    from seq2seq_jax.series import series_metrics
    encoded = translator.encode(pairs)
    predictions = translator.forecast(params, encoded)
    truth = encoded.tgt_NxT[:, 1:]
    metrics = {"loss": float(np.mean((predictions - truth) ** 2)) if len(encoded) else 0.0}
    if len(encoded):
      metrics.update(series_metrics(predictions, encoded, translator.scaler))
    return metrics, []
  if split_sentences is None:
    split_sentences = translator.config.split_sentences
  scored = pairs
  if split_sentences:  # teacher-forced over the pairs that fit (a long source would be cut)
    scored = [p for p, long in zip(pairs, translator.long_pairs(pairs)) if not long]
  encoded = translator.encode(scored)
  totals = workdir_lib.Totals()
  parallel = translator.parallel
  batch_size = parallel.round_batch_size(translator.config.batch_size)
  for batch in data_lib.eval_batches(encoded, batch_size, translator.config.bucket_width):
    counts = parallel.settle(translator.eval_step(params, parallel.shard_batch(batch)))
    totals.add({key: float(to_numpy(value)) for key, value in counts.items()})
  metrics = {"loss": totals.loss, "token_accuracy": totals.token_accuracy}
  subset = pairs[:decode_limit] if decode_limit else pairs
  hypotheses = translator.translate(params, [s for s, _ in subset], decoder=decoder,
                                    split_sentences=split_sentences)
  references = [t for _, t in subset]
  if full_text_metrics:
    metrics.update(text_metrics(hypotheses, references))
  else:
    metrics["exact_match"] = exact_match(hypotheses, references)
  return metrics, hypotheses


def check_trained_workdir(workdir: str) -> None:
  """A workdir to read is the directory of a training run: it exists, and it is not a file,
  a sweep's directory, part of a run's checkpoints or an export (each named, with what to
  give). Checked at once, before slower work."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(f"workdir '{workdir}' is a file, not a directory: give the "
                          "directory that `seq2seq-jax train --workdir` wrote.")
  if not os.path.exists(workdir):
    raise CheckpointError(f"workdir '{workdir}' does not exist. Train first with "
                          f"`seq2seq-jax train --workdir {workdir}`.")
  workdir_lib.check_run_directory(workdir)


def load_trained(workdir: str, which: str = "best") -> tuple[Translator, Any, int]:
  """(translator, params, step) from a workdir: config and vocabularies come from the
  checkpoint. which: best, latest or a step number."""
  check_trained_workdir(workdir)
  checkpointer = Checkpointer(workdir, best_metric=workdir_lib.saved_best_metric(workdir),
                              read_only=True)
  try:
    step = None
    if which == "best":
      step = checkpointer.best_step()
    elif which != "latest":
      try:
        step = int(which)
      except ValueError:
        raise UserError(f"--checkpoint must be best, latest or a step number, got '{which}'.") from None
    state, meta_json, step = checkpointer.restore(step=step, fallback=which in ("best", "latest"))
  finally:
    checkpointer.close()
  where = f"checkpoint {step} of {workdir}"
  meta = workdir_lib.CheckpointMeta.from_json(meta_json, where)
  config = config_lib.from_dict(meta.config, where)
  scaler = None
  if meta.series is not None:
    from seq2seq_jax.series import Scaler
    scaler = Scaler.from_dict(meta.series)
  if meta.tokenizer == "sentencepiece":
    if meta.sentencepiece is None:
      raise CheckpointError(f"{where} has tokenizer=sentencepiece but no models; train again.")
    models = workdir_lib.sentencepiece_models(meta.sentencepiece)
    src_vocab, tgt_vocab = (Vocab.from_sentencepiece(models[side]) for side in ("src", "tgt"))
  else:
    rules = word_rules_of(meta.word_rules, where)  # saved before the field: rules 1
    src_vocab = Vocab.from_list(meta.src_vocab, meta.tokenizer, word_rules=rules)
    tgt_vocab = Vocab(meta.tgt_vocab, start_text=data_lib.KERAS_START if meta.keras else "",
                      level=meta.tokenizer, word_rules=rules)
  translator = make_translator(config, src_vocab, tgt_vocab, scaler=scaler, keras_dims=meta.keras)
  translator.data_info = meta.data
  params = translator.parallel.replicate(jax.tree.map(np.asarray, state["params"]))
  return translator, params, step
