"""A bounded load run of `seq2seq-jax serve` against one `translate` process per request.

N concurrent clients for S seconds on a loopback port, beside the same sentences through
`seq2seq-jax translate`, one process per request.

  .venv/bin/python experiments/load_serve.py --workdir /tmp/default_run --clients 32 --seconds 30

Starts the server itself (127.0.0.1, a free port), waits for its warm-up, runs the
clients (each sends one request at a time of --texts-per-request English number words,
drawn with a fixed seed, until the time is up), reads /metrics, stops the server, then
times --translate-requests `translate` processes. Prints a Markdown summary and, with
--json PATH, writes every figure. Bounded: the load ends after --seconds (and at most
--max-requests requests), every request times out after 60 s, the server is stopped
at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def number_words(count: int, seed: int, largest: int = 999_999) -> list[str]:
  """English number words, as numbers:fr's sources (num2words), a uniform digit count."""
  from num2words import num2words
  rng = random.Random(seed)
  out = []
  for _ in range(count):
    digits = rng.randint(1, len(str(largest)))
    out.append(num2words(rng.randint(0 if digits == 1 else 10 ** (digits - 1),
                                     min(10 ** digits - 1, largest))))
  return out


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(args, port: int, log_path: str) -> tuple[subprocess.Popen, float]:
  command = [sys.executable, "-m", "seq2seq_jax", "serve", "--port", str(port),
             *(["--exported", args.exported] if args.exported else ["--workdir", args.workdir]),
             *args.serve_args.split()]
  print("server:", " ".join(command[1:]), file=sys.stderr)
  started = time.monotonic()
  process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                             cwd=ROOT)
  deadline = started + args.startup_timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise SystemExit(f"serve exited with {process.returncode}:\n{open(log_path).read()}")
    try:
      if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
        return process, time.monotonic() - started
    except httpx.TransportError:
      pass
    time.sleep(0.5)
  process.kill()
  raise SystemExit(f"serve did not start within {args.startup_timeout}s")


async def load(url: str, args, pool: list[str]) -> dict:
  """The clients' run: latencies (ms) of successful requests, sentences, errors."""
  latencies, errors, sent = [], {}, [0]
  sentences = [0]
  deadline = time.monotonic() + args.seconds
  limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
  async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
    async def one_client(index: int) -> None:
      rng = random.Random(index)
      while time.monotonic() < deadline and sent[0] < args.max_requests:
        sent[0] += 1
        texts = rng.sample(pool, args.texts_per_request)
        body = {"text": texts} if args.beam is None else {"text": texts, "beam": args.beam}
        start = time.perf_counter()
        try:
          response = await client.post("/translate", json=body)
          status = response.status_code
        except httpx.HTTPError as error:
          status = type(error).__name__
        if status == 200:
          latencies.append((time.perf_counter() - start) * 1000)
          sentences[0] += len(texts)
        else:
          errors[str(status)] = errors.get(str(status), 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(one_client(i) for i in range(args.clients)))
    elapsed = time.monotonic() - started
    metrics = (await client.get("/metrics")).json()
  lat = np.array(latencies)
  return {"seconds": round(elapsed, 2), "requests": len(latencies), "sentences": sentences[0],
          "errors": errors, "requests_per_s": round(len(latencies) / elapsed, 1),
          "sentences_per_s": round(sentences[0] / elapsed, 1),
          "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
          if len(lat) else {}, "server_metrics": metrics}


def per_process(args, pool: list[str]) -> dict:
  """`seq2seq-jax translate --workdir W TEXT...` once per request, timed whole."""
  seconds = []
  for i in range(args.translate_requests):
    texts = pool[i * args.texts_per_request:(i + 1) * args.texts_per_request]
    command = [sys.executable, "-m", "seq2seq_jax", "translate", "--workdir", args.workdir, *texts]
    if args.beam is not None:
      command[6:6] = ["--beam", str(args.beam)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    seconds.append(time.perf_counter() - start)
    if result.returncode:
      raise SystemExit(f"translate failed:\n{result.stderr}")
  mean = float(np.mean(seconds))
  return {"requests": len(seconds), "seconds_each": [round(s, 2) for s in seconds],
          "latency_ms_median": round(float(np.median(seconds)) * 1000, 1),
          "sentences_per_s": round(args.texts_per_request / mean, 3)}


def load_average() -> str:
  try:
    return " ".join(open("/proc/loadavg").read().split()[:3])
  except OSError:
    return "?"


def machine() -> str:
  try:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("Model name")), "?")
  except OSError:
    model = platform.processor() or "?"
  return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/default_run")
  parser.add_argument("--exported", help="serve this export directory instead of --workdir")
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--texts-per-request", type=int, default=1)
  parser.add_argument("--beam", type=int, help="ask for beam search of this size")
  parser.add_argument("--serve-args", default="", help="more serve flags, e.g. '--max-batch 64'")
  parser.add_argument("--translate-requests", type=int, default=3)
  parser.add_argument("--max-requests", type=int, default=1_000_000)
  parser.add_argument("--startup-timeout", type=float, default=900.0)
  parser.add_argument("--json", help="write every figure to this file")
  args = parser.parse_args()
  pool = number_words(2000, seed=30)
  port = free_port()
  log_path = os.path.join("/tmp", f"load_serve_{port}.log")
  process, startup = start_server(args, port, log_path)
  before = load_average()
  try:
    served = asyncio.run(load(f"http://127.0.0.1:{port}", args, pool))
    served["load_average"] = {"before": before, "after": load_average()}
  finally:
    process.send_signal(signal.SIGINT)
    try:
      process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      process.kill()
  served["startup_s"] = round(startup, 1)
  translate = per_process(args, pool) if args.translate_requests else None
  report = {"machine": machine(), "python": platform.python_version(), "args": vars(args),
            "serve": served, "translate_per_process": translate}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  m = served["server_metrics"]
  print(f"machine: {report['machine']}; load average before / after the load: "
        f"{served['load_average']['before']} / {served['load_average']['after']} "
        "(the clients run on the same cores)")
  print(f"serve: {args.clients} clients x {args.seconds:.0f}s, {args.texts_per_request} text(s) "
        f"per request, {'greedy' if args.beam is None else f'beam {args.beam}'}; start-up "
        f"(load, export in memory, warm-up) {served['startup_s']}s, "
        f"{m['compilations']['warmup_programs']} programs")
  print("| | requests | sentences/s | p50 ms | p90 ms | p99 ms | errors |")
  print("|---|---|---|---|---|---|---|")
  lat = served["latency_ms"]
  print(f"| serve | {served['requests']} | {served['sentences_per_s']} | {lat.get('p50')} | "
        f"{lat.get('p90')} | {lat.get('p99')} | {sum(served['errors'].values())} |")
  inside = m["latency_ms"]
  print(f"| serve, latency inside the server | | | {inside['p50']} | {inside['p90']} | "
        f"{inside['p99']} | |")
  if translate:
    print(f"| translate, a process per request | {translate['requests']} | "
          f"{translate['sentences_per_s']} | {translate['latency_ms_median']} | - | - | 0 |")
  print(f"batch sizes: {m['batch_sizes']}")
  print(f"compilations after warm-up: {m['compilations']['after_warmup']}")


if __name__ == "__main__":
  main()
