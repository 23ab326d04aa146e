"""Writes a trained model as a portable artifact (`seq2seq-jax export`).

Its encoder, greedy and beam decoders serialised with `jax.export` (StableHLO, symbolic
batch and source length), its parameters as arrays, its vocabularies and a JSON manifest.

DIR/ holds
  manifest.json       model settings, versions, checkpoint, beam sizes, decode_max_len,
                      platforms, symbolic shapes, one entry per function
  params.npz          the parameters, flat: "encoder_lstm_0/kernel", ...
  vocab.json          tokenizer level and both vocabularies' tokens (sentencepiece: and the
                      names of the two model files)
  sentencepiece.src.model, sentencepiece.tgt.model
                      tokenizer=sentencepiece: the source and target SentencePiece models
  encoder.stablehlo   (params, src_BxS) -> (carries per layer, enc_BxSxH, mask_BxS)
  greedy.stablehlo    (params, src_BxS) -> ids_BxL
  beamK.stablehlo     (params, src_BxS) -> ids_BxL for each beam size K

Parameters are arguments, not constants baked into the modules: the encoder and every
decoder share one copy (baking would store it in each module), the modules stay a few
hundred kB whatever the model size, and XLA cannot constant-fold the weights into
something computed differently from the jitted program that `translate` runs.
exported.py reads DIR with jax and numpy alone (and sentencepiece for subword models).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import logging
import os
import platform
import re
import secrets
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from seq2seq_jax import __version__
from seq2seq_jax.config import DEFAULT_LENGTH_PENALTY
from seq2seq_jax.decode import _check_beam_model, beam_search, greedy_decode
from seq2seq_jax.errors import UserError
from seq2seq_jax.exported import (DEFAULT_PLATFORMS, FORMAT, FORMAT_VERSION, FUNCTION_SUFFIX,
                                  MANIFEST_FILE, PARAMS_FILE, VOCAB_FILE, ExportedTranslator,
                                  flatten_params, unflatten_params)
from seq2seq_jax.model import MODEL_FIELDS, Seq2Seq, with_scan_lstm
from seq2seq_jax.workdir import SENTENCEPIECE_FILES, write_atomically

log = logging.getLogger(__name__)

DEFAULT_BEAM_SIZES = (5,)
# symbolic dimensions of every function's source input (>= 1 each, jax.export's default)
SHAPE_SPEC = "b, s"


def _functions(model: Seq2Seq, max_len: int, beam_sizes: tuple[int, ...],
               length_penalty: float) -> dict[str, Callable]:
  """name -> fn(flat_params, src_BxS): the functions to export. They take the flat
  parameter dict of params.npz, so a loader passes np.load's arrays as they are."""

  def encoder(flat_params, src_BxS):
    variables = {"params": unflatten_params(flat_params)}
    carries, enc_BxSxH, mask_BxS = model.apply(variables, src_BxS, method=Seq2Seq.encode)
    return [list(carry) for carry in carries], enc_BxSxH, mask_BxS

  def greedy(flat_params, src_BxS):
    return greedy_decode(unflatten_params(flat_params), src_BxS, model=model, max_len=max_len)

  def beam(flat_params, src_BxS, *, beam_size):
    return beam_search(unflatten_params(flat_params), src_BxS, model=model, max_len=max_len,
                       beam_size=beam_size, length_penalty=length_penalty)

  functions = {"encoder": encoder, "greedy": greedy}
  for k in beam_sizes:
    functions[f"beam{k}"] = functools.partial(beam, beam_size=k)
  return functions


def _export_one(fn: Callable, flat_params: dict[str, np.ndarray],
                platforms: tuple[str, ...]) -> jax_export.Exported:
  params_spec = {key: jax.ShapeDtypeStruct(value.shape, value.dtype)
                 for key, value in flat_params.items()}
  src_spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(SHAPE_SPEC), jnp.int32)
  return jax_export.export(jax.jit(fn), platforms=platforms)(params_spec, src_spec)


def _describe(exported: jax_export.Exported) -> dict[str, Any]:
  """The shapes of one function as text: inputs past the parameters, and outputs."""
  shape = lambda aval: f"{aval.dtype}[{', '.join(str(d) for d in aval.shape)}]"
  return {"inputs": {"src_BxS": shape(exported.in_avals[-1])},
          "outputs": [shape(aval) for aval in exported.out_avals],
          "platforms": list(exported.platforms),
          "calling_convention_version": exported.calling_convention_version}


def check_exportable(translator) -> None:
  """Refuses models the artifact does not describe yet, with the reason."""
  if translator.is_series:
    raise UserError("export covers text models; this workdir holds a series model "
                    "(series:PATH), whose forecasts need its scaler: use Translator.forecast.")
  if translator.keras_dims:
    raise UserError("export does not cover keras_compat models (their space-padded "
                    "fixed-width inputs); translate them with `seq2seq-jax translate`.")


KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def check_platforms(platforms: tuple[str, ...], given: str | None = None) -> tuple[str, ...]:
  """The platforms to lower for, each once, in order; none, or an unknown one, is refused
  (given: the --platforms text the command line read)."""
  if isinstance(platforms, str):
    raise TypeError(f"platforms: a tuple of names, e.g. ('cpu',), got the str {platforms!r}.")
  known = tuple(dict.fromkeys(platforms))
  unknown = [p for p in known if p not in KNOWN_PLATFORMS]
  if not known or unknown:
    names = f"{', '.join(KNOWN_PLATFORMS[:-1])} and {KNOWN_PLATFORMS[-1]}"
    if given is not None:
      raise UserError(f"--platforms takes {names}, comma-separated; got {given!r}.")
    raise UserError(f"platforms: one or more of {names}; got {list(platforms)!r}.")
  return known


def build_artifact(translator, params, step: int, *, which: str = "best",
                   workdir: str | None = None, beam_sizes: tuple[int, ...] | None = None,
                   length_penalty: float = DEFAULT_LENGTH_PENALTY,
                   platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> ExportedTranslator:
  """The exported functions of a restored model, in memory (write_artifact saves them).

  beam_sizes None: DEFAULT_BEAM_SIZES, or none for a decoder_input=repeat model (its
  greedy output is already the best). A platform that cannot be lowered on this host is
  left out, and the manifest says why (platform_notes); so is one lowered but not run.
  """
  check_exportable(translator)
  platforms = check_platforms(platforms)
  # the scan: portable (cuDNN's custom call has no CPU lowering and needs fixed shapes)
  model = with_scan_lstm(translator.model)
  can_beam = model.config.decoder_input == "previous"
  if beam_sizes is None:
    beam_sizes = DEFAULT_BEAM_SIZES if can_beam else ()
  beam_sizes = tuple(sorted(set(beam_sizes)))
  if beam_sizes:
    _check_beam_model(model)
  if any(k < 1 for k in beam_sizes):
    raise UserError(f"beam sizes must be at least 1, got {list(beam_sizes)}.")
  flat_params = flatten_params(jax.tree.map(np.asarray, params))
  max_len = translator.decode_max_len
  functions = _functions(model, max_len, beam_sizes, length_penalty)
  notes = {}
  try:
    exported = {name: _export_one(fn, flat_params, platforms) for name, fn in functions.items()}
  except Exception as error:  # a platform this host cannot lower for: export the CPU one alone
    if "cpu" not in platforms or len(platforms) == 1:
      raise
    notes = {p: f"lowering failed on this host: {type(error).__name__}: {error}"[:500]
             for p in platforms if p != "cpu"}
    platforms = ("cpu",)
    exported = {name: _export_one(fn, flat_params, platforms) for name, fn in functions.items()}
  here = jax_export.default_export_platform()
  for lowered in platforms:
    if lowered != here:  # lowering checks the ops, not the numbers: say it was not run
      notes[lowered] = (f"lowered on a {here} host, not run on {lowered} by this export; "
                        "jax.export checks the platform when the function is called")
  config = translator.config
  manifest = {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": {"seq2seq_jax": __version__, "jax": jax.__version__,
                   "jaxlib": importlib.metadata.version("jaxlib"),
                   "numpy": np.__version__, "python": platform.python_version()},
      "checkpoint": {"workdir": os.path.abspath(workdir) if workdir else None,
                     "which": which, "step": int(step)},
      "model": {**{name: getattr(model.config, name) for name in MODEL_FIELDS},
                "src_vocab_size": model.src_vocab_size, "tgt_vocab_size": model.tgt_vocab_size},
      "settings": {"max_source_len": config.max_source_len, "max_target_len": config.max_target_len,
                   "bucket_width": config.bucket_width, "source_lowercase": config.source_lowercase,
                   "tokenizer": translator.src_vocab.level, "batch_size": config.batch_size,
                   "split_sentences": config.split_sentences},
      "decode_max_len": max_len,
      "beam_sizes": list(beam_sizes),
      "length_penalty": length_penalty,
      "platforms": list(platforms),
      "platform_notes": notes,
      "shapes": {"symbolic": SHAPE_SPEC, "batch": "b", "source_length": "s",
                 "src_BxS": "int32[b, s]", "ids_BxL": f"int32[b, {max_len}]",
                 "params": "the arrays of params.npz, a flat dict by '/'-joined path"},
      "functions": {name: {"file": f"{name}{FUNCTION_SUFFIX}", **_describe(e)}
                    for name, e in exported.items()},
      "params": {"file": PARAMS_FILE, "arrays": len(flat_params),
                 "count": int(sum(v.size for v in flat_params.values()))},
      "vocab": VOCAB_FILE,
  }
  vocab = {"tokenizer": translator.src_vocab.level, "src": translator.src_vocab.to_list(),
           "tgt": translator.tgt_vocab.to_list(), "tgt_start_text": translator.tgt_vocab.start_text}
  if translator.src_vocab.saved_word_rules is not None:
    vocab["word_rules"] = translator.src_vocab.saved_word_rules
  models = None
  if translator.src_vocab.level == "sentencepiece":
    vocab["sentencepiece"] = dict(SENTENCEPIECE_FILES)
    models = {"src": translator.src_vocab.model_proto, "tgt": translator.tgt_vocab.model_proto}
  return ExportedTranslator(manifest, vocab, flat_params, exported, models)


def _this_host() -> str:
  """This host's name as private directories carry it: no '.' (their separator)."""
  return platform.node().replace(".", "_") or "host"


def _new_private_dir(parent: str, name: str, what: str) -> str:
  """A new empty directory `.NAME.RANDOM.PID@HOST.WHAT` in parent, made here (os.mkdir
  refuses a name that exists, so it is never someone else's), with the umask's permissions."""
  while True:
    path = os.path.join(parent, f".{name}.{secrets.token_hex(4)}.{os.getpid()}@{_this_host()}."
                                f"{what}")
    try:
      os.mkdir(path)
      return path
    except FileExistsError:
      continue


def _remove_stale_private_dirs(parent: str, name: str) -> None:
  """Removes the private directories of an export to parent/name that a killed process
  left: made on this host by a process that is gone (another host's may be live)."""
  for entry in os.listdir(parent):
    if not entry.startswith(f".{name}."):
      continue
    parts = entry[len(name) + 2:].split(".")  # RANDOM, PID@HOST, WHAT
    if len(parts) != 3 or parts[2] not in ("partial", "old"):
      continue
    pid, _, host = parts[1].partition("@")
    if (host != _this_host() or not pid.isdigit() or int(pid) == os.getpid()
        or _process_exists(int(pid))):
      continue
    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    log.info("removed %s, left by an export that was killed", os.path.join(parent, entry))


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # another user's process: it exists
    return True
  return True


def _foreign_entries(directory: str) -> list[str]:
  """The entries of directory that no export writes (anything but its own plain files),
  sorted: replacing directory whole would delete them."""
  own = {MANIFEST_FILE, VOCAB_FILE, PARAMS_FILE, *SENTENCEPIECE_FILES.values()}
  return sorted(entry.name for entry in os.scandir(directory)
                if not (entry.is_file(follow_symlinks=False) and
                        (entry.name in own or _is_function_file(entry.name))))


def _is_function_file(name: str) -> bool:
  """A name an export gives a function: encoder, greedy or beamK .stablehlo (a user's
  model_v1.stablehlo is theirs)."""
  own = rf"(encoder|greedy|beam[1-9][0-9]*){re.escape(FUNCTION_SUFFIX)}"
  return re.fullmatch(own, name) is not None


def _is_export(directory: str) -> bool:
  """Whether directory holds an export: its manifest says so (a web app's manifest.json
  does not), or, without one, its params.npz and functions do."""
  try:
    if not os.path.exists(os.path.join(directory, MANIFEST_FILE)):
      return _lost_its_manifest(os.listdir(directory))
    with open(os.path.join(directory, MANIFEST_FILE), encoding="utf-8") as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError, RecursionError):
    return False


def _lost_its_manifest(entries: list[str]) -> bool:
  """Whether a folder's entries, without a manifest.json, are an export's: params.npz
  beside a function file."""
  return PARAMS_FILE in entries and any(_is_function_file(name) for name in entries)


def _check_out_dir(out: str) -> None:
  """Refuses an --out that replacing would lose something of the user's in."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out '{out}' is a file; name a directory.")
  above = os.path.dirname(os.path.abspath(out))
  while True:  # an export in an export: the outer one could no longer be replaced
    if _is_export(above):
      raise UserError(f"--out '{out}' is inside the export '{above}', which could then no "
                      "longer be replaced by the next export to it: pick an --out outside it.")
    if above == os.path.dirname(above):
      break
    above = os.path.dirname(above)
  if not os.path.isdir(out):
    return
  foreign = _foreign_entries(out)
  if foreign:
    shown = [name if name.isprintable() else repr(name) for name in foreign[:3]]
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    one = len(foreign) == 1
    raise UserError(f"--out '{out}' holds {'an entry' if one else f'{len(foreign)} entries'} "
                    f"that {'is' if one else 'are'} not an export's ({', '.join(shown)}{more}), "
                    f"which replacing it would delete: move {'it' if one else 'them'} "
                    "elsewhere, or pick another --out.")
  entries = os.listdir(out)
  # without its manifest, an export's own functions still say what it is (a damaged one,
  # replaced whole); files by those names alone (a vocab.json) may be anyone's
  if (entries and not os.path.exists(os.path.join(out, MANIFEST_FILE))
      and not _lost_its_manifest(entries)):
    raise UserError(f"--out '{out}' holds {', '.join(sorted(entries))}, not an export (neither "
                    f"its {MANIFEST_FILE} nor {PARAMS_FILE} beside its functions); delete them, or "
                    "name a new or empty directory.")


def write_artifact(artifact: ExportedTranslator, out: str) -> None:
  """DIR as the module docstring describes; written into a temporary folder beside it
  and renamed, so DIR is never half-written (an older DIR is replaced whole). The
  temporary folders are hidden ones of its own, made and removed here (or by the next
  export to DIR, where a killed process left them): a user's DIR.old or DIR.partial is
  left alone. A DIR holding anything an export does not write is refused, not replaced."""
  out = os.path.realpath(out)  # a link to DIR stays a link: DIR itself is replaced
  _check_out_dir(out)
  name = os.path.basename(out)
  try:
    _write_staged(artifact, out)
  except OSError as error:  # named by DIR, not by the hidden folders written beside it
    if isinstance(error.filename, str) and os.path.basename(error.filename).startswith(f".{name}."):
      error.filename = out
    raise


def _write_staged(artifact: ExportedTranslator, out: str) -> None:
  """write_artifact's writing: the staging folder, then the rename."""
  parent, name = os.path.split(out)
  os.makedirs(parent, exist_ok=True)
  _remove_stale_private_dirs(parent, name)
  staging = _new_private_dir(parent, name, "partial")
  try:
    for function, exported in artifact.exported.items():
      with open(os.path.join(staging, f"{function}{FUNCTION_SUFFIX}"), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(staging, PARAMS_FILE), **artifact.flat_params)
    for side, model in (artifact.sentencepiece_models or {}).items():
      write_atomically(os.path.join(staging, artifact.vocab["sentencepiece"][side]), model)
    write_atomically(os.path.join(staging, VOCAB_FILE),
                     json.dumps(artifact.vocab, ensure_ascii=False, indent=1) + "\n")
    write_atomically(os.path.join(staging, MANIFEST_FILE),
                     json.dumps(artifact.manifest, ensure_ascii=False, indent=2) + "\n")
    if os.path.isdir(out):
      _check_out_dir(out)  # again: a file put in DIR while the export was written stays
      _replace_dir(staging, out)
    else:
      os.replace(staging, out)
  finally:
    if os.path.isdir(staging):  # it failed before its rename
      shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(new: str, out: str) -> None:
  """Puts directory new in place of directory out; out's old contents are deleted only
  once new is there, and put back if it could not be."""
  retired = _new_private_dir(os.path.dirname(out), os.path.basename(out), "old")
  old = os.path.join(retired, "export")
  try:
    os.replace(out, old)
  except BaseException:
    os.rmdir(retired)
    raise
  try:
    os.replace(new, out)
  except BaseException:
    os.replace(old, out)
    os.rmdir(retired)
    raise
  shutil.rmtree(retired, ignore_errors=True)


def export_workdir(workdir: str, out: str | None, which: str = "best", **options) -> ExportedTranslator:
  """Restores workdir's checkpoint `which` and exports it (to out, when given)."""
  from seq2seq_jax.inference import load_trained
  if out:  # before the restore and the lowering, which take a while
    _check_out_dir(os.path.abspath(out))
  translator, params, step = load_trained(workdir, which)
  check_exportable(translator)
  artifact = build_artifact(translator, params, step, which=which, workdir=workdir, **options)
  if out:
    write_artifact(artifact, out)
  return artifact


def describe_artifact(artifact: ExportedTranslator, out: str) -> str:
  """What export prints: where, what and for which platforms."""
  m = artifact.manifest
  beams = ", ".join(f"beam {k}" for k in m["beam_sizes"]) or "no beam"
  lines = [f"exported checkpoint {m['checkpoint']['step']} to {out}: encoder, greedy, {beams}; "
           f"src int32[{m['shapes']['batch']}, {m['shapes']['source_length']}] -> "
           f"ids int32[{m['shapes']['batch']}, {m['decode_max_len']}]; platforms "
           f"{', '.join(m['platforms'])}; {m['params']['count']:,} parameters in {PARAMS_FILE}"]
  for name, note in m["platform_notes"].items():
    lines.append(f"{name}: {note}")
  return "\n".join(lines)
