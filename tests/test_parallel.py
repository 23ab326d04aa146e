"""Data parallelism over a mesh: 8 simulated CPU devices against 1, in subprocesses."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

SOURCES = ["twelve", "three hundred and four", "", "nine hundred and ninety-nine", "seven"]
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from tests.conftest import tiny_config
    from seq2seq_jax.parallel import DataParallel
    from seq2seq_jax.inference import load_trained
    from seq2seq_jax.loop import train_and_evaluate
    workdir = sys.argv[1]
    config = tiny_config(num_epochs=2, log_every_steps=1, batch_size=32, dropout=0.1,
                         bucket_width=0,  # one batch shape: one program per process to compile
                         cpu_crosscheck="always")  # the devices against the host CPU first
    summary = train_and_evaluate(config, workdir, progress=False)
    task, params, _ = load_trained(workdir, "latest")
    sources = %r
    print("RESULT", json.dumps({"devices": jax.device_count(), "summary": summary,
                                "one_program_at_a_time": DataParallel().one_program_at_a_time,
                                "translations": task.translate(params, sources, batch_size=3)}))
""") % (SOURCES,)


def device_flags(count: int) -> str:
  """XLA_FLAGS for count simulated CPU devices, after the flags the suite already sets."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()


def run_with_devices(workdir, count):
  env = dict(os.environ, XLA_FLAGS=device_flags(count), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r
            and "val/loss" not in r}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  """The reference: the same training on one device (its workdir and its RESULT)."""
  workdir = tmp_path_factory.mktemp("one") / "run"
  return workdir, run_with_devices(workdir, 1)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path, one_device):
  one_workdir, one = one_device
  eight = run_with_devices(tmp_path / "eight", 8)
  assert (one["devices"], eight["devices"]) == (1, 8)
  # several CPU devices in one process: each step finishes everywhere before the next
  # is dispatched (parallel.DataParallel.one_program_at_a_time: queued programs deadlock)
  assert (one["one_program_at_a_time"], eight["one_program_at_a_time"]) == (False, True)
  one_losses, eight_losses = losses(one_workdir), losses(tmp_path / "eight")
  assert one_losses.keys() == eight_losses.keys() and len(one_losses) >= 10
  for step in one_losses:
    assert eight_losses[step] == pytest.approx(one_losses[step], rel=2e-4, abs=1e-5)
  assert eight["translations"] == one["translations"]
  run = json.load(open(tmp_path / "eight" / "run.json"))
  assert run["mesh"] == {"data": 8} and run["num_devices"] == 8
  # what 8 devices saved restores in this one-device process and translates the same
  from seq2seq_jax.inference import load_trained
  task, params, _ = load_trained(str(tmp_path / "eight"), "latest")
  assert task.translate(params, SOURCES, batch_size=3) == eight["translations"]


def test_batch_size_must_divide_over_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS=device_flags(8), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "seq2seq_jax", "train", "--config", "configs/tiny.py",
       "--workdir", str(tmp_path / "w"), "--set", "batch_size=20"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "batch_size=20 does not divide evenly over 8 devices" in result.stderr
  assert "Traceback" not in result.stderr


def test_batches_for_inference_round_up_to_a_multiple_of_the_devices():
  """translate and evaluate pad their batches to a multiple of the devices: rounding
  down made batch_size=1 on 2 devices a batch of 0 rows, and batch_size=3 one of 2."""
  script = ("import jax\nfrom seq2seq_jax.parallel import DataParallel\n"
            "print('RESULT', jax.device_count(), "
            "[DataParallel().round_batch_size(n) for n in (1, 2, 3, 4, 5)])")
  env = dict(os.environ, XLA_FLAGS=device_flags(2), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == "RESULT 2 [2, 2, 4, 4, 6]"


@pytest.mark.slow
def test_two_processes_through_jax_distributed_match_one_device(tmp_path, one_device):
  """Two localhost processes x 2 CPU devices (gloo collectives), each feeding its own shard.
  (Two devices each, not more: gloo's step time grows with the devices, 0.8 s a step at 4.)"""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "two"
  processes = []
  for process_id in range(2):
    env = dict(os.environ, XLA_FLAGS=device_flags(2),
               JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
    processes.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, out[-2000:] + err[-2000:]
  results = [json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:])
             for out, _ in outputs]
  assert [r["devices"] for r in results] == [4, 4]
  one_workdir, one = one_device
  one_losses, two_losses = losses(one_workdir), losses(workdir)
  assert one_losses.keys() == two_losses.keys()
  for step in one_losses:
    assert two_losses[step] == pytest.approx(one_losses[step], rel=2e-4, abs=1e-5)
  assert results[0]["translations"] == results[1]["translations"] == one["translations"]
  run = json.load(open(workdir / "run.json"))
  assert run["num_processes"] == 2 and run["mesh"] == {"data": 4}
  # the cross-check ran over the 4 devices of both processes, which agreed to go on
  assert "CPU cross-check: 4 x cpu computes the host CPU's outputs" in (workdir / "train.log").read_text()


@pytest.mark.parametrize("value", ["true", "yes", "2"])
def test_a_distributed_launch_asked_for_in_words_is_refused(monkeypatch, value):
  """SEQ2SEQ_JAX_DISTRIBUTED=true was ignored: on a cluster each host then trained alone,
  several runs on one shared workdir."""
  from seq2seq_jax import parallel
  from seq2seq_jax.errors import UserError
  monkeypatch.setenv("SEQ2SEQ_JAX_DISTRIBUTED", value)
  monkeypatch.delattr(parallel.maybe_initialize_distributed, "_done", raising=False)
  with pytest.raises(UserError, match=rf"^SEQ2SEQ_JAX_DISTRIBUTED='{value}': set 1 "):
    parallel.maybe_initialize_distributed()


TWO_DEVICES_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from seq2seq_jax.errors import UserError
    from seq2seq_jax.parallel import DataParallel
    parallel = DataParallel()
    try:
      parallel.check_batch_size(5)
      message = None
    except UserError as error:
      message = str(error)
    batch = parallel.shard_batch({"src": np.arange(8).reshape(4, 2)})["src"]
    rows = sorted((shard.device.id, shard.data.tolist()) for shard in batch.addressable_shards)
    print("RESULT", json.dumps({"message": message, "rows": rows, "describe": parallel.describe()}))
""")


def test_two_devices_each_get_half_of_every_batch():
  """Data parallelism: the batch's rows are split over the devices, not copied to each; a
  batch size that does not divide is refused with the next multiple; run.json records them."""
  env = dict(os.environ, XLA_FLAGS=device_flags(2), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", TWO_DEVICES_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  assert out["message"] == ("batch_size=5 does not divide evenly over 2 devices; use a multiple "
                            "of 2 (e.g. 6).")
  assert out["rows"] == [[0, [[0, 1], [2, 3]]], [1, [[4, 5], [6, 7]]]]
  described = out["describe"]
  assert (described["platform"], described["num_devices"], described["num_processes"],
          described["mesh"]) == ("cpu", 2, 1, {"data": 2})


@pytest.fixture
def distributed_env(monkeypatch):
  """maybe_initialize_distributed, not yet run, with jax.distributed.initialize and
  jax.config.update recorded instead of called; no launch variables set."""
  from seq2seq_jax import parallel
  calls = []
  monkeypatch.setattr(parallel.maybe_initialize_distributed, "_done", False, raising=False)
  monkeypatch.setattr(parallel.jax.distributed, "initialize",
                      lambda *args: calls.append(("initialize", *args)))
  monkeypatch.setattr(parallel.jax.config, "update", lambda *args: calls.append(("update", *args)))
  for name in ("SEQ2SEQ_JAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  return parallel, calls


def test_a_coordinator_address_starts_jax_distributed_once_with_its_process_settings(
    monkeypatch, distributed_env):
  """JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID go to
  jax.distributed.initialize in that order, CPU collectives through gloo; a second call
  (train, then evaluate in one process) starts nothing again."""
  parallel, calls = distributed_env
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  parallel.maybe_initialize_distributed()
  parallel.maybe_initialize_distributed()
  assert calls == [("update", "jax_cpu_collectives_implementation", "gloo"),
                   ("initialize", "10.0.0.1:1234", 4, 2)]


@pytest.mark.parametrize("num_processes, process_id", [("two", "0"), ("2", None)])
def test_a_coordinator_without_whole_process_numbers_is_one_line(monkeypatch, distributed_env,
                                                                 num_processes, process_id):
  from seq2seq_jax.errors import UserError
  parallel, calls = distributed_env
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", num_processes)
  if process_id is not None:
    monkeypatch.setenv("JAX_PROCESS_ID", process_id)
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set to "
                     "whole numbers too"):
    parallel.maybe_initialize_distributed()
  assert calls == []


@pytest.mark.parametrize("value, started", [("1", True), ("0", False), ("", False)])
def test_only_seq2seq_jax_distributed_1_asks_jax_to_find_the_cluster(monkeypatch, distributed_env,
                                                                       value, started):
  parallel, calls = distributed_env
  monkeypatch.setenv("SEQ2SEQ_JAX_DISTRIBUTED", value)
  parallel.maybe_initialize_distributed()
  assert calls == ([("initialize",)] if started else [])


def test_one_process_that_stops_stops_every_process(monkeypatch):
  """any_process: the flags of all processes are gathered, and any one true is true for all."""
  from jax.experimental import multihost_utils
  from seq2seq_jax import parallel
  monkeypatch.setattr(parallel.jax, "process_count", lambda: 3)
  for flags, expected in (([0, 1, 0], True), ([0, 0, 0], False), ([1, 1, 1], True)):
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda value, flags=flags: parallel.np.array(flags, dtype=parallel.np.int32))
    assert parallel.any_process(False) is expected
