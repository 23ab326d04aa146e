"""The `seq2seq-jax` command: parses its subcommands' flags, sets up logging, calls the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import time

from seq2seq_jax import config as config_lib
from seq2seq_jax.errors import STARTING_INTERRUPTED, UserError, first_line

log = logging.getLogger("seq2seq_jax")
# the wall time `train` began, handed to the process it re-executes (runtime.maybe_reexec)
COMMAND_START_ENV = "SEQ2SEQ_JAX_COMMAND_START"


def _onto_devnull(fd: int) -> bool:
  """fd onto /dev/null (a closed one opened there): what is written there goes nowhere and
  fails no more, and no file opened later takes its number. False where it cannot be."""
  try:
    null = os.open(os.devnull, os.O_RDWR)
  except OSError:
    return False
  if null == fd:  # fd was closed: the lowest free number
    return True
  try:
    os.dup2(null, fd)
    return True
  except OSError:
    return False
  finally:
    os.close(null)


class _ConsoleHandler(logging.StreamHandler):
  """The command's messages on the terminal. A stream that fails (`train | head -1` closed
  the pipe, `> /dev/full`) is said once on stderr and written no more, and the command goes
  on: a run's messages go on in its train.log. (A logging.StreamHandler printed a traceback
  for every message after, hundreds in a training.)"""

  def handleError(self, record):
    error = sys.exc_info()[1]
    if not isinstance(error, OSError) or self.stream is None:
      return super().handleError(record)
    stream, self.stream = self.stream, None
    if stream is sys.stdout:  # print() and the interpreter's last flush fail no more
      with contextlib.suppress(ValueError):
        _onto_devnull(stream.fileno())
    name = "standard output" if stream is sys.stdout else getattr(stream, "name", "the log")
    with contextlib.suppress(OSError, ValueError, AttributeError):
      print(f"seq2seq-jax: warning: {name} cannot be written ({error.strerror or error}): the "
            "messages stop there (a training's go on in its workdir's train.log).",
            file=sys.stderr, flush=True)

  def emit(self, record):
    if self.stream is not None:
      super().emit(record)


@contextlib.contextmanager
def _results_on_stdout(lost: str):
  """Around the writing of a command's results (translate's translations, evaluate's
  scores, benchmark's report): a standard output that cannot take them (`> /dev/full`) is
  named, in one line, rather than the file system's generic hint; a closed pipe stays
  quiet (main: 141)."""
  try:
    yield
    sys.stdout.flush()
  except BrokenPipeError:
    raise
  except OSError as error:
    with contextlib.suppress(ValueError):  # the interpreter's last flush fails no more
      _onto_devnull(sys.stdout.fileno())
    what_to_do = ("send the output where there is room (> FILE)"
                  if error.errno in (errno.ENOSPC, errno.EDQUOT) else
                  "give the command a file or a pipe it can write (> FILE)")
    raise UserError(f"standard output cannot be written ({error.strerror or error}): {lost}; "
                    f"{what_to_do}.") from None


def configure_logging(stream) -> None:
  """The library's messages, bare, to stream; absl's and Orbax's routine ones hidden.
  Process-wide, so only the command does it (importing the library changes nothing)."""
  log.setLevel(logging.INFO)
  log.propagate = False
  if not any(getattr(h, "_seq2seq_jax", False) for h in log.handlers):
    handler = _ConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._seq2seq_jax = True
    log.addHandler(handler)
  for noisy in ("absl", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def _importing():
  """Around a command's first imports: JAX's and Orbax's compiled extensions load beneath
  them, and a signal meanwhile is only recorded, then raised once they are done
  (runtime.stop_deferred)."""
  from seq2seq_jax import runtime
  with runtime.stop_deferred():
    import jax  # noqa: F401
    import orbax.checkpoint  # noqa: F401  (checkpoint.py imports it at its first read)
    yield


def _load_config(args):
  from seq2seq_jax import config as config_lib
  # a path, or a shipped config's name; without --config the shipped default (= Config())
  path = (config_lib.resolve_config_path(args.config) if args.config
          else config_lib.shipped_config_path("default"))
  config = config_lib.load_config_file(path)
  overrides = list(args.set or [])
  if args.data:
    twice = [item for item in overrides if item.partition("=")[0].strip() == "data"]
    if twice:  # which one wins would be a guess
      raise UserError(f"--data {args.data} and --set {twice[0]} both name the data: give one.")
    overrides.append(f"data={args.data}")
  return config_lib.apply_overrides(config, overrides)


def cmd_train(args) -> int:
  from seq2seq_jax import config as config_lib
  if args.help_config:
    print(config_lib.describe_fields())
    return 0
  config = _load_config(args)
  # time_budget_minutes counts from the command's start, the re-executed process included
  started = float(os.environ.pop(COMMAND_START_ENV, "") or args.started)
  if args.from_command_line:  # allocator and CPU devices are set before JAX starts
    from seq2seq_jax.runtime import maybe_reexec
    os.environ[COMMAND_START_ENV] = repr(started)
    try:
      maybe_reexec(config.batch_size)
    finally:  # not re-executed
      os.environ.pop(COMMAND_START_ENV, None)
  with _importing():
    from seq2seq_jax.loop import train_and_evaluate
  configure_logging(sys.stdout)
  train_and_evaluate(config, args.workdir, argv=sys.argv, started=started)
  return 0


def _read_inputs(texts: list[str]) -> list[str]:
  """The sentences to translate: arguments, or one per line of standard input (no
  arguments, or `-` alone, as sacrebleu and most Unix tools read it)."""
  if "-" in texts and len(texts) > 1:
    raise UserError("'-' reads the sentences from standard input: give it alone, or the "
                    "sentences as arguments.")
  if texts and texts != ["-"]:
    for number, text in enumerate(texts, start=1):
      try:
        text.encode("utf-8")
      except UnicodeEncodeError as error:  # bytes Python could not decode: surrogate escapes
        bad = text[error.start].encode("utf-8", "surrogateescape")
        raise UserError(f"argument {number}: not UTF-8 ({bad!r}); give the text in UTF-8 "
                        "(or on standard input, re-encoded as UTF-8).") from None
    return texts
  stream = getattr(sys.stdin, "buffer", None)
  if stream is None:  # a text stream put in place of stdin (tests, embedding)
    return [line.rstrip("\r\n") for line in sys.stdin]
  from seq2seq_jax.data.sources import decode_text, text_lines
  # UTF-16 (PowerShell's `>`) or binary data named, as in a data file (was read as text);
  # a lone CR inside a line stays in it: one output per line
  return text_lines(decode_text(stream.read(), "standard input", "input"))


def _check_output_file(flag: str, path: str, keep: dict[str, str] | None = None,
                       keep_existing: dict[str, str] | None = None,
                       new_folder: bool = False) -> None:
  """A file a command writes at its end, checked before its work: a path that cannot be
  written would throw that work away. keep: {file or folder: what that is} it must not
  write, nor write in (a run's own files); keep_existing: the same, of which only what
  exists is kept (the data the command reads, a folder of files). new_folder: the
  command makes a missing folder (plot)."""
  folder = os.path.dirname(os.path.abspath(path))
  if path == "-":  # standard output carries the command's report
    raise UserError(f"{flag} -: give a file path; standard output carries the report.")
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory: give a file path.")
  if not new_folder and not os.path.isdir(folder):
    raise UserError(f"{flag} {path}: directory '{folder}' does not exist.")
  target = os.path.realpath(path)
  kept_paths = [(kept, what, True) for kept, what in (keep or {}).items()]
  kept_paths += [(kept, what, False) for kept, what in (keep_existing or {}).items()]
  for kept, what, even_new in kept_paths:
    if (os.path.lexists(kept) and (even_new or os.path.exists(target))
        and (target == os.path.realpath(kept) or target.startswith(os.path.realpath(kept) + os.sep))):
      verb = "replace" if os.path.exists(target) else "write in"
      raise UserError(f"{flag} {path} would {verb} {what} ({kept}): give another file path.")


def _length_penalty_or_default(args) -> float:
  return (config_lib.DEFAULT_LENGTH_PENALTY if args.length_penalty is None
          else args.length_penalty)


def _beam_decoder(args, translator):
  """The beam-search decoder --beam N [--length-penalty A] ask for (None: no --beam, or no
  translator to decode for: then only the flags are checked)."""
  from seq2seq_jax.decode import make_beam_decoder
  if args.length_penalty is not None and args.beam is None:
    raise UserError("--length-penalty needs --beam N.")
  if args.beam is None or translator is None:
    return None
  alpha = _length_penalty_or_default(args)
  return make_beam_decoder(translator.model, translator.decode_max_len, args.beam, alpha)


def _sampling_settings(args) -> list[str]:
  """The sampling flags given beside --sample: --temperature, --top-k, --seed."""
  return [flag for flag, value in (("--temperature", args.temperature),
                                   ("--top-k", args.top_k), ("--seed", args.seed))
          if value is not None]


def _translate_decoder(args, translator):
  """The decoder --beam / --sample ask for (None: greedy); misplaced options are errors."""
  from seq2seq_jax.decode import make_sample_decoder
  sampling_flags = _sampling_settings(args)
  if sampling_flags and not args.sample:
    raise UserError(f"{', '.join(sampling_flags)} {'need' if len(sampling_flags) > 1 else 'needs'} "
                    "--sample.")
  beam = _beam_decoder(args, translator)
  if beam is not None:
    return beam
  if args.sample:
    temperature = 1.0 if args.temperature is None else args.temperature
    return make_sample_decoder(translator.model, translator.decode_max_len, temperature,
                               args.top_k or 0,
                               args.seed or 0)
  return None


def cmd_translate(args) -> int:
  with _importing():
    from seq2seq_jax.inference import load_trained
  configure_logging(sys.stderr)  # stdout holds the translations only
  translator, params, step = load_trained(args.workdir, args.checkpoint)
  if translator.is_series:
    raise UserError(f"'{args.workdir}' holds a series model, which forecasts numbers rather "
                    "than translating text: use `seq2seq-jax evaluate --workdir ...` or "
                    "Translator.forecast from Python.")
  decoder = _translate_decoder(args, translator)
  sources = _read_inputs(args.text)
  for warning in translator.input_warnings(sources, args.split_sentences):
    log.warning("warning: %s", warning)
  outputs = translator.translate(params, sources, args.batch_size, decoder=decoder,
                                 split_sentences=args.split_sentences)
  with _results_on_stdout("the translations were not all written"):
    for output in outputs:  # one line per input line (an empty one for an empty input)
      sys.stdout.write(output + "\n")
  return 0


def cmd_evaluate(args) -> int:
  from seq2seq_jax import data as data_lib
  with _importing():
    from seq2seq_jax.inference import all_pairs, evaluate_pairs, load_trained
  from seq2seq_jax.metrics import sacrebleu_signatures
  from seq2seq_jax.workdir import write_atomically
  configure_logging(sys.stderr)
  sampling = ["--sample"] * args.sample + _sampling_settings(args)
  if sampling:
    raise UserError(f"{', '.join(sampling)} {'are' if len(sampling) > 1 else 'is'} "
                    "translate's: evaluate scores greedy or --beam N outputs (a score of drawn "
                    "outputs would change with the seed).")
  if args.hyps is not None:  # refused before the model loads and decodes
    _check_output_file("--hyps", args.hyps)
  translator, params, step = load_trained(args.workdir, args.checkpoint)
  config = translator.config
  if args.hyps is not None:  # nor over what it reads: the data, the run's own files
    from seq2seq_jax.workdir import run_entries
    _check_output_file("--hyps", args.hyps,
                       keep=dict.fromkeys(run_entries(args.workdir), "the run's own files"),
                       keep_existing=dict.fromkeys(data_lib.spec_paths(args.data or config.data),
                                                   "the data scored"))
  text_only = [flag for flag, given in (("--split all", args.split == "all"),
                                        ("--hyps", args.hyps is not None),
                                        ("--split-sentences", args.split_sentences is not None),
                                        ("--beam", args.beam is not None),
                                        ("--length-penalty", args.length_penalty is not None))
               if given]
  if translator.is_series and text_only:
    raise UserError(f"{', '.join(text_only)}: for text models; a series model's forecasts "
                    "are scored over the windows of --split train, val or test.")
  if translator.is_series:  # windows of the CSV, scaled as in training
    from seq2seq_jax.series import load_series
    _, path = data_lib.parse_spec(args.data or config.data)
    pairs = load_series(config, path, translator.scaler).get(args.split)
  elif args.split == "all":  # every pair, in file order; long ones cut as translate cuts
    pairs = all_pairs(config, args.data)
    if args.data is None:
      log.warning("warning: --split all without --data scores every pair of the run's own "
                  "data (%s), its training pairs included: not a held-out score. For an "
                  "external test file give --data; for held-out pairs, --split test.",
                  config.data)
    long = translator.count_long(pairs)
    split = config.split_sentences if args.split_sentences is None else args.split_sentences
    if long and split:
      log.info("%d of %d pairs are longer than the model's max_source_len=%d / "
               "max_target_len=%d tokens: their sources are translated sentence by sentence",
               long, len(pairs), translator.source_width, translator.decode_max_len - 1)
    elif long:
      log.warning("warning: %d of %d pairs are longer than the model's max_source_len=%d / "
                  "max_target_len=%d tokens: scored anyway, sources cut as translate cuts them",
                  long, len(pairs), translator.source_width, translator.decode_max_len - 1)
  else:
    splits = data_lib.load_splits(config, args.data)
    if args.data is None:
      data_lib.check_same_split(translator.data_info, splits, args.split, config.data, step,
                                "Pass --data to score other data on purpose.")
    if args.split_sentences is not None:  # which pairs a split holds follows the flag too
      config = dataclasses.replace(config, split_sentences=args.split_sentences)
    pairs = data_lib.drop_long(splits.get(args.split), config, args.split,
                               (translator.src_vocab, translator.tgt_vocab),
                               splits.held_out_sources())
  if not pairs:
    hint = (" To score every pair of a file of test pairs, use --split all." if args.data and
            args.split != "all" and not translator.is_series else "")
    fraction = {"val": "val_fraction", "test": "test_fraction"}.get(args.split)
    if not args.data and fraction and getattr(config, fraction) == 0:
      hint = (f" The run was trained with {fraction}=0, so it has no {args.split} split: "
              "score another split, or a file of test pairs with --data FILE --split all.")
    elif not args.data:  # too few pairs for the fraction, every one over the limits...
      others = " or ".join(s for s in ("train", "val", "test") if s != args.split)
      hint = (f" Score another split (--split {others}), or a file of pairs with --data FILE "
              "--split all.")
    raise UserError(f"split '{args.split}' of {args.data or config.data} is empty.{hint}")
  if not translator.is_series:  # as translate warns (long pairs are counted above)
    for warning in translator.input_warnings([s for s, _ in pairs], truncation=False):
      log.warning("warning: %s", warning)
  # series models have no text to decode
  decoder = _beam_decoder(args, None if translator.is_series else translator)
  # decode_limit 0: the text metrics and outputs cover every pair, in input order
  metrics, hypotheses = evaluate_pairs(translator, params, pairs, decoder=decoder,
                                       split_sentences=args.split_sentences)
  if args.hyps is not None:
    write_atomically(args.hyps, "".join(h + "\n" for h in hypotheses))
  signatures = {} if translator.is_series else sacrebleu_signatures()
  with _results_on_stdout("the scores were not all written"):
    if args.json:  # what was scored beside the scores: a sweep of evaluations stays readable
      scored = {"checkpoint": step, "split": args.split, "data": args.data or config.data}
      if not translator.is_series:
        scored["decoder"] = ({"strategy": "greedy"} if decoder is None else
                             {"strategy": "beam", "beam_size": args.beam,
                              "length_penalty": _length_penalty_or_default(args)})
      print(json.dumps(dict(metrics, pairs=len(pairs), **scored,
                            **({"signatures": signatures} if signatures else {}))))
    else:
      print(f"checkpoint {step}, {args.split} split of {args.data or config.data} "
            f"({len(pairs)} {'windows' if translator.is_series else 'pairs'})")
      for key, value in metrics.items():
        print(f"  {key:15s} {value:.4f}")
      if signatures:  # as sacrebleu names them: BLEU|nrefs:1|..., chrF2|nrefs:1|...
        print(f"  {'signatures':15s} BLEU|{signatures['bleu']}  chrF2|{signatures['chrf']}")
  return 0


def cmd_sweep(args) -> int:
  if args.tensorboard:
    _require_tensorboardx()
  if args.from_command_line:
    from seq2seq_jax.runtime import maybe_reexec
    maybe_reexec(None)  # mimalloc only: trials stack along the batch (sweep.py)
  from seq2seq_jax.config import resolve_config_path
  with _importing():
    from seq2seq_jax.sweep import load_sweep, run_sweep, work
  configure_logging(sys.stdout)  # before the declaration, whose warnings it prints
  sweep = load_sweep(resolve_config_path(args.config), args.set or [])
  if args.worker:  # one of --workers N, or a worker joining from another machine
    os.environ.setdefault("SEQ2SEQ_JAX_SWEEP_JOINED", "1")  # its own sampler seed
    work(sweep, args.workdir, vectorize=args.vectorize, tensorboard=args.tensorboard,
         argv=sys.argv, storage=args.storage)
    return 0
  # the workers run this command again with --worker (and the same settings)
  run_sweep(sweep, args.workdir, vectorize=args.vectorize, tensorboard=args.tensorboard,
            argv=sys.argv, workers=args.workers, storage=args.storage,
            worker_argv=argv_of_command(args) + ["--worker"])
  return 0


def argv_of_command(args) -> list[str]:
  """The sweep command's own arguments, to start its workers with."""
  items = ["sweep", "--config", args.config, "--workdir", args.workdir]
  for item in args.set or []:
    items += ["--set", item]
  if args.vectorize is not None:
    items.append("--vectorize" if args.vectorize else "--no-vectorize")
  if args.tensorboard:
    items.append("--tensorboard")
  if args.storage:
    items += ["--storage", args.storage]
  return items


def _require_tensorboardx() -> None:
  from seq2seq_jax.tracking import require_tensorboardx
  require_tensorboardx("--tensorboard needs")


def cmd_plot(args) -> int:
  from seq2seq_jax import tracking
  from seq2seq_jax.workdir import run_entries
  if args.tensorboard:
    _require_tensorboardx()
  if args.out:  # not into the run's own files (its checkpoints, its logs)
    _check_output_file("--out", tracking.curves_path(args.workdir, args.out),
                       keep={path: "the run's own files" for path in run_entries(args.workdir)
                             if os.path.basename(path) != tracking.CURVES_PNG},
                       new_folder=True)
  print(tracking.plot_workdir(args.workdir, args.out))
  if args.tensorboard:
    print("\n".join(tracking.export_tensorboard(args.workdir)))
  return 0


def cmd_import_keras(args) -> int:
  with _importing():
    from seq2seq_jax.keras_import import import_keras
  configure_logging(sys.stderr)
  import_keras(args.model, args.data, args.num_samples, args.workdir)
  print(f"imported {args.model} into {args.workdir}; translate with: "
        f"seq2seq-jax translate --workdir {args.workdir}")
  return 0


def cmd_benchmark(args) -> int:
  from seq2seq_jax.bench.harness import PEERS, run_benchmark
  from seq2seq_jax.bench.report import format_report
  from seq2seq_jax.workdir import write_atomically
  peers = tuple(p for p in args.peers.split(",") if p and p != "none")
  unknown = sorted(set(peers) - set(PEERS))
  if unknown:
    raise UserError(f"--peers: unknown peer(s) {', '.join(unknown)}; choose from "
                    f"{','.join(PEERS)} or none.")
  if args.output:
    _check_output_file("--output", args.output)

  def say(message: str) -> None:  # progress: a stderr that fails stops it, not the run
    with contextlib.suppress(OSError, ValueError):
      print(f"benchmark: {message}", file=sys.stderr, flush=True)

  batches = {name: None if text is None else _int_list(text, flag)
             for name, text, flag in (("big_batches", args.batches, "--batches"),
                                      ("decode_batches", args.decode_batches, "--decode-batches"))}
  if batches["decode_batches"] == ():  # the report's decoding rows compare these
    raise UserError("--decode-batches takes at least one batch size (e.g. 1,64): decoding "
                    "is measured at each; leave it out for the default.")
  report = run_benchmark(rounds=args.rounds, peers=peers, quick=args.quick,
                         allocator=args.allocator, data=args.data, progress=say, **batches)
  text = json.dumps(report, indent=2)
  written = False
  try:  # the file first: a standard output that fails loses nothing then
    if args.output:
      write_atomically(args.output, text + "\n")
      written = True
  finally:  # printed also where --output failed
    with _results_on_stdout("the report was not all written" + (
        f" (--output {args.output} has it)" if written else "")):
      print(text if args.json else format_report(report))
  return 0


def _int_list(text: str | None, flag: str) -> tuple[int, ...]:
  """1,4,16 -> (1, 4, 16); none, or the flag not given (None) -> (); an empty value (an
  unset shell variable) is refused."""
  if text is None or text.strip().lower() == "none":
    return ()
  try:
    values = tuple(int(part) for part in text.split(","))
  except ValueError:
    values = ()
  if not values or any(v <= 0 for v in values):
    raise UserError(f"{flag} takes positive whole numbers separated by commas (e.g. 1,4,16), "
                    f"got '{text}'.")
  return values


def _export_beam_sizes(args) -> tuple[int, ...] | None:
  """--beam-sizes of export and serve --workdir (None: the default beams); a length
  penalty with no beam to apply it to is refused, as translate's without --beam is."""
  beam_sizes = None if args.beam_sizes is None else _int_list(args.beam_sizes, "--beam-sizes")
  if beam_sizes == () and args.length_penalty is not None:
    raise UserError("--length-penalty applies to beam search, and --beam-sizes none exports "
                    "no beam: give beam sizes, or leave --length-penalty out.")
  return beam_sizes


def cmd_export(args) -> int:
  with _importing():
    from seq2seq_jax.export import check_platforms, describe_artifact, export_workdir
  configure_logging(sys.stderr)
  beam_sizes = _export_beam_sizes(args)
  platforms = check_platforms(tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
                              args.platforms)
  artifact = export_workdir(args.workdir, args.out, args.checkpoint, beam_sizes=beam_sizes,
                            length_penalty=_length_penalty_or_default(args), platforms=platforms)
  print(describe_artifact(artifact, args.out))
  return 0


def cmd_serve(args) -> int:
  with _importing():
    from seq2seq_jax.serve import MAX_WAIT_MS, ServeOptions, bind_sockets
  if args.max_wait_ms > MAX_WAIT_MS:  # a longer wait overflows a queue's timeout
    raise UserError(f"--max-wait-ms {args.max_wait_ms:g}: at most {MAX_WAIT_MS:.0f} (a minute).")
  options = ServeOptions(max_wait_ms=args.max_wait_ms, max_batch=args.max_batch,
                         max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         batch_buckets=_int_list(args.batch_buckets, "--batch-buckets"),
                         length_buckets=_int_list(args.length_buckets, "--length-buckets"))
  if options.batch_buckets and max(options.batch_buckets) < options.max_batch:
    raise UserError(f"--batch-buckets must reach --max-batch={options.max_batch}.")
  if args.exported:
    if args.beam_sizes is not None or args.length_penalty is not None or args.checkpoint:
      raise UserError("--beam-sizes, --length-penalty and --checkpoint are export settings: "
                      "give them to `seq2seq-jax export`, or serve --workdir.")
    beam_sizes = None
    from seq2seq_jax.exported import ExportedTranslator
    ExportedTranslator.check_exists(args.exported)
  else:
    beam_sizes = _export_beam_sizes(args)
    from seq2seq_jax.inference import check_trained_workdir
    check_trained_workdir(args.workdir)
  try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError:
    raise UserError("serve needs Starlette and uvicorn: pip install 'seq2seq_jax[serve]'.") from None
  # the port is the server's from before the model loads (a busy one refused at once),
  # not taken by someone else during warm-up; it listens once warm-up has ended
  sockets = bind_sockets(args.host, args.port)
  try:
    return _serve_on(args, options, beam_sizes, sockets)
  finally:
    for sock in sockets:
      sock.close()


def _serve_on(args, options, beam_sizes, sockets) -> int:
  """cmd_serve once its flags are checked and its sockets bound: load the model, warm up,
  serve."""
  from seq2seq_jax.serve import address_of, serve
  configure_logging(sys.stderr)
  if args.exported:
    from seq2seq_jax.exported import ExportedTranslator
    translator = ExportedTranslator.load(args.exported)
    where = f"export {args.exported}"
  else:
    from jax import export as jax_export
    from seq2seq_jax.export import export_workdir
    translator = export_workdir(  # in memory: the same functions an export writes
        args.workdir, None, args.checkpoint or "best", beam_sizes=beam_sizes,
        length_penalty=_length_penalty_or_default(args),
        platforms=(jax_export.default_export_platform(),))
    where = f"workdir {args.workdir}"
  if options.length_buckets and max(options.length_buckets) < translator.max_source_len:
    raise UserError(f"--length-buckets must reach the model's max_source_len="
                    f"{translator.max_source_len} (longer inputs are cut to it).")
  if args.host not in ("127.0.0.1", "localhost", "::1"):
    log.warning("warning: listening on %s, not only on this machine's loopback",
                args.host or "every interface")
  step = translator.manifest["checkpoint"]["step"]
  log.info("serving checkpoint %s of %s on http://%s (beam sizes: %s); warming up",
           step, where, address_of(sockets[0]), ", ".join(map(str, translator.beam_sizes)) or "none")
  about = {"checkpoint": step, "source": where}
  from seq2seq_jax import runtime
  runtime.raise_if_stopped()  # a signal while the model loaded, whose KeyboardInterrupt was lost
  serve(translator, sockets, options, about, access_log=args.access_log)
  return 0


def cmd_data(args) -> int:
  """`data download SPEC`: fetch what a data spec reads (today: libreoffice:LANG)."""
  from seq2seq_jax.data import libreoffice, parse_spec
  try:
    kind, arg = parse_spec(args.spec)
  except UserError:  # its list of every data spec: only one of them is downloaded
    raise UserError(f"`data download` fetches libreoffice:LANG packages (e.g. libreoffice:fr); "
                    f"'{args.spec}' is not one.") from None
  if kind != "libreoffice":
    raise UserError(f"`data download` fetches libreoffice:LANG packages; {args.spec} needs no "
                    "download (numbers and the tasks are embedded, files are yours to give).")
  lang, _, directory = arg.partition(":")
  configure_logging(sys.stderr)  # its warnings: a damaged package fetched again
  directory, files = libreoffice.download(lang, args.dir or directory or None)
  for file in files:
    print(f"{file}  ({libreoffice.deb_version(file)})")
  where = "" if directory == os.path.abspath(libreoffice.cache_dir()) else f":{directory}"
  print(f"ready: train with --data libreoffice:{lang}{where}")
  return 0


def _whole_number(low: float, high: float, what: str):
  """An argparse type: an int from low to high, else "must be WHAT, got 'TEXT'"."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or not low <= value <= high:
      raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'")
    return value
  return parse


_positive_int = _whole_number(1, math.inf, "a positive whole number")
# translate --seed: a seed as the config's and decode.make_sample_decoder's (it said
# -2**63 to 2**63 - 1 here, and a negative one was then refused by the decoder)
_seed = _whole_number(*config_lib.SEED_RANGE, config_lib.seed_range_text())
_port = _whole_number(0, 65535, "a TCP port, 0 to 65535")


def _finite_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
  return value


def _non_negative_float(text: str) -> float:
  value = _finite_float(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must not be negative, got '{text}'")
  return value


def _decoding_value(check):
  """An argparse type: a finite number that `check` (config.check_length_penalty,
  check_temperature) accepts, refused in its words otherwise."""

  def parse(text: str) -> float:
    value = _finite_float(text)
    try:
      return check(value)
    except UserError as error:
      raise argparse.ArgumentTypeError(str(error).removesuffix(".")) from None

  return parse


_length_penalty = _decoding_value(config_lib.check_length_penalty)
_temperature = _decoding_value(config_lib.check_temperature)


SPLIT_SENTENCES_HELP = ("translate an input longer than the model reads (max_source_len) in "
                        "pieces of whole sentences, joined by spaces, instead of cutting it "
                        "(default: the run's split_sentences setting)")


def _path(text: str) -> str:
  """A path argument: an empty one (an unset shell variable, say) would name no file."""
  if not text.strip():
    raise argparse.ArgumentTypeError("must name a path, got an empty one")
  return text


class _OneLineParser(argparse.ArgumentParser):
  """A usage error in one line, as every other error: the problem, and where the usage is
  (argparse printed the usage, lines of it, above the error)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# what lowers a command's memory, for its out-of-memory error (each names its own flags)
_MEMORY_HINTS = {
    "train": "lower batch_size (--set batch_size=N) or the model's size",
    "sweep": "lower batch_size (--set batch_size=N), group_size, or the model's size",
    "translate": "lower --batch-size",
    "serve": "lower --max-batch, or give fewer --length-buckets",
    None: "free memory, or run it on a machine with more",
}


def build_parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(
      prog="seq2seq-jax",
      description="LSTM encoder-decoder sequence-to-sequence learning in JAX/Flax.")
  sub = parser.add_subparsers(dest="command", required=True)
  parser.commands = sub.choices  # {name: its parser}: main's errors name the command

  shipped = config_lib.shipped_config_names()
  train = sub.add_parser("train", help="train (or resume) a model in a workdir")
  train.add_argument("--config", type=_path,
                     help="Python config file with get_config(), or a shipped config's name: "
                     f"{', '.join(n for n in shipped if not n.startswith('sweep'))} "
                     "(default: default)")
  train.add_argument("--workdir", type=_path, default="runs/default",
                     help="where checkpoints, metrics and logs go (default: runs/default)")
  train.add_argument("--data", help="data spec: numbers:LANG, anki:PATH, tsv:PATH, gettext:PATH, "
                     "libreoffice:LANG[:DIR], series:PATH "
                     "or a task (addition, echo, reverse)")
  train.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config value; repeatable")
  train.add_argument("--help-config", action="store_true", help="list every config key")
  train.set_defaults(func=cmd_train)

  translate = sub.add_parser("translate", help="translate text with a trained workdir")
  translate.add_argument("--workdir", type=_path, required=True,
                         help="a trained run's workdir (or a sweep trial's)")
  translate.add_argument("text", nargs="*", help="sentences (default, or -: one per line on "
                         "stdin)")
  translate.add_argument("--batch-size", type=_positive_int, default=256,
                         help="sentences per batch (default 256; at most the inputs' count, "
                         "rounded up to a power of two)")
  translate.add_argument("--checkpoint", default="best",
                         help="best (default), latest, or a step number")
  strategy = translate.add_mutually_exclusive_group()
  strategy.add_argument("--beam", type=_positive_int, metavar="N",
                        help="beam search with N beams per sentence (default: greedy)")
  strategy.add_argument("--sample", action="store_true",
                        help="draw each token at random from the model's distribution")
  translate.add_argument("--length-penalty", type=_length_penalty, metavar="A",
                         help="with --beam: rank by log-prob / ((5 + length) / 6) ** A "
                         "(GNMT; default 0.6; 0 = plain log-prob)")
  translate.add_argument("--temperature", type=_temperature, metavar="T",
                         help="with --sample: softmax temperature (default 1; 0 = greedy; "
                         "at most 3.4e38)")
  translate.add_argument("--top-k", type=_positive_int, metavar="K",
                         help="with --sample: draw from the K most likely tokens only")
  translate.add_argument("--seed", type=_seed, metavar="S",
                         help="with --sample: random seed (default 0); same seed, same output")
  translate.add_argument("--split-sentences", action=argparse.BooleanOptionalAction,
                         default=None, help=SPLIT_SENTENCES_HELP)
  translate.set_defaults(func=cmd_translate)

  evaluate = sub.add_parser("evaluate", help="metrics of a trained workdir on a data split")
  evaluate.add_argument("--workdir", type=_path, required=True,
                        help="a trained run's workdir (or a sweep trial's)")
  evaluate.add_argument("--data", help="data spec (default: the one trained on)")
  evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                        help="the split scored (default test); all: every pair of --data in "
                        "file order, none cut off or dropped (an external test file; without "
                        "--data, the run's own data, training pairs included: warned)")
  evaluate.add_argument("--beam", type=_positive_int, metavar="N",
                        help="decode with beam search of N beams (default: greedy)")
  evaluate.add_argument("--length-penalty", type=_length_penalty, metavar="A",
                        help="with --beam: GNMT length penalty alpha (default 0.6)")
  evaluate.add_argument("--json", action="store_true",
                        help="print one JSON object: loss, token_accuracy, exact_match, cer, "
                        "chrf, bleu, pairs, checkpoint, split, data, decoder and sacrebleu's "
                        "signatures of BLEU and chrF")
  evaluate.add_argument("--hyps", type=_path, metavar="FILE",
                        help="write the decoded outputs to FILE, one per line (UTF-8), in "
                        "input order")
  evaluate.add_argument("--checkpoint", default="best",
                        help="best (default), latest, or a step number")
  evaluate.add_argument("--split-sentences", action=argparse.BooleanOptionalAction,
                        default=None, help=SPLIT_SENTENCES_HELP + "; with it --split val or "
                        "test keeps every pair of the split, long ones included")
  # translate's sampling options, named here only to refuse them in one line: scores of
  # drawn outputs would change with the seed
  evaluate.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)
  for flag in ("--temperature", "--top-k", "--seed"):
    evaluate.add_argument(flag, help=argparse.SUPPRESS)
  evaluate.set_defaults(func=cmd_evaluate)

  sweep = sub.add_parser("sweep", help="run every unfinished trial of a declared sweep")
  sweep.add_argument("--config", type=_path, required=True,
                     help="sweep file with get_config() and get_sweep(), or a shipped one's "
                     f"name: {', '.join(n for n in shipped if n.startswith('sweep'))}")
  sweep.add_argument("--workdir", type=_path, required=True,
                     help="one workdir per trial, plus results.csv, results.md and curves.png")
  sweep.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a base config value; repeatable")
  sweep.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=None,
                     help="train trials that differ only in learning_rate, rmsprop_decay, "
                     "clip_norm or dropout together under vmap (default: the sweep file's choice)")
  sweep.add_argument("--tensorboard", action="store_true",
                     help="also write each trial's metrics as TensorBoard event files")
  sweep.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="run N worker processes that share the study (default 1: this "
                     "process); another machine joins the study with --worker")
  sweep.add_argument("--storage", metavar="URL",
                     help="the Optuna study's storage: an RDB URL (sqlite:///study.db, "
                     "postgresql://...); default: WORKDIR/study.journal")
  sweep.add_argument("--worker", action="store_true",
                     help="join the study as one worker (from another machine: the same "
                     "--storage, or WORKDIR on a shared file system): train the trials it "
                     "is given until none is left")
  sweep.set_defaults(func=cmd_sweep)

  plot = sub.add_parser("plot", help="draw the learning curves of a run or a sweep to PNG")
  plot.add_argument("--workdir", type=_path, required=True, help="a run's or a sweep's workdir")
  plot.add_argument("--out", type=_path, help="the figure's path, its format by its extension (PNG "
                    "without one), or a directory to hold curves.png (default: "
                    "WORKDIR/curves.png)")
  plot.add_argument("--tensorboard", action="store_true",
                    help="also write metrics.jsonl as TensorBoard event files in WORKDIR/tensorboard/")
  plot.set_defaults(func=cmd_plot)
  import_keras = sub.add_parser(
      "import-keras", help="convert a trained Keras lstm_seq2seq model into a workdir")
  import_keras.add_argument("model", type=_path, help="the Keras model file (.keras, or Keras 2 .h5)")
  import_keras.add_argument("--data", required=True,
                            help="the data it was trained on, e.g. anki:fra.txt")
  import_keras.add_argument("--num-samples", type=_positive_int, default=10_000,
                            help="the example's num_samples (default 10000)")
  import_keras.add_argument("--workdir", type=_path, required=True,
                            help="the new workdir to write (refused if it holds checkpoints)")
  import_keras.set_defaults(func=cmd_import_keras)

  export = sub.add_parser("export", help="write a trained model as jax.export (StableHLO) "
                          "functions, its parameters and vocabularies, for exported.py or serve")
  export.add_argument("--workdir", type=_path, required=True,
                      help="a trained run's workdir (or a sweep trial's)")
  export.add_argument("--out", type=_path, required=True,
                      help="the directory to write (an older export there is replaced whole; "
                      "one holding other files is refused)")
  export.add_argument("--checkpoint", default="best",
                      help="best (default), latest, or a step number")
  export.add_argument("--beam-sizes", metavar="K,K",
                      help="beam sizes to export beside greedy (default 5; none: greedy only)")
  export.add_argument("--length-penalty", type=_length_penalty, metavar="A",
                      help="the beams' GNMT length penalty alpha (default 0.6, as translate)")
  export.add_argument("--platforms", default="cpu,cuda",  # exported.DEFAULT_PLATFORMS (no jax here)
                      help="platforms lowered into one artifact (default cpu,cuda; one that "
                      "this host cannot lower is left out and the manifest says why)")
  export.set_defaults(func=cmd_export)

  serve = sub.add_parser("serve", help="an HTTP translation server (POST /translate, GET "
                         "/health, GET /metrics) batching concurrent requests "
                         "(pip install '.[serve]')")
  model = serve.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", type=_path, help="serve this workdir's checkpoint")
  model.add_argument("--exported", type=_path, metavar="DIR", help="serve a `seq2seq-jax export` directory")
  serve.add_argument("--checkpoint", help="with --workdir: best (default), latest, or a step")
  serve.add_argument("--beam-sizes", metavar="K,K",
                     help="with --workdir: beam sizes served beside greedy (default 5; none)")
  serve.add_argument("--length-penalty", type=_length_penalty, metavar="A",
                     help="with --workdir: the beams' length penalty (default 0.6)")
  serve.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only)")
  serve.add_argument("--port", type=_port, default=8000, help="default 8000")
  serve.add_argument("--max-wait-ms", type=_non_negative_float, default=5.0, metavar="MS",
                     help="how long a request waits for others to share its batch (default 5, "
                     "at most 60000)")
  serve.add_argument("--max-batch", type=_positive_int, default=32, metavar="N",
                     help="sentences decoded together at most (default 32)")
  serve.add_argument("--max-texts", type=_positive_int, default=256, metavar="N",
                     help="texts in one request at most; more get 413 (default 256)")
  serve.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20, metavar="N",
                     help="request body size at most; more get 413 (default 1048576)")
  serve.add_argument("--batch-buckets", metavar="N,N",
                     help="batch sizes compiled at start-up (default 1, 4, 16, ... and --max-batch)")
  serve.add_argument("--length-buckets", metavar="N,N",
                     help="source widths compiled at start-up (default: multiples of the "
                     "model's bucket_width up to its max_source_len)")
  serve.add_argument("--access-log", action="store_true", help="log every request")
  serve.set_defaults(func=cmd_serve)

  data = sub.add_parser("data", help="get a data set's files: data download libreoffice:LANG")
  data_sub = data.add_subparsers(dest="action", required=True)
  data.commands = data_sub.choices
  download = data_sub.add_parser(
      "download", help="fetch LibreOffice's English and LANG help packages and LANG's UI "
      "catalogs with `apt-get download` (no root, nothing installed)")
  download.add_argument("spec", metavar="libreoffice:LANG", help="e.g. libreoffice:fr")
  download.add_argument("--dir", type=_path, help="where to put the .deb files (default: "
                        "$SEQ2SEQ_JAX_DATA/libreoffice, else $XDG_CACHE_HOME/seq2seq_jax/"
                        "libreoffice, else ~/.cache/seq2seq_jax/libreoffice); a --dir "
                        "elsewhere is then passed as libreoffice:LANG:DIR")
  download.set_defaults(func=cmd_data)

  bench = sub.add_parser("benchmark", help="time training and decoding against Keras 3 and "
                         "PyTorch on the same work, side by side (peers: pip install '.[bench]')")
  bench.add_argument("--json", action="store_true", help="print the full report as JSON")
  bench.add_argument("--output", type=_path, help="also write the JSON report to this file")
  bench.add_argument("--rounds", type=_positive_int, default=5,
                     help="alternating measurement rounds; medians are reported (default 5)")
  bench.add_argument("--peers", default="keras,torch",
                     help="comma-separated peers to run beside seq2seq_jax: keras, torch, "
                     "or none (default keras,torch; missing ones are skipped and named)")
  bench.add_argument("--allocator", choices=("mimalloc", "system"), default="mimalloc",
                     help="allocator of every worker (default mimalloc, as train uses)")
  bench.add_argument("--data", default="auto",
                     help="the real-length pairs of the epoch and decoding measurements: "
                     "numbers:fr (embedded), gettext:DIR, anki:FILE or tsv:FILE (pairs over "
                     "100 / 120 characters dropped, 4,096 + 2,048 drawn), or auto (default): "
                     "gettext:/usr/share/locale/fr/LC_MESSAGES when this machine has "
                     "enough French catalogs, else numbers:fr")
  bench.add_argument("--batches", default=None,
                     help="training batch sizes measured beside the seed shapes' batch, e.g. "
                     "256,4096 (default: 256,1024 on a CPU, 256,1024,4096 on an accelerator; "
                     "none: the seed batch only)")
  bench.add_argument("--decode-batches", default=None,
                     help="greedy-decoding batch sizes, e.g. 1,64 (default: 1,64,512,2048 on a "
                     "CPU, 1,64,256,1024,4096 on an accelerator)")
  bench.add_argument("--quick", action="store_true",
                     help="tiny shapes and data: checks that everything runs, measures nothing useful")
  bench.set_defaults(func=cmd_benchmark)
  return parser


def _standard_streams_open() -> bool:
  """A standard stream the command was started without (`<&-`, `>&-`, `2>&-`) gets
  /dev/null: its file descriptor stays taken, not handed to the next file opened (a
  checkpoint's, train.log), which XLA's messages to fd 2 would then write into; a missing
  sys.stderr sent print(file=None) into standard output. False where /dev/null cannot be
  opened."""
  for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
    if getattr(sys, name) is None:
      if not _onto_devnull(fd):
        return False
      setattr(sys, name, open(fd, mode, closefd=False))
  return True


def main(argv: list[str] | None = None) -> int:
  started = time.time()
  no_output = sys.stdout is None
  if argv is None and not _standard_streams_open():
    return 2
  if no_output:  # `>&-`: nothing to give the output to
    print("seq2seq-jax: error: standard output is closed (>&-): give the command a file, a "
          "pipe or /dev/null for its output.", file=sys.stderr)
    return 2
  try:
    args = _parse(argv)
    args.started = started
    from seq2seq_jax.checkpoint import quiet_orbax_background_errors  # the process is ours
    quiet_orbax_background_errors()
  except KeyboardInterrupt:  # Ctrl-C before the command's own handling began: one line
    print(STARTING_INTERRUPTED, file=sys.stderr)
    if argv is None:
      _exit_now(130)
    return 130
  # the `seq2seq-jax` command itself, not main([...]) inside another program: only it
  # re-executes, and only it ends the process at once when interrupted
  args.from_command_line = argv is None and sys.argv[1:2] == [args.command]
  if args.from_command_line:
    sys.unraisablehook = _drop_handled_interrupts(sys.unraisablehook)
  code = _run(args)
  if code == 130 and args.from_command_line:
    _exit_now(code)
  return code


def _parse(argv: list[str] | None) -> argparse.Namespace:
  """The command line's arguments, as its command's parser errors name them."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and args.command == "translate":  # sentences after an option: `--beam 3 one two`
    before, after = (extra[:extra.index("--")], extra[extra.index("--") + 1:]) \
        if "--" in extra else (extra, [])
    if not any(e.startswith("-") and e != "-" for e in before):
      args.text, extra = args.text + before + after, []
  if extra:  # as the command's own error, which argparse gives the top-level program
    given = list(sys.argv[1:] if argv is None else argv)
    if extra[0] in given and given.index(extra[0]) < given.index(args.command):
      parser.error(f"unrecognized arguments: {' '.join(extra)}")  # before the command
    dashed = any(e.startswith("-") and not e.startswith("--") and e != "-" for e in extra)
    hint = ("; a sentence that starts with '-' goes after --"
            if args.command == "translate" and dashed else "")
    command = parser.commands[args.command]
    command = getattr(command, "commands", {}).get(getattr(args, "action", None), command)
    command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
  return args


def _drop_handled_interrupts(previous_hook):
  """sys.unraisablehook that drops a KeyboardInterrupt Python could not raise (inside a
  callback of XLA's): the signal behind it is recorded, and the command stops on it."""
  from seq2seq_jax import runtime

  def hook(unraisable):
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and runtime.stop_signal_received():
      return
    previous_hook(unraisable)
  return hook


def _exit_now(code: int) -> None:
  """Ends an interrupted command without the interpreter's shutdown: stopped in the
  middle of an import or a compilation, XLA's and TensorStore's threads are still running
  and tearing down the interpreter under them crashed the process (exit 139 after the
  message). What was saved is on disk by now: every file is written in a `with` block
  that has closed, and a checkpoint only counts once its save has finished."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  logging.shutdown()
  os._exit(code)


def _interrupted(args: argparse.Namespace, how: str) -> int:
  saved = (" Checkpoints saved before are kept: run the same command again to resume."
           if args.command in ("train", "sweep") else "")
  print(f"seq2seq-jax {args.command}: interrupted{how}.{saved}", file=sys.stderr)
  return 130


def _run(args: argparse.Namespace) -> int:
  # SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does, with a message;
  # training's loop catches both itself and checkpoints first
  from seq2seq_jax import runtime
  previous_handlers = {}
  try:
    previous_handlers = runtime.install_stop_handlers()
    runtime.unblock_stop_signals()
    code = args.func(args)
    received = runtime.stop_signal_received()
    if received is not None:  # its KeyboardInterrupt was lost, and the command went on
      return _interrupted(args, f" by {received}")
    return code
  except UserError as error:
    print(f"seq2seq-jax {args.command}: error: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as interrupt:
    return _interrupted(args, f" by {interrupt.args[0]}" if interrupt.args else "")
  except MemoryError as error:  # e.g. --set batch_size=2000000000: NumPy's allocation
    reason = first_line(error, "MemoryError")
    print(f"seq2seq-jax {args.command}: error: out of memory ({reason}); "
          f"{_MEMORY_HINTS.get(args.command, _MEMORY_HINTS[None])}.", file=sys.stderr)
    return 2
  except BrokenPipeError:  # e.g. `seq2seq-jax translate ... | head -1`
    _onto_devnull(sys.stdout.fileno())
    return 141
  except OSError as error:  # the file system refused: full disk, read-only, not a directory
    where = f" '{error.filename}'" if error.filename else ""
    print(f"seq2seq-jax {args.command}: error: {error.strerror or error}{where}. Check that "
          "the path is right, writable, and that the disk has free space.", file=sys.stderr)
    return 2
  except Exception as error:
    loop = sys.modules.get("seq2seq_jax.loop")  # not imported here: it may be what failed
    if loop is not None and isinstance(error, loop.TrainingInterrupted):
      print(f"seq2seq-jax {args.command}: {error}", file=sys.stderr)
      return 130
    received = runtime.stop_signal_received()
    if received is not None:  # what the interrupt broke, e.g. an import it stopped halfway
      return _interrupted(args, f" by {received}")
    raise
  finally:
    runtime.restore_handlers(previous_handlers)
