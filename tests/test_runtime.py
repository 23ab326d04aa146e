"""runtime.py: the CPU devices and allocator `seq2seq-jax train` runs with."""

import pytest

from seq2seq_jax import runtime
from seq2seq_jax.errors import UserError
from tests.conftest import run_cli

FLAG = "--xla_force_host_platform_device_count"


@pytest.mark.parametrize("batch, cores, expected", [
    (64, 2, 2),    # the Keras example's batch on this project's 2-core machine
    (128, 2, 2),   # the default job
    (64, 16, 4),   # capped so that each device keeps >= 16 rows
    (128, 16, 8),  # capped at MAX_CPU_DEVICES
    (50, 4, 2),    # only counts that divide the batch
    (31, 8, 1),    # a prime batch stays on one device
    (16, 2, 1),    # too few rows to split
    (64, 1, 1),    # one core
])
def test_cpu_device_count(batch, cores, expected):
  assert runtime.cpu_device_count(batch, cores) == expected


def test_launch_environment_adds_per_core_devices(monkeypatch):
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  env = runtime.launch_environment(64, {"SEQ2SEQ_JAX_MIMALLOC": "0", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
  assert env == {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {FLAG}=2 --xla_cpu_multi_thread_eigen=false"}


@pytest.mark.parametrize("environ", [
    {"XLA_FLAGS": f"{FLAG}=8"},                       # the user's own device count wins
    {"SEQ2SEQ_JAX_CPU_DEVICES": "1"},                 # turned off
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},     # a multi-process launch
    {"ACCELERATOR": "1"},                             # a GPU/TPU backend is installed
])
def test_launch_environment_leaves_devices_alone(monkeypatch, environ):
  monkeypatch.setattr(runtime, "available_cores", lambda: 8)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("json",) if "ACCELERATOR" in environ else ())
  env = runtime.launch_environment(64, dict(environ, SEQ2SEQ_JAX_MIMALLOC="0"))
  assert "XLA_FLAGS" not in env


def test_explicit_device_count_and_a_wrong_one():
  assert runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "4"}) == 4
  with pytest.raises(UserError, match="SEQ2SEQ_JAX_CPU_DEVICES='two' is not a whole number"):
    runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "two"})


def test_nothing_to_add_once_launched(monkeypatch):
  """The re-executed process finds its settings in place and does not re-execute again."""
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  first = runtime.launch_environment(64, {})
  assert runtime.launch_environment(64, first) == {}


def test_train_names_a_wrong_device_setting():
  result = run_cli("train", "--config", "configs/tiny.py", "--workdir", "/nonexistent/never",
                   env_extra={"SEQ2SEQ_JAX_CPU_DEVICES": "0"})
  assert result.returncode == 2
  assert "SEQ2SEQ_JAX_CPU_DEVICES='0' is not a whole number >= 1" in result.stderr


def test_an_installed_accelerator_is_used_unless_jax_platforms_says_cpu(monkeypatch):
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("json",))  # an installed module
  assert runtime.accelerator_installed({})
  assert not runtime.accelerator_installed({"JAX_PLATFORMS": "cpu"})
