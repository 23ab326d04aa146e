"""The translation service (`seq2seq-jax serve`): a Starlette app on uvicorn.

Its requests are decoded together, in batches padded to fixed shapes, by one worker thread.

  POST /translate  {"text": ["...", ...], "beam": k}  ->  {"translations": [...], "warnings": [...]}
  GET  /health     {"status": "ok", ...}
  GET  /metrics    requests, sentences, batch sizes, latency percentiles, errors, compilations
                   (requests, requests_ok and errors: POST /translate's; other_errors: the rest)

How a request is decoded: the handler checks and encodes its texts and hands them to
the worker (a thread-safe queue); the event loop awaits the result and never runs a
device computation. The worker takes the first waiting request, then whatever else
arrives within max_wait_ms (up to max_batch sentences), sorts the sentences of each
decoding (greedy, beam k) by length and decodes them max_batch at a time, each batch
padded up to the next batch bucket (rows) and length bucket (tokens). Every bucket is
compiled at start-up, before the port opens, so serving compiles nothing.

serve() binds the port before the model loads (bind_sockets) but listens only once
warm-up has ended: meanwhile the port is the server's and a connection is refused.

Nothing a request says is used as a path: texts are only tokenized.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from seq2seq_jax import runtime
from seq2seq_jax.errors import UserError, first_line
from seq2seq_jax.exported import ExportedTranslator
from seq2seq_jax.runtime import CompilationCounter
from seq2seq_jax.vocab import PAD_ID, UNK_ID

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  """The limits and batching of a server (the serve command's flags)."""
  max_wait_ms: float = 5.0  # how long the first waiting request waits for others to join
  max_batch: int = 32  # sentences decoded together at most
  max_texts: int = 256  # texts in one request at most (more: 413)
  max_body_bytes: int = 1 << 20  # request body at most (more: 413)
  batch_buckets: tuple[int, ...] = ()  # () = batch_buckets_for(max_batch)
  length_buckets: tuple[int, ...] = ()  # () = length_buckets_for(the model)
  latency_window: int = 10_000  # percentiles over the latest N requests

  def __post_init__(self):
    if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:  # a longer wait overflows a queue's timeout
      raise ValueError(f"max_wait_ms must be from 0 to {MAX_WAIT_MS:.0f} (a minute), got "
                       f"{self.max_wait_ms!r}")


MAX_WAIT_MS = 60_000.0  # a batching wait of over a minute is no server's latency


def batch_buckets_for(max_batch: int) -> tuple[int, ...]:
  """1, 4, 16, ... below max_batch, and max_batch: a batch of n rows is padded to at most
  4n, and there are few programs to compile (log4 of max_batch per length bucket)."""
  buckets, size = [], 1
  while size < max_batch:
    buckets.append(size)
    size *= 4
  return tuple(buckets) + (max_batch,)


def length_buckets_for(max_source_len: int, bucket_width: int) -> tuple[int, ...]:
  """Multiples of bucket_width below max_source_len, and max_source_len (inputs are cut
  to it): the widths training and translate pad to."""
  if not bucket_width:
    return (max_source_len,)
  return tuple(range(bucket_width, max_source_len, bucket_width)) + (max_source_len,)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket that holds n (buckets sorted; n at most the last)."""
  for bucket in buckets:
    if n <= bucket:
      return bucket
  raise ValueError(f"{n} is over the largest bucket {buckets[-1]}")


class RequestError(Exception):
  """A request refused with an HTTP status and a one-line reason."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """A JSON object; a key given twice is refused (Python's json keeps the last one silently)."""
  seen = set()
  for key, _ in pairs:
    if key in seen:
      raise RequestError(400, f"the key {key!r} is given twice: give each key once")
    seen.add(key)
  return dict(pairs)


def parse_request(body: bytes, options: ServeOptions,
                  beam_sizes: tuple[int, ...]) -> tuple[list[str], int | None]:
  """(texts, beam) of a /translate body, or RequestError 400 / 413 saying what is wrong."""
  try:  # UTF-8 alone (a BOM allowed): json.loads would guess UTF-16 or UTF-32 from the bytes
    text = body.decode("utf-8-sig")
  except UnicodeDecodeError:
    raise RequestError(400, "the body is not UTF-8 text") from None
  if "\0" in text:  # never in JSON text; a UTF-16 or UTF-32 body decodes to it
    raise RequestError(400, "the body is not UTF-8 text (it holds NUL bytes: UTF-16?)")
  try:
    payload = json.loads(text, object_pairs_hook=_object_without_duplicates)
  except RecursionError:
    raise RequestError(400, "malformed JSON: nested too deeply") from None
  except ValueError as error:
    raise RequestError(400, f"malformed JSON: {error}") from None
  if not isinstance(payload, dict):
    raise RequestError(400, 'the body must be a JSON object: {"text": ["..."], "beam": k}')
  unknown = sorted(set(payload) - {"text", "beam"})
  if unknown:
    raise RequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))}: "
                       "the keys are 'text' and 'beam'")
  if "text" not in payload:
    raise RequestError(400, "missing 'text': a list of strings to translate")
  texts = payload["text"]
  if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
    raise RequestError(400, "'text' must be a list of strings")
  if len(texts) > options.max_texts:
    raise RequestError(413, f"{len(texts)} texts in one request; at most {options.max_texts}")
  beam = payload.get("beam")
  if beam is not None:
    if isinstance(beam, bool) or not isinstance(beam, int):
      raise RequestError(400, "'beam' must be a whole number (or null for greedy)")
    if beam not in beam_sizes:
      sizes = ", ".join(map(str, beam_sizes)) or "none"
      raise RequestError(400, f"beam {beam} is not served (beam sizes: {sizes}); omit "
                         "'beam' for greedy decoding")
  return texts, beam


class Metrics:
  """Counters and recent latencies, shared by the event loop and the worker."""

  def __init__(self, latency_window: int):
    self._lock = threading.Lock()
    self.started = time.time()
    self.requests = 0  # POST /translate requests received: each ends ok or as an error
    self.ok = 0
    self.sentences = 0  # texts translated
    self.batches = 0
    self.batch_sizes: collections.Counter[int] = collections.Counter()  # real rows per batch
    self.padded_shapes: collections.Counter[str] = collections.Counter()  # "BxS" run
    self.errors: collections.Counter[int] = collections.Counter()  # of requests, by HTTP status
    # the rest (unknown path, wrong method, another endpoint that raised): apart, so
    # requests == ok + errors once none is in flight
    self.other_errors: collections.Counter[int] = collections.Counter()
    self.latencies_ms: collections.deque[float] = collections.deque(maxlen=latency_window)

  def request(self) -> None:
    with self._lock:
      self.requests += 1

  def finished(self, sentences: int, latency_ms: float) -> None:
    with self._lock:
      self.ok += 1
      self.sentences += sentences
      self.latencies_ms.append(latency_ms)

  def error(self, status: int) -> None:
    """A POST /translate request refused or failed."""
    with self._lock:
      self.errors[status] += 1

  def other_error(self, status: int) -> None:
    """Any other request refused or failed."""
    with self._lock:
      self.other_errors[status] += 1

  def batch(self, rows: int, shape: tuple[int, int]) -> None:
    with self._lock:
      self.batches += 1
      self.batch_sizes[rows] += 1
      self.padded_shapes[f"{shape[0]}x{shape[1]}"] += 1

  def snapshot(self) -> dict[str, Any]:
    with self._lock:
      latencies = np.array(self.latencies_ms, np.float64)
      percentiles = ({f"p{q}": round(float(np.percentile(latencies, q)), 3) for q in (50, 90, 99)}
                     if len(latencies) else {"p50": None, "p90": None, "p99": None})
      return {"requests": self.requests, "requests_ok": self.ok, "sentences": self.sentences,
              "batches": self.batches,
              "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
              "padded_shapes": dict(sorted(self.padded_shapes.items())),
              "latency_ms": {**percentiles, "window": len(latencies)},
              "errors": {str(k): v for k, v in sorted(self.errors.items())},
              "errors_total": sum(self.errors.values()),
              "other_errors": {str(k): v for k, v in sorted(self.other_errors.items())},
              "uptime_s": round(time.time() - self.started, 3)}


def _settle(future: concurrent.futures.Future, result: Any = None,
            error: BaseException | None = None) -> None:
  """Completes future unless it is done already (its request gone: the client left)."""
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except concurrent.futures.InvalidStateError:
    pass


@dataclasses.dataclass
class _Job:
  """One request's sentences waiting for the worker; outputs fill in as batches finish."""
  src_rows: list[np.ndarray]  # source ids per sentence (empty: nothing to decode)
  beam: int | None
  future: concurrent.futures.Future
  outputs: list[str | None]
  left: int


def _reachable(buckets, limit: int, what: str, limit_name: str) -> tuple[int, ...]:
  """The buckets a request can fall in: those up to the first that holds limit. A larger
  one is never used (no batch exceeds --max-batch, inputs are cut at max_source_len) and
  would only be compiled at warm-up: left out, with a warning."""
  buckets = sorted(set(buckets))
  first_full = next((i for i, b in enumerate(buckets) if b >= limit), len(buckets) - 1)
  unused = buckets[first_full + 1:]
  if unused:
    log.warning("warning: %s bucket(s) %s above %s=%d are never used: left out", what,
                ",".join(map(str, unused)), limit_name, limit)
  return tuple(buckets[:first_full + 1])


class BatchWorker:
  """The one thread that runs device computations: warm-up, then batches of requests."""

  def __init__(self, translator: ExportedTranslator, options: ServeOptions, metrics: Metrics):
    self.translator = translator
    self.options = options
    self.metrics = metrics
    self.batch_buckets = _reachable(options.batch_buckets or batch_buckets_for(options.max_batch),
                                    options.max_batch, "batch", "--max-batch")
    self.length_buckets = _reachable(options.length_buckets or length_buckets_for(
        translator.max_source_len, translator.bucket_width), translator.max_source_len,
        "length", "the model's max_source_len")
    if self.batch_buckets[-1] < options.max_batch:
      raise ValueError(f"the largest batch bucket {self.batch_buckets[-1]} is below "
                       f"max_batch={options.max_batch}")
    if self.length_buckets[-1] < translator.max_source_len:
      raise ValueError(f"the largest length bucket {self.length_buckets[-1]} is below "
                       f"max_source_len={translator.max_source_len}")
    self.decodings: tuple[int | None, ...] = (None, *translator.beam_sizes)
    self._queue: queue.Queue[_Job] = queue.Queue()
    self._stop = threading.Event()
    self.ready = threading.Event()
    self.failed: BaseException | None = None
    self.compilations = CompilationCounter()
    self.warmup_compilations = 0
    self.warmup_programs = 0
    self.warmup_seconds = 0.0
    self.warming_up = ""  # the program warm-up is on: "greedy, 16 x 80"
    self._thread = threading.Thread(target=self._run, name="seq2seq-jax-decoder", daemon=True)

  # -- the event loop's side --------------------------------------------------------
  def start(self) -> None:
    """Starts the thread and its warm-up (once: serve() starts it before uvicorn runs)."""
    if self._thread.ident is not None:
      return
    self.compilations.__enter__()
    self._counting = True
    self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Stops the thread, waiting up to timeout for it (the first call only)."""
    stopped_before = self._stop.is_set()
    self._stop.set()
    if self._thread.is_alive() and not stopped_before:
      self._thread.join(timeout)
    if getattr(self, "_counting", False):
      self.compilations.__exit__(None, None, None)
      self._counting = False
    while True:  # nothing is decoded any more: whoever still waits is told so
      try:
        job = self._queue.get_nowait()
      except queue.Empty:
        break
      _settle(job.future, error=RuntimeError("the server is shutting down"))

  @property
  def alive(self) -> bool:
    return self._thread.is_alive() and self.failed is None

  def submit(self, src_rows: list[np.ndarray], beam: int | None,
             skip: list[bool] | None = None) -> concurrent.futures.Future:
    """A future of the translations of these source rows (thread-safe); rows where skip
    is True are not decoded and read as "" (translate's line for an empty text)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    outputs: list[str | None] = ["" if skip and skip[i] else None for i in range(len(src_rows))]
    left = sum(output is None for output in outputs)
    job = _Job(src_rows, beam, future, outputs, left)
    if not left:  # only empty texts: translate's empty lines, no decoding
      future.set_result(outputs)
    else:
      self._queue.put(job)
    return future

  def pending(self) -> int:
    return self._queue.qsize()

  # -- the worker thread -------------------------------------------------------------
  def _run(self) -> None:
    try:
      self._warm_up()
    except BaseException as error:  # the server must not open; start-up reports it
      self.failed = error
      self.ready.set()
      return
    self.ready.set()
    while not self._stop.is_set():
      try:
        jobs = self._collect()
      except queue.Empty:
        continue
      try:
        self._decode_jobs(jobs)
      except Exception as error:  # never seen; the failed requests get 500, serving goes on
        log.exception("decoding failed")
        for job in jobs:
          _settle(job.future, error=error)

  def _warm_up(self) -> None:
    """Runs every (decoding, batch bucket, length bucket) program once: each compiles
    now, and serving finds them all cached. A stop (stop(), or a SIGINT/SIGTERM the
    command line recorded) ends it between two programs, with KeyboardInterrupt."""
    started = time.perf_counter()
    before = self.compilations.count
    for beam in self.decodings:
      for rows in self.batch_buckets:
        for width in self.length_buckets:
          if self._stop.is_set():
            raise KeyboardInterrupt("the server is stopping")
          runtime.raise_if_stopped()
          self.warming_up = f"{'greedy' if beam is None else f'beam {beam}'}, {rows} x {width}"
          self.translator.decode_ids(np.full((rows, width), UNK_ID, np.int32), beam)
          self.warmup_programs += 1
    self.warmup_compilations = self.compilations.count - before
    self.warmup_seconds = time.perf_counter() - started

  def _collect(self) -> list[_Job]:
    """The first waiting job and those arriving within max_wait_ms of it, up to
    max_batch sentences (raises queue.Empty after 0.1 s without any, to look at stop)."""
    jobs = [self._queue.get(timeout=0.1)]
    sentences = jobs[0].left
    deadline = time.monotonic() + self.options.max_wait_ms / 1000
    while sentences < self.options.max_batch:
      remaining = deadline - time.monotonic()
      try:
        job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      except Exception as error:  # never seen: the jobs taken get 500, not a hang
        log.exception("collecting requests failed")
        for taken in jobs:
          _settle(taken.future, error=error)
        raise queue.Empty from None
      jobs.append(job)
      sentences += job.left
    return jobs

  def _decode_jobs(self, jobs: list[_Job]) -> None:
    """Decodes the jobs' sentences, per decoding, shortest first, max_batch at a time."""
    by_beam: dict[int | None, list[tuple[_Job, int]]] = collections.defaultdict(list)
    for job in jobs:
      by_beam[job.beam].extend((job, i) for i, out in enumerate(job.outputs) if out is None)
    for beam, entries in by_beam.items():
      entries.sort(key=lambda entry: len(entry[0].src_rows[entry[1]]))
      for start in range(0, len(entries), self.options.max_batch):
        chunk = entries[start:start + self.options.max_batch]
        try:
          texts = self._decode_batch([job.src_rows[i] for job, i in chunk], beam)
        except Exception as error:
          log.exception("decoding a batch failed")
          for job, _ in chunk:
            _settle(job.future, error=error)
          continue
        for (job, i), text in zip(chunk, texts):
          job.outputs[i] = text
          job.left -= 1
          if job.left == 0:
            _settle(job.future, job.outputs)

  def _decode_batch(self, rows: list[np.ndarray], beam: int | None) -> list[str]:
    """Translations of source rows, decoded as one batch padded to its buckets."""
    batch = bucket_for(len(rows), self.batch_buckets)
    width = bucket_for(max(len(row) for row in rows), self.length_buckets)
    src_BxS = np.full((batch, width), PAD_ID, np.int32)
    for r, row in enumerate(rows):
      src_BxS[r, :len(row)] = row
    ids_BxL = self.translator.decode_ids(src_BxS, beam)
    self.metrics.batch(len(rows), (batch, width))
    return [self.translator.tgt_vocab.decode(ids) for ids in ids_BxL[:len(rows)]]

  def describe(self) -> dict[str, Any]:
    return {"total": self.compilations.count, "warmup": self.warmup_compilations,
            "after_warmup": self.compilations.count - self.warmup_compilations,
            "warmup_programs": self.warmup_programs,
            "warmup_s": round(self.warmup_seconds, 3)}


async def _read_body(request, limit: int) -> bytes:
  """The body, or 413 as soon as it is known to exceed limit (from Content-Length, or
  while streaming one that did not say)."""
  declared = request.headers.get("content-length")
  if declared is not None:
    try:
      if int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes; at most {limit}")
    except ValueError:
      raise RequestError(400, "Content-Length is not a number") from None
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise RequestError(413, f"the body is over {limit} bytes")
    chunks.append(chunk)
  return b"".join(chunks)


def _prepare(translator: ExportedTranslator, texts: list[str]):
  """(warnings, pieces, counts, source rows) of a request's texts: what translate warns,
  what it decodes (each text, or a split_sentences model's pieces of it), as ids."""
  pieces, counts = translator.split(texts)
  warnings = translator.input_warnings(texts, pieces)  # the pieces split once
  src_NxS, lengths_N = translator.encode_sources(pieces) if pieces else (None, [])
  return warnings, pieces, counts, [src_NxS[i, :n] for i, n in enumerate(lengths_N)]


def create_app(translator: ExportedTranslator, options: ServeOptions = ServeOptions(),
               about: dict[str, Any] | None = None):
  """The Starlette app; its lifespan starts the worker and warms every bucket before
  the server accepts a connection, and stops the worker at shutdown."""
  import contextlib
  from starlette.applications import Starlette
  from starlette.exceptions import HTTPException
  from starlette.requests import ClientDisconnect
  from starlette.responses import JSONResponse
  from starlette.routing import Route

  metrics = Metrics(options.latency_window)
  worker = BatchWorker(translator, options, metrics)
  about = dict(about or {})

  def error_response(status: int, message: str, translating: bool = True) -> JSONResponse:
    """translating: an answer to POST /translate (metrics.requests counted it)."""
    (metrics.error if translating else metrics.other_error)(status)
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status)

  async def translate(request):
    started = time.perf_counter()
    metrics.request()
    try:
      body = await _read_body(request, options.max_body_bytes)
      texts, beam = parse_request(body, options, translator.beam_sizes)
      # the text work (up to --max-body-bytes of it) in a thread: the event loop goes on
      # answering other requests, /health and /metrics meanwhile
      warnings, pieces, counts, rows = await asyncio.to_thread(_prepare, translator, texts)
      if not worker.alive:
        raise RequestError(503, "the decoder is not running")
      # an empty text is not decoded: its translation is empty, as translate's line
      future = worker.submit(rows, beam, skip=[not piece.strip() for piece in pieces])
      translations = translator.join(await asyncio.wrap_future(future), counts)
    except RequestError as error:
      return error_response(error.status, str(error))
    except ClientDisconnect:  # the client left before its body was whole: not our error
      return error_response(499, "the client closed the connection before its body was sent")
    except Exception as error:  # a bug, not the client's fault: say so and keep serving
      log.exception("request failed")
      return error_response(500, f"internal error: {type(error).__name__}: {error}")
    metrics.finished(len(texts), (time.perf_counter() - started) * 1000)
    return JSONResponse({"translations": translations, "warnings": warnings})

  async def health(request):
    del request
    ok = worker.alive
    return JSONResponse({"status": "ok" if ok else "decoder stopped", **about,
                         "beam_sizes": list(translator.beam_sizes),
                         "platforms": list(translator.platforms)}, 200 if ok else 503)

  async def metrics_endpoint(request):
    del request
    return JSONResponse({**metrics.snapshot(), "compilations": worker.describe(),
                         "queue": worker.pending(),
                         "buckets": {"batch": list(worker.batch_buckets),
                                     "length": list(worker.length_buckets),
                                     "decodings": ["greedy" if b is None else f"beam{b}"
                                                   for b in worker.decodings]},
                         "limits": {"max_wait_ms": options.max_wait_ms,
                                    "max_batch": options.max_batch,
                                    "max_texts": options.max_texts,
                                    "max_body_bytes": options.max_body_bytes}})

  async def http_error(request, error: HTTPException):
    del request
    return error_response(error.status_code, str(error.detail), translating=False)

  async def internal_error(request, error: Exception):
    del request
    return error_response(500, f"internal error: {type(error).__name__}", translating=False)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    if not worker.ready.is_set():  # serve() warms up before uvicorn runs; another server here
      worker.start()
      await asyncio.get_running_loop().run_in_executor(None, worker.ready.wait)
      if worker.failed is not None:
        worker.stop()
        raise RuntimeError(f"warm-up failed: {worker.failed}") from worker.failed
      _log_warm_up(worker)
    try:
      yield
    finally:
      worker.stop()

  app = Starlette(routes=[Route("/translate", translate, methods=["POST"]),
                          Route("/health", health, methods=["GET"]),
                          Route("/metrics", metrics_endpoint, methods=["GET"])],
                  exception_handlers={HTTPException: http_error, Exception: internal_error},
                  lifespan=lifespan)
  app.router.redirect_slashes = False  # /translate/ is an unknown path (404), not a 307
  app.state.worker = worker
  app.state.metrics = metrics
  return app


def _log_warm_up(worker: BatchWorker) -> None:
  log.info("warm-up: %d programs (%d compilations) in %.1fs",
           worker.warmup_programs, worker.warmup_compilations, worker.warmup_seconds)


def warm_up(worker: BatchWorker) -> None:
  """Starts worker and waits here for its warm-up. Waiting in the main thread, not in
  uvicorn's lifespan, is what lets a Ctrl-C stop it: the KeyboardInterrupt comes here
  (and a signal whose KeyboardInterrupt was lost is seen within 0.1 s); the worker stops
  after the program it is compiling."""
  worker.start()
  try:
    while not worker.ready.wait(0.1):
      runtime.raise_if_stopped()
  except BaseException:
    worker.stop(timeout=1.0)
    raise
  if isinstance(worker.failed, KeyboardInterrupt):  # a signal recorded, its own lost
    received = runtime.stop_signal_received()
    raise KeyboardInterrupt(*([received] if received else []))
  if worker.failed is not None:
    error = worker.failed
    reason = first_line(error)
    hint = (" (out of memory: a smaller --max-batch or --length-buckets compiles smaller "
            "programs)" if is_out_of_memory(error) else "")
    line = f"warm-up failed compiling {worker.warming_up}: " \
        f"{type(error).__name__}{': ' + reason if reason else ''}{hint}"
    raise UserError(line if line.endswith(".") else line + ".")
  _log_warm_up(worker)


def is_out_of_memory(error: BaseException) -> bool:
  """A host allocation that failed (MemoryError), or XLA's device one: its
  XlaRuntimeError says RESOURCE_EXHAUSTED (CUDA's own error: "out of memory")."""
  text = str(error)
  return (isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text
          or "out of memory" in text.lower())


# asyncio's servers set SO_REUSEADDR where it means "past TIME_WAIT" (not on Windows)
_REUSE_ADDRESS = os.name == "posix" and sys.platform != "cygwin"


def bind_sockets(host: str, port: int) -> list[socket.socket]:
  """The server's sockets: bound, not listening, to every address host resolves to, as
  asyncio's server binds them (IPv6 sockets IPv6 only, families this machine lacks
  skipped, "" for every interface). Bound before the model loads, the port is the
  server's from then on, and a connection is refused (not left waiting) until uvicorn
  listens after warm-up. A busy port or an unknown host: a UserError, at once.

  SO_REUSEADDR (a previous run's connections in TIME_WAIT) is on for the bind and off
  while the sockets wait: Linux lets another SO_REUSEADDR socket bind a port whose sockets
  all have it and none listens. serve() turns it back on when it listens."""
  try:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
  except socket.gaierror as error:
    raise UserError(f"--host {host}: {error.strerror}; give a name or address of this "
                    "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every "
                    "interface).") from None
  sockets: list[socket.socket] = []
  try:
    for family, kind, proto, _, address in dict.fromkeys(infos):  # once each, in order
      try:
        sock = socket.socket(family, kind, proto)
      except OSError:  # e.g. IPv6 switched off here: asyncio skips it too
        continue
      sockets.append(sock)
      if _REUSE_ADDRESS:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
      try:
        sock.bind(address)
      except OSError as error:
        where = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
        raise UserError(f"cannot listen on {where}:{port}: {error.strerror}; choose another "
                        "--port, or stop what listens there.") from None
      if _REUSE_ADDRESS:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
  except BaseException:
    for sock in sockets:
      sock.close()
    raise
  if not sockets:
    raise UserError(f"--host {host}: none of its addresses can be listened on here; give "
                    "127.0.0.1 (this machine only) or 0.0.0.0 (every interface).")
  return sockets


def address_of(sock: socket.socket) -> str:
  """HOST:PORT of a bound socket ([HOST] for IPv6)."""
  host, port = sock.getsockname()[:2]
  return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def serve(translator: ExportedTranslator, sockets: list[socket.socket], options: ServeOptions,
          about: dict[str, Any] | None = None, access_log: bool = False) -> None:
  """Warms every program up, then runs the app on uvicorn, listening on sockets
  (bind_sockets'), until SIGINT / SIGTERM. Warm-up runs before uvicorn, whose signal
  handlers would only ask it to exit once warm-up had ended and it had listened."""
  import uvicorn
  app = create_app(translator, options, about)
  worker = app.state.worker
  addresses = [address_of(sock) for sock in sockets]  # uvloop detaches the sockets it takes
  where = ", ".join(addresses)

  class Server(uvicorn.Server):
    async def startup(self, sockets=None):
      await super().startup(sockets)
      if self.started:  # uvicorn says nothing when given sockets
        log.info("listening on %s (Ctrl-C to stop)",
                 ", ".join(f"http://{address}" for address in addresses))

  try:
    warm_up(worker)
    runtime.raise_if_stopped()
    config = uvicorn.Config(app, lifespan="on", access_log=access_log, log_level="info",
                            timeout_graceful_shutdown=10)
    try:  # here, not in uvicorn: uvloop's create_server(sock=) ignores a listen() that failed
      for sock in sockets:
        if _REUSE_ADDRESS:
          sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.listen(config.backlog)
    except OSError as error:
      raise UserError(f"cannot listen on {where}: {error.strerror or error}; choose another "
                      "--port, or stop what listens there.") from None
    server = Server(config)
    try:
      server.run(sockets=sockets)
    except OSError as error:
      if server.started:
        raise
      raise UserError(f"the server did not start on {where}: {error.strerror or error}.") from None
    except SystemExit:  # uvicorn's exit when its start-up failed; it has logged why
      if server.started:
        raise
      raise UserError(f"the server did not start on {where}; see the messages above.") from None
    if not server.started:
      raise UserError(f"the server did not start on {where}; see the messages above.")
  finally:  # stopped already after serving; after an interrupted warm-up, not waited for
    worker.stop(timeout=1.0)
