"""Translates with an exported model (`seq2seq-jax export`'s DIR), without the training code.

It uses jax, numpy and seq2seq_jax.vocab alone (and errors.py's exception type;
sentencepiece for subword models, data/sentences.py's sentence splitting for
split_sentences ones): no Flax, Orbax or optax.

    translator = ExportedTranslator.load("exported/")
    translator.translate(["twelve", "three hundred"])          # greedy
    translator.translate(["twelve"], beam=5)                   # a beam size it was exported with

translate() batches as `seq2seq-jax translate` does (rows sorted by length, batches of
batch_size rows, widths rounded up to bucket_width), so it gives the same text.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from seq2seq_jax.errors import UserError, first_line, is_whole_number
from seq2seq_jax.vocab import PAD_ID, Vocab, check_texts, input_warnings, word_rules_of

FORMAT = "seq2seq_jax.exported"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARAMS_FILE = "params.npz"
VOCAB_FILE = "vocab.json"
FUNCTION_SUFFIX = ".stablehlo"  # one file per function: encoder.stablehlo, greedy..., beamK...
# what `seq2seq-jax export --platforms` lowers for by default, in one artifact
DEFAULT_PLATFORMS = ("cpu", "cuda")
TRANSLATE_BATCH_SIZE = 256  # `seq2seq-jax translate`'s default --batch-size


class ExportError(UserError):
  """An export directory that cannot be read (missing, damaged, a newer format)."""


class BeamNotExported(ExportError, ValueError):
  """A beam size the export holds no function for (a ValueError too, as it was before)."""


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{"a/b/kernel": array} from nested dicts of arrays."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten_params(value, path + "/"))
    else:
      flat[path] = value
  return flat


def _check_params_fit(flat_params: dict[str, np.ndarray], exported: jax_export.Exported,
                      params_path: str, function_path: str) -> None:
  """params.npz holds the arrays the function was exported with (names, shapes, dtypes):
  one from another export would fail only at the first call, deep in jax."""
  expected = [(tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals[:-1]]
  found = [(tuple(v.shape), v.dtype) for v in jax.tree.leaves(flat_params)]
  if len(found) != len(expected):
    detail = f"{len(found)} arrays where it takes {len(expected)}"
  elif exported.in_tree != jax.tree.structure(((flat_params, 0), {})):
    detail = "arrays of other names"
  elif found != expected:
    name, (shape, dtype), (want, want_dtype) = next(
        (n, f, e) for n, f, e in zip(sorted(flat_params), found, expected) if f != e)
    detail = f"'{name}' is {dtype}{list(shape)} where it takes {want_dtype}{list(want)}"
  else:
    return
  raise ExportError(f"{params_path} does not fit {function_path} ({detail}): the files come "
                    "from different exports; export again.")


def _check_function_kind(name: str, exported: jax_export.Exported, path: str) -> None:
  """A decoder (greedy, beamK) gives one int32 array of ids, batch x length; the encoder a
  tree of states, outputs and mask: a function file copied over another's loaded and
  failed at the first call, with numpy's ValueError."""
  outputs = exported.out_avals
  gives_ids = len(outputs) == 1 and outputs[0].dtype == np.int32 and len(outputs[0].shape) == 2
  if gives_ids != (name != "encoder"):
    shown = ", ".join(f"{a.dtype}{list(a.shape)}" for a in outputs[:4])
    more = f" and {len(outputs) - 4} more" if len(outputs) > 4 else ""
    raise ExportError(f"{path} is not the {name} function: it gives {shown}{more}; the files come "
                      "from different exports or were renamed; export again.")


def _check_platform(exported: jax_export.Exported, directory: str) -> None:
  """The function was lowered for this machine's platform: else jax refuses it only at
  the first call, with a ValueError that says nothing of how to fix it."""
  here = jax_export.default_export_platform()  # as jax.export names it: 'gpu' is cuda or rocm
  if here in exported.platforms:
    return
  flag = here + (f" (or {','.join(DEFAULT_PLATFORMS)})" if here in DEFAULT_PLATFORMS else "")
  raise ExportError(f"{directory} was exported for platforms {','.join(exported.platforms)}, "
                    f"not this machine's {here}: export it again with --platforms {flag}.")


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
  """The nested dicts flatten_params came from."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as error:
    raise ExportError(f"cannot read {path}: {error.strerror or error}; export again.") from None
  except ValueError as error:
    raise ExportError(f"{path} is not valid JSON ({error}); export again.") from None


@contextlib.contextmanager
def _reading(path: str):
  """Whatever goes wrong reading or parsing path, as one ExportError that names it:
  numpy, zipfile, jax's flatbuffers and sentencepiece each fail on a damaged file with
  their own exception (BadZipFile, struct.error, IndexError, RuntimeError, ...)."""
  try:
    yield
  except UserError:
    raise
  except ImportError as error:  # sentencepiece, for a subword model's files
    if error.name is None:  # an import that failed inside an installed package
      raise ExportError(f"reading {path}: {error}; reinstall seq2seq_jax's dependencies.") from None
    raise ExportError(f"reading {path} needs the {error.name} package: pip install "
                      f"{error.name}.") from None
  except OSError as error:
    raise ExportError(f"cannot read {path}: {error.strerror or error}; export again.") from None
  except Exception as error:
    reason = first_line(error, limit=200)
    kind = type(error).__name__ if type(error).__module__ == "builtins" else \
        f"{type(error).__module__}.{type(error).__name__}"  # struct.error, not error
    raise ExportError(f"{path} is damaged ({kind}"
                      f"{': ' + reason if reason else ''}); export again.") from None


def _check_vocab(vocab: Any, path: str) -> None:
  """The fields of vocab.json that ExportedTranslator reads, of the right types."""
  fine = isinstance(vocab, dict) and isinstance(vocab.get("tokenizer"), str)
  if fine and vocab["tokenizer"] == "sentencepiece":
    files = vocab.get("sentencepiece")
    fine = isinstance(files, dict) and all(isinstance(files.get(side), str)
                                           for side in ("src", "tgt"))
  elif fine:
    fine = all(isinstance(vocab.get(side), list) and all(isinstance(t, str) for t in vocab[side])
               for side in ("src", "tgt"))
  if not fine:
    raise ExportError(f"{path} is damaged (not an export's vocabularies: an object with "
                      "'tokenizer', 'src' and 'tgt'); export again.")


class ExportedTranslator:
  """An exported model: the manifest, the vocabularies, the parameters and the
  jax.export functions (encoder, greedy, beamK), each compiled once per input shape."""

  def __init__(self, manifest: dict[str, Any], vocab: dict[str, Any],
               flat_params: dict[str, np.ndarray], exported: dict[str, jax_export.Exported],
               sentencepiece_models: dict[str, bytes] | None = None):
    """sentencepiece_models: {"src", "tgt"}: the models' bytes, for tokenizer sentencepiece."""
    self.manifest = manifest
    self.vocab = vocab
    self.flat_params = flat_params
    self.exported = exported
    self.sentencepiece_models = sentencepiece_models
    level = vocab["tokenizer"]
    if level == "sentencepiece":
      self.src_vocab, self.tgt_vocab = (Vocab.from_sentencepiece(sentencepiece_models[side])
                                        for side in ("src", "tgt"))
    else:
      # an export from before the field: rules 1
      rules = word_rules_of(vocab.get("word_rules"), f"the export's {VOCAB_FILE}")
      self.src_vocab = Vocab(vocab["src"], level=level, word_rules=rules)
      self.tgt_vocab = Vocab(vocab["tgt"], start_text=vocab.get("tgt_start_text", ""),
                             level=level, word_rules=rules)
    settings = self._settings(manifest)
    self.max_source_len = settings["max_source_len"]
    self.bucket_width = settings["bucket_width"]
    self.source_lowercase = settings["source_lowercase"]
    self.decode_max_len = settings["decode_max_len"]
    self.beam_sizes = settings["beam_sizes"]
    self.split_sentences = settings["split_sentences"]
    self._params = None  # on the device at the first call
    self._calls = {name: jax.jit(e.call) for name, e in exported.items()}

  @staticmethod
  def check_exists(directory: str) -> None:
    """DIR is a directory with a manifest (checked at once, before slower work)."""
    if os.path.isfile(directory):
      raise ExportError(f"'{directory}' is a file; give the export's directory (the one "
                        f"holding {MANIFEST_FILE}).")
    if not os.path.isdir(directory):
      raise ExportError(f"export directory '{directory}' does not exist; create it with "
                        f"`seq2seq-jax export --workdir W --out {directory}`.")
    if not os.path.lexists(os.path.join(directory, MANIFEST_FILE)):
      if os.path.isdir(os.path.join(directory, "checkpoints")):
        raise ExportError(f"{directory} is a training workdir, not an export: serve it with "
                          f"--workdir {directory}, or export it first with `seq2seq-jax "
                          f"export --workdir {directory} --out DIR`.")
      raise ExportError(f"{directory} is not a seq2seq_jax export (no {MANIFEST_FILE}): create "
                        f"one with `seq2seq-jax export --workdir W --out {directory}`.")

  @classmethod
  def load(cls, directory: str) -> "ExportedTranslator":
    """Reads DIR as export.write_artifact wrote it."""
    cls.check_exists(directory)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
      raise ExportError(f"{directory} is not a seq2seq_jax export (no '{FORMAT}' manifest).")
    with _reading(manifest_path):
      version = int(manifest.get("format_version", 0))
    if version > FORMAT_VERSION:
      raise ExportError(f"{directory} was written in export format {version}, newer than "
                        f"this loader's {FORMAT_VERSION}; upgrade seq2seq_jax.")
    with _reading(manifest_path):  # every field the translator reads, before any file
      cls._settings(manifest)
      vocab_path = os.path.join(directory, manifest.get("vocab", VOCAB_FILE))
      params_path = os.path.join(directory, manifest["params"]["file"])
      function_paths = {name: os.path.join(directory, entry["file"])
                        for name, entry in manifest["functions"].items()}
      wanted = ["greedy"] + [f"beam{k}" for k in cls._settings(manifest)["beam_sizes"]]
      missing = [name for name in wanted if name not in function_paths]
      if missing:
        raise ValueError(f"no function {', '.join(missing)} in 'functions'")
    vocab = _read_json(vocab_path)
    _check_vocab(vocab, vocab_path)
    models = None
    if vocab["tokenizer"] == "sentencepiece":  # the model files vocab.json names
      models = {}
      for side in ("src", "tgt"):
        model_path = os.path.join(directory, vocab["sentencepiece"][side])
        with _reading(model_path):
          with open(model_path, "rb") as f:
            models[side] = f.read()
          Vocab.from_sentencepiece(models[side])
    with _reading(params_path):
      with np.load(params_path) as arrays:
        flat_params = {key: arrays[key] for key in arrays.files}
    exported = {}
    for name, path in function_paths.items():
      with _reading(path):
        with open(path, "rb") as f:
          exported[name] = jax_export.deserialize(bytearray(f.read()))
      _check_params_fit(flat_params, exported[name], params_path, path)
      _check_function_kind(name, exported[name], path)
      _check_platform(exported[name], directory)
    with _reading(vocab_path):  # what is left to fail building the translator: the tokens
      translator = cls(manifest, vocab, flat_params, exported, models)
    model = manifest.get("model", {})
    for side, vocabulary in (("src", translator.src_vocab), ("tgt", translator.tgt_vocab)):
      size = model.get(f"{side}_vocab_size")
      if is_whole_number(size) and len(vocabulary) != size:  # another export's vocab.json
        raise ExportError(f"{vocab_path} does not fit the model: its {side} vocabulary has "
                          f"{len(vocabulary)} tokens, the model {size}; export again.")
    return translator

  @staticmethod
  def _settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's settings the translator reads, as their types."""
    settings = manifest["settings"]
    return {"max_source_len": int(settings["max_source_len"]),
            "bucket_width": int(settings["bucket_width"]),
            "source_lowercase": bool(settings["source_lowercase"]),
            # exports older than the key translate long inputs cut, as they did
            "split_sentences": bool(settings.get("split_sentences", False)),
            "decode_max_len": int(manifest["decode_max_len"]),
            "beam_sizes": tuple(int(k) for k in manifest["beam_sizes"]),
            "platforms": tuple(str(p) for p in manifest["platforms"]),
            "step": manifest["checkpoint"]["step"]}

  @property
  def params(self) -> dict[str, jax.Array]:
    if self._params is None:
      self._params = jax.device_put(self.flat_params)
    return self._params

  @property
  def platforms(self) -> tuple[str, ...]:
    return tuple(self.manifest["platforms"])

  # -- inputs --------------------------------------------------------------------
  def _seen_as(self, texts: list[str]) -> list[str]:
    return [t.lower() for t in texts] if self.source_lowercase else list(texts)

  def encode_sources(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(src_NxS ids, PAD after each row, at most max_source_len tokens; lengths_N), as
    translate encodes: lower-cased when the model was, longer inputs cut."""
    ids = [self.src_vocab.encode(t)[:self.max_source_len] for t in self._seen_as(texts)]
    lengths_N = np.array([len(x) for x in ids], np.int32)
    src_NxS = np.full((len(ids), max(1, int(lengths_N.max(initial=0)))), PAD_ID, np.int32)
    for row, x in enumerate(ids):
      src_NxS[row, :len(x)] = x
    return src_NxS, lengths_N

  def split(self, texts: list[str]) -> tuple[list[str], list[int]]:
    """(what translate() decodes of texts, how many of them each text gives): the texts,
    or for a model trained with split_sentences each text's pieces of whole sentences that
    fit (inference.Translator's); join() puts their translations together."""
    if not self.split_sentences:
      return list(texts), [1] * len(texts)
    from seq2seq_jax.data import sentences  # pure Python; only such models need it
    fits = lambda piece: len(self.src_vocab.encode(self._seen_as([piece])[0])) <= self.max_source_len
    return sentences.flatten_pieces(texts, fits)

  def join(self, outputs: list[str], counts: list[int]) -> list[str]:
    """Each text's translation from its pieces' (split's counts)."""
    if not self.split_sentences:
      return list(outputs)
    from seq2seq_jax.data import sentences
    return sentences.join_pieces(outputs, counts)

  def input_warnings(self, texts: list[str], pieces: list[str] | None = None) -> list[str]:
    """What translate() does silently to these inputs (inference.Translator's wording);
    pieces: split(texts)'s, where the caller has them already (the server)."""
    if not self.split_sentences:
      return input_warnings(self.src_vocab, self._seen_as(texts), self.max_source_len)
    if pieces is None:
      pieces, _ = self.split(texts)
    return input_warnings(self.src_vocab, self._seen_as(pieces), self.max_source_len,
                          "input piece(s) (split into sentences and words)")

  # -- decoding -------------------------------------------------------------------
  def function_name(self, beam: int | None) -> str:
    """The exported function of a decoding: greedy (beam None) or beamK."""
    if beam is None:
      return "greedy"
    if not is_whole_number(beam):
      raise TypeError(f"beam must be a whole number or None, got {beam!r}.")
    if beam not in self.beam_sizes:
      exported = ", ".join(str(k) for k in self.beam_sizes) or "none"
      raise BeamNotExported(f"beam {beam} was not exported (beam sizes: {exported}); export "
                       "again with --beam-sizes, or decode greedily.")
    return f"beam{beam}"

  def decode_ids(self, src_BxS: np.ndarray, beam: int | None = None) -> np.ndarray:
    """ids_BxL of a batch of source ids: greedy, or beam search of `beam` beams."""
    call = self._calls[self.function_name(beam)]
    return np.asarray(call(self.params, np.asarray(src_BxS, np.int32)))

  def encode(self, src_BxS: np.ndarray):
    """The encoder's (final (h, c) per layer, outputs BxSxH, mask BxS) of source ids."""
    return jax.tree.map(np.asarray, self._calls["encoder"](self.params,
                                                           np.asarray(src_BxS, np.int32)))

  def translate(self, texts: list[str], beam: int | None = None,
                batch_size: int = TRANSLATE_BATCH_SIZE) -> list[str]:
    """Translations of texts in order, batched as `seq2seq-jax translate` batches; an
    empty text gives an empty translation (translate's empty line)."""
    check_texts(texts, batch_size)
    self.function_name(beam)  # an unknown beam size fails before any work
    if not texts:
      return []
    pieces, counts = self.split(texts)  # long texts in pieces of whole sentences, as translate
    return self.join(self._translate_whole(pieces, beam, batch_size), counts)

  def _translate_whole(self, texts: list[str], beam: int | None, batch_size: int) -> list[str]:
    """translate() of texts each decoded whole (a long one cut)."""
    # no more rows than the texts need (a power of two at least their count, as translate)
    batch_size = min(batch_size, 1 << (len(texts) - 1).bit_length())
    src_NxS, lengths_N = self.encode_sources(texts)
    order = np.argsort(lengths_N, kind="stable")
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = max(1, int(lengths_N[rows].max(initial=1)))
      if self.bucket_width:
        width = min(-(-width // self.bucket_width) * self.bucket_width, src_NxS.shape[1])
      src_BxS = np.zeros((batch_size, width), np.int32)
      src_BxS[:len(rows)] = src_NxS[rows, :width]
      for row, ids in zip(rows, self.decode_ids(src_BxS, beam)):
        outputs[row] = self.tgt_vocab.decode(ids) if texts[row].strip() else ""
    return outputs
