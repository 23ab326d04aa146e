"""serve.py: request checks, batching into fixed buckets, and the server itself on a free
loopback port, under concurrent requests and bad input."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from seq2seq_jax.errors import UserError
from seq2seq_jax.serve import (RequestError, ServeOptions, batch_buckets_for, bind_sockets,
                               bucket_for, create_app, length_buckets_for, parse_request, serve)
from seq2seq_jax.vocab import END_ID, PAD_ID, Vocab
from tests.conftest import ROOT, cli_in_process, run_cli


def test_buckets():
  assert batch_buckets_for(32) == (1, 4, 16, 32)
  assert batch_buckets_for(64) == (1, 4, 16, 64)
  assert batch_buckets_for(1) == (1,)
  assert length_buckets_for(80, 16) == (16, 32, 48, 64, 80)
  assert length_buckets_for(40, 16) == (16, 32, 40)
  assert length_buckets_for(40, 0) == (40,)
  assert [bucket_for(n, (1, 4, 16)) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]


@pytest.mark.parametrize("body, status, reason", [
    (b"{", 400, "malformed JSON"),
    (b"\xff\xfe{", 400, "not UTF-8"),
    ('{"text": ["one"]}'.encode("utf-16"), 400, "not UTF-8"),  # json.loads alone takes it
    ('{"text": ["one"]}'.encode("utf-16-le"), 400, "not UTF-8"),
    (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
    (b"[1, 2]", 400, "JSON object"),
    (b"null", 400, "JSON object"),
    (b'"one"', 400, "JSON object"),
    (b"12", 400, "JSON object"),
    (b'{"texts": ["a"]}', 400, "unknown key"),
    (b'{"text": ["a"], "text": ["b"]}', 400, "the key 'text' is given twice"),  # not the last
    (b'{"beam": 2}', 400, "missing 'text'"),
    (b'{"text": "one"}', 400, "list of strings"),
    (b'{"text": ["one", 2]}', 400, "list of strings"),
    (b'{"text": ["one"], "beam": true}', 400, "whole number"),
    (b'{"text": ["one"], "beam": 2.0}', 400, "whole number"),
    (b'{"text": ["one"], "beam": 3}', 400, "beam 3 is not served"),
    (b'{"text": ["a", "b", "c"]}', 413, "at most 2"),
])
def test_parse_request_refuses_with_one_line(body, status, reason):
  with pytest.raises(RequestError) as refused:
    parse_request(body, ServeOptions(max_texts=2), beam_sizes=(2,))
  assert refused.value.status == status
  assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_utf8_body_may_start_with_a_byte_order_mark():
  """Some clients (.NET, PowerShell) send one; json.loads of the bytes took it before."""
  body = '{"text": ["one"], "beam": 2}'.encode("utf-8-sig")
  assert parse_request(body, ServeOptions(), beam_sizes=(2,)) == (["one"], 2)


def test_parse_request_accepts():
  options = ServeOptions(max_texts=2)
  assert parse_request(b'{"text": ["a", ""]}', options, (2,)) == (["a", ""], None)
  assert parse_request(b'{"text": [], "beam": null}', options, (2,)) == ([], None)
  assert parse_request('{"text": ["été"], "beam": 2}'.encode(), options, (2,)) == (["été"], 2)


class EchoTranslator:
  """ExportedTranslator's serving interface without a model: 'translates' a text into
  itself reversed (beam k: reversed, then k exclamation marks), with numpy alone."""

  def __init__(self):
    self.src_vocab = Vocab(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ !."))
    self.tgt_vocab = self.src_vocab
    self.max_source_len, self.bucket_width, self.decode_max_len = 12, 4, 16
    self.beam_sizes, self.platforms = (2,), ("cpu",)
    self.shapes = []

  split_sentences = False  # True: split() as a model trained with split_sentences

  def split(self, texts):
    if not self.split_sentences:
      return list(texts), [1] * len(texts)
    from seq2seq_jax.data import sentences
    fits = lambda text: len(text) <= self.max_source_len
    return sentences.flatten_pieces(texts, fits)

  def join(self, outputs, counts):
    from seq2seq_jax.data import sentences
    return sentences.join_pieces(outputs, counts)

  def input_warnings(self, texts, pieces=None):
    texts = self.split(texts)[0] if pieces is None else pieces
    too_long = sum(len(t) > self.max_source_len for t in texts)
    return [f"{too_long} input(s) longer than max_source_len=12 characters were truncated"] \
        if too_long else []

  def encode_sources(self, texts):
    ids = [self.src_vocab.encode(t)[:self.max_source_len] for t in texts]
    src_NxS = np.zeros((len(ids), max(1, max(map(len, ids)))), np.int32)
    for row, x in enumerate(ids):
      src_NxS[row, :len(x)] = x
    return src_NxS, np.array([len(x) for x in ids])

  def decode_ids(self, src_BxS, beam=None):
    self.shapes.append(src_BxS.shape)
    out_BxL = np.full((src_BxS.shape[0], self.decode_max_len), PAD_ID, np.int32)
    bang = self.src_vocab.encode("!")[0]
    for r, row in enumerate(src_BxS):
      ids = [int(i) for i in row if i != PAD_ID][::-1] + [bang] * (beam or 0) + [END_ID]
      out_BxL[r, :len(ids)] = ids
    return out_BxL


@contextlib.contextmanager
def server_thread(app):
  """The base URL of app served by uvicorn.Server in a thread on a free loopback port."""
  import uvicorn
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(),
                                         log_level="warning", lifespan="on"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.02)
  assert server.started, "the server did not start"
  try:
    yield f"http://127.0.0.1:{server.config.port}"
  finally:
    server.should_exit = True
    thread.join(30)


def test_the_app_batches_into_buckets_and_refuses_bad_input():
  translator = EchoTranslator()
  options = ServeOptions(max_wait_ms=50, max_batch=8, max_texts=10, max_body_bytes=400)
  app = create_app(translator, options)
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
    worker = app.state.worker
    # warm-up ran every (decoding, batch bucket, length bucket) once
    assert sorted(set(translator.shapes)) == sorted(
        {(b, s) for b in (1, 4, 8) for s in (4, 8, 12)})
    assert len(translator.shapes) == 2 * 9 and worker.warmup_programs == 18
    translator.shapes.clear()
    ok = client.post("/translate", json={"text": ["abc", "", "hello world", "z" * 20]})
    assert ok.status_code == 200
    assert ok.json()["translations"] == ["cba", "", "dlrow olleh", "z" * 12]
    assert "truncated" in ok.json()["warnings"][0]
    assert translator.shapes == [(4, 12)]  # three texts to decode, padded to bucket 4 x 12
    assert client.post("/translate", json={"text": ["ab"], "beam": 2}).json() == {
        "translations": ["ba!!"], "warnings": []}
    for body, status in ((b"{", 400), (b'{"text": [1]}', 400), (b'{"text": ["a"], "beam": 5}', 400),
                         (json.dumps({"text": ["a"] * 11}).encode(), 413),
                         (json.dumps({"text": ["a" * 500]}).encode(), 413)):
      refused = client.post("/translate", content=body)
      assert refused.status_code == status
      assert set(refused.json()) == {"error"} and "\n" not in refused.json()["error"]
    assert client.get("/translate").status_code == 405
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.post("/translate/", json={"text": ["a"]}).json() == {"error": "Not Found"}
    many = client.post("/translate", json={"text": ["abcdefgh"[:n] for n in range(1, 11)]})
    assert many.json()["translations"] == ["abcdefgh"[:n][::-1] for n in range(1, 11)]
    metrics = client.get("/metrics").json()
    assert metrics["errors"] == {"400": 3, "413": 2}
    assert metrics["other_errors"] == {"404": 2, "405": 1}  # a trailing / is no redirect
    assert metrics["requests"] == 8 and metrics["requests_ok"] == 3
    assert metrics["sentences"] == 4 + 1 + 10
    assert client.get("/health").json()["status"] == "ok"


def test_a_body_of_exactly_max_body_bytes_is_accepted_streamed_or_not():
  """--max-body-bytes is the largest body served: one of exactly that size sent in chunks
  without a Content-Length (as a streaming client does) was refused with 413, while the
  same body with a Content-Length was served."""
  options = ServeOptions(max_wait_ms=1, max_batch=4, max_body_bytes=100)
  with server_thread(create_app(EchoTranslator(), options)) as url, \
      httpx.Client(base_url=url, timeout=10) as client:
    for size, status in ((100, 200), (101, 413)):
      body = b'{"text": ["' + b"a" * (size - 14) + b'"]}'
      assert len(body) == size
      for content in (body, iter([body[:40], body[40:80], body[80:]])):  # streamed: chunked
        answer = client.post("/translate", content=content)
        assert answer.status_code == status, (size, answer.text)
        assert (answer.json()["translations"] == ["a" * 12] if status == 200
                else "the body is" in answer.json()["error"])


def test_a_split_sentences_model_is_served_sentence_by_sentence():
  """Its long texts are decoded in pieces of whole sentences and joined, as translate
  does; the server cut them."""
  translator = EchoTranslator()
  translator.split_sentences = True
  app = create_app(translator, ServeOptions(max_wait_ms=1, max_batch=8))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
    answer = client.post("/translate", json={"text": ["Abc def. Ghi jkl mno.", "", "ab"]})
    assert answer.json() == {"translations": [".fed cbA .onm lkj ihG", "", "ba"],
                             "warnings": []}
    assert client.get("/metrics").json()["sentences"] == 3  # texts, not their pieces


def test_metrics_errors_are_translate_requests_that_failed():
  """Other paths' 404s and 405s made errors exceed requests; they are counted apart, so
  every /translate request is either ok or an error."""
  app = create_app(EchoTranslator(), ServeOptions(max_batch=4))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
    assert client.post("/translate", json={"text": ["ab"]}).status_code == 200
    assert client.post("/translate", content=b"{").status_code == 400
    for _ in range(3):
      assert client.get("/nowhere").status_code == 404
    assert client.get("/translate").status_code == 405
    assert client.post("/metrics").status_code == 405
    metrics = client.get("/metrics").json()
  assert metrics["requests"] == 2 and metrics["requests_ok"] == 1
  assert metrics["errors"] == {"400": 1} and metrics["errors_total"] == 1
  assert metrics["requests"] == metrics["requests_ok"] + metrics["errors_total"]
  assert metrics["other_errors"] == {"404": 3, "405": 2}


def test_empty_and_blank_texts_are_answered_empty_without_decoding():
  """An empty text, or one of spaces alone, translates to "" as translate's empty line, and
  a request of nothing else is answered without waiting for the decoder."""
  translator = EchoTranslator()
  app = create_app(translator, ServeOptions(max_wait_ms=1, max_batch=4))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=5) as client:
    translator.shapes.clear()
    assert client.post("/translate", json={"text": []}).json()["translations"] == []
    assert client.post("/translate", json={"text": ["", "   "]}).json()["translations"] == ["", ""]
    assert translator.shapes == []  # nothing was decoded
    assert client.post("/translate", json={"text": [" ", "ab", ""]}).json()["translations"] == [
        "", "ba", ""]
    assert translator.shapes == [(1, 4)]  # "ab" alone


def test_a_request_over_max_batch_texts_is_decoded_shortest_first_and_answered_in_order():
  """Its sentences are sorted by length and decoded --max-batch at a time, so short ones
  share a narrow batch; the answer waits for the last batch and keeps the texts' order.
  /metrics counts the real sentences of each batch and the padded shape it ran."""
  translator = EchoTranslator()
  echo = translator.decode_ids

  def slow_decode(src_BxS, beam=None):
    time.sleep(0.2)  # a later batch still decoding while an earlier one is done
    return echo(src_BxS, beam)

  app = create_app(translator, ServeOptions(max_wait_ms=1, max_batch=8))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
    translator.shapes.clear()
    translator.decode_ids = slow_decode
    texts = ["abcdefghijkl"] + list("abcdefgh")  # one long text first, eight short ones
    answer = client.post("/translate", json={"text": texts})
    assert answer.json()["translations"] == [text[::-1] for text in texts]
    assert translator.shapes == [(8, 4), (1, 12)]
    assert client.post("/translate", json={"text": ["ab", "cd", "ef"]}).status_code == 200
    metrics = client.get("/metrics").json()
  assert metrics["batch_sizes"] == {"1": 1, "3": 1, "8": 1}  # real rows, not the bucket
  assert metrics["padded_shapes"] == {"1x12": 1, "4x4": 1, "8x4": 1}


def test_a_stopped_decoder_is_answered_503_not_left_waiting():
  """Once the decoder thread has stopped, /translate and /health say so at once."""
  app = create_app(EchoTranslator(), ServeOptions(max_wait_ms=1, max_batch=4))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=5) as client:
    app.state.worker.stop()
    refused = client.post("/translate", json={"text": ["ab"]})
    assert refused.status_code == 503
    assert refused.json() == {"error": "the decoder is not running"}
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "decoder stopped"


def test_a_decoding_that_raises_is_a_one_line_500_and_serving_goes_on():
  """A bug's exception is the server's fault (500), in one line; the next request is
  served."""
  translator = EchoTranslator()
  echo = translator.decode_ids
  failing = []

  def decode(src_BxS, beam=None):
    if failing:
      raise RuntimeError("XLA said no\nits traceback")
    return echo(src_BxS, beam)

  translator.decode_ids = decode
  app = create_app(translator, ServeOptions(max_wait_ms=1, max_batch=4))
  with server_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
    failing.append(True)
    failed = client.post("/translate", json={"text": ["ab"]})
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error: RuntimeError: XLA said no"}
    failing.clear()
    assert client.post("/translate", json={"text": ["ab"]}).json()["translations"] == ["ba"]
    metrics = client.get("/metrics").json()
  assert metrics["errors"] == {"500": 1} and metrics["requests_ok"] == 1


def test_a_content_length_over_max_body_bytes_is_refused_before_the_body_is_sent():
  """A client announcing a body over the limit gets 413 at once: the server does not wait
  for (or read) the body."""
  app = create_app(EchoTranslator(), ServeOptions(max_wait_ms=1, max_batch=4, max_body_bytes=400))
  with server_thread(app) as url:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
      client.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
      answer = client.recv(4096).decode()  # no body sent: a server reading it never answers
  assert answer.startswith("HTTP/1.1 413 ")
  assert answer.endswith('{"error":"the body is 1000000 bytes; at most 400"}')


def test_a_client_that_leaves_before_its_body_is_whole_is_not_a_server_error(caplog):
  """A client gone halfway through its body was counted a 500 and logged as a failed
  request with a traceback; it is the client's doing: 499 in /metrics (nginx's "client
  closed request"), nothing logged, and the server answers the next request."""
  import time
  app = create_app(EchoTranslator(), ServeOptions(max_wait_ms=1, max_batch=4))
  with server_thread(app) as url:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
      client.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Length: 12\r\n\r\n{\"te")
    metrics = {}
    for _ in range(100):  # the server notices the close a moment later
      metrics = httpx.get(url + "/metrics").json()
      if metrics["errors_total"]:
        break
      time.sleep(0.05)
    assert httpx.post(url + "/translate", json={"text": ["ab"]}).status_code == 200
  assert metrics["requests"] == 1 and metrics["requests_ok"] == 0
  assert metrics["errors"] == {"499": 1} and metrics["errors_total"] == 1
  assert "request failed" not in caplog.text and "Traceback" not in caplog.text


def test_metrics_latency_percentiles_are_over_the_latest_requests():
  """latency_ms: p50, p90 and p99 of the latest latency_window requests; window says how
  many. The server's window is the documented 10,000."""
  from seq2seq_jax.serve import Metrics
  metrics = Metrics(latency_window=3)
  assert metrics.snapshot()["latency_ms"] == {"p50": None, "p90": None, "p99": None, "window": 0}
  for latency_ms in (1000.0, 10.0, 20.0, 30.0):  # the first falls out of the window
    metrics.finished(1, latency_ms)
  assert metrics.snapshot()["latency_ms"] == {"p50": 20.0, "p90": 28.0, "p99": 29.8, "window": 3}
  assert ServeOptions().latency_window == 10_000


def _worker(translator, options):
  """A started BatchWorker over translator, warmed up, its warm-up's shapes forgotten."""
  from seq2seq_jax.serve import BatchWorker, Metrics
  worker = BatchWorker(translator, options, Metrics(10))
  worker.start()
  assert worker.ready.wait(30) and worker.failed is None
  translator.shapes.clear()
  return worker


def _rows(translator, texts):
  src_NxS, lengths = translator.encode_sources(texts)
  return [src_NxS[i, :n] for i, n in enumerate(lengths)]


def test_requests_arriving_within_max_wait_ms_share_a_batch_and_a_full_one_waits_for_none():
  """The worker takes the first waiting request and whatever else arrives within
  --max-wait-ms, up to --max-batch sentences: a second request soon after the first joins
  its batch, and a request that fills a batch alone is decoded at once."""
  translator = EchoTranslator()
  worker = _worker(translator, ServeOptions(max_wait_ms=30_000, max_batch=2))
  try:
    started = time.monotonic()
    full = worker.submit(_rows(translator, ["ab", "cd"]), None)
    assert full.result(timeout=60) == ["ba", "dc"]
    assert time.monotonic() - started < 15  # not the 30 s wait (a wide margin for a busy CI)
    first = worker.submit(_rows(translator, ["ab"]), None)
    time.sleep(0.3)
    second = worker.submit(_rows(translator, ["cde"]), None)
    assert first.result(timeout=10) == ["ba"] and second.result(timeout=10) == ["edc"]
    assert translator.shapes == [(2, 4), (2, 4)]  # each pair decoded together
  finally:
    worker.stop()


def test_a_failed_batch_fails_its_requests_only():
  """Requests collected together but decoded in another batch (here another decoding)
  are still answered when one batch raises."""
  translator = EchoTranslator()
  echo = translator.decode_ids

  def greedy_fails(src_BxS, beam=None):
    if beam is None:
      raise RuntimeError("greedy is broken")
    return echo(src_BxS, beam)

  worker = _worker(translator, ServeOptions(max_wait_ms=2000, max_batch=2))
  translator.decode_ids = greedy_fails
  try:
    greedy = worker.submit(_rows(translator, ["ab"]), None)
    beam = worker.submit(_rows(translator, ["ab"]), 2)
    with pytest.raises(RuntimeError, match="greedy is broken"):
      greedy.result(timeout=10)
    assert beam.result(timeout=10) == ["ba!!"]
  finally:
    worker.stop()


# --- the real server, in its own process --------------------------------------------------

def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(args: list[str], log_path: str, timeout: float = 240.0):
  """(process, base URL) of `seq2seq-jax serve ARGS` once /health answers."""
  port = _free_port()
  log = open(log_path, "w")
  process = subprocess.Popen([sys.executable, "-m", "seq2seq_jax", "serve", *args,
                              "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                             cwd=ROOT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise AssertionError(f"serve exited with {process.returncode}:\n{open(log_path).read()}")
    try:
      if httpx.get(url + "/health", timeout=2).status_code == 200:
        return process, url
    except httpx.TransportError:
      pass
    time.sleep(0.3)
  process.kill()
  raise AssertionError(f"serve did not answer within {timeout}s:\n{open(log_path).read()}")


def stop_server(process) -> int:
  process.send_signal(signal.SIGINT)
  try:
    return process.wait(timeout=30)
  except subprocess.TimeoutExpired:
    process.kill()
    return process.wait()


@pytest.fixture(scope="module")
def server(trained_workdir, tmp_path_factory):
  log_path = str(tmp_path_factory.mktemp("serve") / "serve.log")
  process, url = start_server(["--workdir", trained_workdir, "--beam-sizes", "2",
                               "--max-wait-ms", "100", "--max-batch", "16", "--max-texts", "8",
                               "--max-body-bytes", "2000"], log_path)
  yield url
  assert stop_server(process) in (0, 130), open(log_path).read()


TEXTS = ["twelve", "three hundred and forty-five", "nine", "one hundred", "", "eighty-one",
         "seven hundred and seventy-seven", "two", "forty", "five hundred and six", "sixty",
         "nine hundred and ninety-nine thousand, nine hundred and ninety-nine"]


@pytest.mark.slow
def test_concurrent_requests_are_batched_in_order(server, trained_workdir):
  expected = run_cli("translate", "--workdir", trained_workdir,
                     input_text="\n".join(TEXTS) + "\n").stdout.split("\n")[:-1]
  expected_beam = run_cli("translate", "--workdir", trained_workdir, "--beam", "2",
                          input_text="\n".join(TEXTS) + "\n").stdout.split("\n")[:-1]
  # 12 requests at once, each its own slice of TEXTS (1 to 3 texts), half of them beam 2
  requests = [(i, TEXTS[i:i + 1 + i % 3], 2 if i % 2 else None) for i in range(12)]
  with httpx.Client(base_url=server, timeout=60) as client:
    def send(request):
      _, texts, beam = request
      return client.post("/translate", json={"text": texts, "beam": beam})
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
      responses = list(pool.map(send, requests))
    for (start, texts, beam), response in zip(requests, responses):
      assert response.status_code == 200, response.text
      reference = expected_beam if beam else expected
      assert response.json()["translations"] == reference[start:start + len(texts)]
    truncated = [r for (_, texts, _), r in zip(requests, responses) if TEXTS[-1] in texts]
    assert truncated and all("truncated" in " ".join(r.json()["warnings"]) for r in truncated)
    metrics = client.get("/metrics").json()
  assert max(int(size) for size in metrics["batch_sizes"]) > 1  # requests shared a batch
  assert metrics["compilations"]["warmup"] > 0
  assert metrics["compilations"]["after_warmup"] == 0  # every shape was warmed
  assert metrics["latency_ms"]["p50"] > 0 and metrics["latency_ms"]["window"] >= 12


@pytest.mark.slow
def test_bad_input_is_refused_and_serving_goes_on(server):
  with httpx.Client(base_url=server, timeout=60) as client:
    cases = [(b"{", 400), (b'{"text": [1]}', 400), (b"null", 400),
             (b'{"text": ["one"], "beam": 4}', 400),
             (json.dumps({"text": ["one"] * 9}).encode(), 413),
             (json.dumps({"text": ["x" * 3000]}).encode(), 413)]
    for body, status in cases:
      refused = client.post("/translate", content=body,
                            headers={"content-type": "application/json"})
      assert refused.status_code == status, refused.text
      assert list(refused.json()) == ["error"]
    # a body bigger than it says, streamed without Content-Length
    streamed = client.post("/translate", content=iter([b'{"text": ["', b"y" * 2500, b'"]}']))
    assert streamed.status_code == 413
    # a path is text to translate, never a file to open
    path = client.post("/translate", json={"text": ["/etc/passwd"]})
    assert path.status_code == 200 and "root" not in path.json()["translations"][0]
    after = client.post("/translate", json={"text": ["twelve", "nine"]})
    assert after.status_code == 200 and len(after.json()["translations"]) == 2
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").json()
  assert metrics["errors"]["400"] >= 4 and metrics["errors"]["413"] >= 3
  assert metrics["compilations"]["after_warmup"] == 0


@pytest.mark.slow
def test_serve_an_export_directory(trained_workdir, tmp_path):
  out = str(tmp_path / "exported")
  assert run_cli("export", "--workdir", trained_workdir, "--out", out, "--beam-sizes", "none",
                 "--platforms", "cpu").returncode == 0
  process, url = start_server(["--exported", out, "--max-batch", "4", "--length-buckets", "40"],
                              str(tmp_path / "serve.log"))
  try:
    health = httpx.get(url + "/health").json()
    assert health["beam_sizes"] == [] and health["source"] == f"export {out}"
    answer = httpx.post(url + "/translate", json={"text": ["twelve"]}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["translations"]) == 1
    assert httpx.post(url + "/translate", json={"text": ["a"], "beam": 2}).status_code == 400
    metrics = httpx.get(url + "/metrics").json()
    assert metrics["compilations"]["warmup_programs"] == 2  # batch 1 and 4 x width 40, greedy
    assert metrics["compilations"]["after_warmup"] == 0
  finally:
    assert stop_server(process) in (0, 130)


def test_serve_flags_are_checked(capsys):
  """Flags are checked before the port is taken: a busy default port does not hide them."""
  code, _, err = cli_in_process(capsys, "serve", "--exported", "/nonexistent", "--beam-sizes", "2")
  assert code == 2 and "export settings" in err
  code, _, err = cli_in_process(capsys, "serve", "--exported", os.path.join(ROOT, "no-such-export"),
                                "--port", "0")  # the default port may be in use here
  assert code == 2 and "does not exist" in err
  # a wait past threading's limit killed the decoder thread
  code, _, err = cli_in_process(capsys, "serve", "--exported", "x", "--max-wait-ms", "1e20")
  assert code == 2 and err == "seq2seq-jax serve: error: --max-wait-ms 1e+20: at most 60000 (a minute).\n"
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    for flags, message in ((["--exported", "x", "--checkpoint", "best"], "export settings"),
                           (["--workdir", "w", "--batch-buckets", "1,2"], "must reach --max-batch"),
                           (["--workdir", "w", "--beam-sizes", "0"], "--beam-sizes takes"),
                           (["--workdir", "no-such-run"], "workdir 'no-such-run' does not exist"),
                           (["--exported", "no-such-export"], "'no-such-export' does not exist"),
                           (["--exported", ROOT], "is not a seq2seq_jax export (no manifest.json)")):
      code, _, err = cli_in_process(capsys, "serve", *flags, "--port", port)
      assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("wait", ["0", "60000"])
def test_max_wait_ms_from_0_to_a_minute_is_accepted(capsys, wait):
  """--max-wait-ms 0 (no waiting) and 60000 (the most) are served: the error here is only
  the export's."""
  code, _, err = cli_in_process(capsys, "serve", "--exported", "no-such-export",
                                "--max-wait-ms", wait, "--port", "0")
  assert code == 2 and "'no-such-export' does not exist" in err and err.count("\n") == 1, err


def test_where_it_cannot_listen_is_refused_before_the_model_loads(capsys, tmp_path):
  """A busy port, an out-of-range port or an unknown host: one line at once, not after
  the model has loaded and warmed up (the workdir here is never read)."""
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    code, _, err = cli_in_process(capsys, "serve", "--workdir", str(tmp_path), "--port", str(port))
  assert code == 2 and err == (f"seq2seq-jax serve: error: cannot listen on 127.0.0.1:{port}: "
                               "Address already in use; choose another --port, or stop what "
                               "listens there.\n")
  with pytest.raises(SystemExit) as exit_:
    cli_in_process(capsys, "serve", "--workdir", str(tmp_path), "--port", "99999")
  assert exit_.value.code == 2
  assert "argument --port: must be a TCP port, 0 to 65535, got '99999'" in capsys.readouterr().err
  code, _, err = cli_in_process(capsys, "serve", "--workdir", str(tmp_path), "--host", "no.such.host.invalid")
  assert code == 2 and "--host no.such.host.invalid:" in err and "127.0.0.1" in err


def test_a_directory_without_a_manifest_is_not_an_export(capsys, tmp_path):
  """It said "cannot read DIR/manifest.json: No such file or directory"."""
  empty = tmp_path / "not-yet"
  empty.mkdir()
  (empty / "notes.txt").write_text("mine")
  code, _, err = cli_in_process(capsys, "serve", "--exported", str(empty), "--port", "0")
  assert code == 2 and err == (
      f"seq2seq-jax serve: error: {empty} is not a seq2seq_jax export (no manifest.json): "
      f"create one with `seq2seq-jax export --workdir W --out {empty}`.\n")


def test_a_workdir_given_as_an_export_is_named(capsys, trained_workdir):
  code, _, err = cli_in_process(capsys, "serve", "--exported", trained_workdir, "--port", "0")
  assert code == 2 and "is a training workdir, not an export: serve it with --workdir" in err


def test_a_signal_lost_while_the_model_loads_stops_serve_before_it_listens(capsys, monkeypatch,
                                                                            tmp_path):
  """Its KeyboardInterrupt dropped inside a callback of XLA's, the server used to start
  anyway; the signal was recorded, and serve stops with its line instead."""
  import types
  from seq2seq_jax import export
  from seq2seq_jax import serve as serve_lib

  def load_losing_a_sigint(*args, **kwargs):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)  # the handler raises here
    except KeyboardInterrupt:
      pass  # what XLA's callback does with it
    return types.SimpleNamespace(manifest={"checkpoint": {"step": 1}}, max_source_len=8,
                                 beam_sizes=())

  monkeypatch.setattr(export, "export_workdir", load_losing_a_sigint)
  monkeypatch.setattr(serve_lib, "serve", lambda *args, **kwargs: pytest.fail("it listened"))
  code, _, err = cli_in_process(capsys, "serve", "--workdir", str(tmp_path), "--port", "0")
  assert code == 130 and err.strip().splitlines()[-1] == "seq2seq-jax serve: interrupted by SIGINT."


def test_the_port_is_held_from_before_the_model_loads_and_refuses_until_warm_up_ends():
  """Taken by another server during warm-up, the port used to fail only once warm-up had
  ended (uvicorn's own error, exit 3). Bound at once, it is the server's; not listening
  yet, it refuses connections."""
  sockets = bind_sockets("127.0.0.1", 0)
  port = sockets[0].getsockname()[1]
  try:
    with socket.socket() as other:  # SO_REUSEADDR, as asyncio's and http.server's servers
      other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      with pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
      client.connect(("127.0.0.1", port))
  finally:
    for sock in sockets:
      sock.close()


def test_every_interface_is_one_port_on_ipv4_and_ipv6():
  """--host "" binds 0.0.0.0 and [::] on the same port (the IPv6 socket IPv6 only, as
  asyncio's), not "Address already in use" from the IPv6 socket taking IPv4 too."""
  try:
    with socket.socket(socket.AF_INET6) as probe:
      probe.bind(("::1", 0))
  except OSError:
    pytest.skip("no IPv6 here")
  port = _free_port()
  sockets = bind_sockets("", port)
  try:
    assert sorted((sock.family, sock.getsockname()[1]) for sock in sockets) == [
        (socket.AF_INET, port), (socket.AF_INET6, port)]
  finally:
    for sock in sockets:
      sock.close()


def test_a_port_it_cannot_listen_on_after_warm_up_is_one_line():
  """Were the port taken still (a socket bound elsewhere than bind_sockets), serve ends
  with its error line, not uvicorn's."""
  with socket.socket() as ours, socket.socket() as theirs:
    for sock in (ours, theirs):
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ours.bind(("127.0.0.1", 0))
    port = ours.getsockname()[1]
    theirs.bind(("127.0.0.1", port))
    theirs.listen()
    with pytest.raises(UserError) as refused:
      serve(EchoTranslator(), [ours], ServeOptions(max_batch=4))
  assert str(refused.value) == (f"cannot listen on 127.0.0.1:{port}: Address already in use; "
                                "choose another --port, or stop what listens there.")


def test_ctrl_c_during_warm_up_stops_serve_at_once_without_listening(capsys, monkeypatch,
                                                                      tmp_path):
  """It used to be acted on when warm-up ended, after the port had opened."""
  import uvicorn
  from seq2seq_jax import export
  translator = EchoTranslator()
  translator.manifest = {"checkpoint": {"step": 1}}
  echo = translator.decode_ids

  def slow_decode(src_BxS, beam=None):
    if len(translator.shapes) == 2:  # Ctrl-C during the third of 18 programs
      os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    return echo(src_BxS, beam)

  translator.decode_ids = slow_decode
  monkeypatch.setattr(export, "export_workdir", lambda *args, **kwargs: translator)
  monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: pytest.fail("it listened"))
  code, _, err = cli_in_process(capsys, "serve", "--workdir", str(tmp_path), "--port", "0")
  assert code == 130 and err.strip().splitlines()[-1] == "seq2seq-jax serve: interrupted by SIGINT."
  time.sleep(0.2)
  assert len(translator.shapes) <= 4  # the warm-up stopped after the program it was on


def test_a_failed_warm_up_is_one_line_and_never_listens():
  """It was uvicorn's traceback of the lifespan, then exit 3."""
  translator = EchoTranslator()

  def out_of_memory(src_BxS, beam=None):
    if src_BxS.shape[0] == 4:
      raise MemoryError("RESOURCE_EXHAUSTED: 4 rows\nmore detail")
    return EchoTranslator.decode_ids(translator, src_BxS, beam)

  translator.decode_ids = out_of_memory
  sockets = bind_sockets("127.0.0.1", 0)
  try:
    with pytest.raises(UserError) as refused:
      serve(translator, sockets, ServeOptions(max_batch=4))
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
      client.connect(sockets[0].getsockname())
  finally:
    for sock in sockets:
      sock.close()
  assert str(refused.value).startswith("warm-up failed compiling greedy, 4 x 4: MemoryError: "
                                       "RESOURCE_EXHAUSTED: 4 rows (out of memory: a smaller "
                                       "--max-batch")
  assert "\n" not in str(refused.value)


@pytest.mark.parametrize("error, hinted", [
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."), True),
    (RuntimeError("INTERNAL: CUDA error: out of memory"), True),
    (RuntimeError("INTERNAL: Out of memory allocating 8589934592 bytes"), True),
    (ValueError("Function 'greedy' was exported for platforms ('tpu',) but it is used on "
                "('cpu',)"), False),
    (TypeError("a bug"), False),
])
def test_a_failed_warm_up_suggests_smaller_programs_only_when_out_of_memory(error, hinted):
  """The hint to lower --max-batch was given for every failure, a wrong platform's too."""
  from seq2seq_jax.serve import BatchWorker, Metrics, warm_up
  translator = EchoTranslator()

  def fail(src_BxS, beam=None):
    raise error

  translator.decode_ids = fail
  worker = BatchWorker(translator, ServeOptions(max_batch=4), Metrics(10))
  with pytest.raises(UserError) as refused:
    warm_up(worker)
  message = str(refused.value)
  assert message.startswith(f"warm-up failed compiling greedy, 1 x 4: {type(error).__name__}: "
                            f"{error}") and "\n" not in message
  assert ("(out of memory: a smaller --max-batch" in message) == hinted
  assert message.endswith(".")  # one sentence, as every error line


def test_buckets_no_request_can_reach_are_left_out_with_a_warning(caplog):
  """A batch bucket above the first that holds --max-batch, or a length bucket above the
  first that holds max_source_len (inputs are cut there), would only cost warm-up time."""
  from seq2seq_jax.serve import BatchWorker, Metrics
  options = ServeOptions(max_batch=4, batch_buckets=(16, 1, 4, 64), length_buckets=(4, 12, 1000))
  with caplog.at_level("WARNING", logger="seq2seq_jax"):
    worker = BatchWorker(EchoTranslator(), options, Metrics(10))
  assert (worker.batch_buckets, worker.length_buckets) == ((1, 4), (4, 12))
  assert [r.getMessage() for r in caplog.records] == [
      "warning: batch bucket(s) 16,64 above --max-batch=4 are never used: left out",
      "warning: length bucket(s) 1000 above the model's max_source_len=12 are never used: left out"]
  # the largest bucket may exceed the limit: it is the one that holds it
  assert BatchWorker(EchoTranslator(), ServeOptions(max_batch=3, batch_buckets=(2, 8)),
                     Metrics(10)).batch_buckets == (2, 8)


def test_buckets_that_do_not_reach_the_limits_are_refused():
  """A batch of --max-batch rows, or an input of max_source_len tokens, must have a
  bucket: the server is refused at its creation, not at the first such request."""
  from seq2seq_jax.serve import BatchWorker, Metrics
  with pytest.raises(ValueError, match="the largest batch bucket 2 is below max_batch=4"):
    BatchWorker(EchoTranslator(), ServeOptions(max_batch=4, batch_buckets=(1, 2)), Metrics(10))
  with pytest.raises(ValueError, match="the largest length bucket 8 is below max_source_len=12"):
    BatchWorker(EchoTranslator(), ServeOptions(max_batch=4, length_buckets=(4, 8)), Metrics(10))


@pytest.mark.parametrize("program", [2, 11])  # of the 12: one in the middle, the last
def test_a_signal_whose_interrupt_was_lost_during_warm_up_stops_serve_before_it_listens(
    monkeypatch, program):
  """A SIGINT recorded during warm-up whose KeyboardInterrupt was lost (raised inside a
  callback of XLA's, which drops it): serve stops with the KeyboardInterrupt, naming the
  signal, and never listens, whether warm-up had programs left or not."""
  import uvicorn
  from seq2seq_jax import runtime
  translator = EchoTranslator()
  echo = translator.decode_ids

  def decode_losing_a_sigint(src_BxS, beam=None):
    if len(translator.shapes) == program:
      runtime.record_stop(signal.SIGINT)  # what the handler did before its interrupt was lost
    return echo(src_BxS, beam)

  translator.decode_ids = decode_losing_a_sigint
  monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: pytest.fail("it listened"))
  previous = runtime.install_stop_handlers()
  sockets = bind_sockets("127.0.0.1", 0)
  try:
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
      serve(translator, sockets, ServeOptions(max_batch=4))
  finally:
    runtime.restore_handlers(previous)
    for sock in sockets:
      sock.close()
