"""One set of defaults (Config() is configs/default.py) and configs shipped in the package."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest

from seq2seq_jax import cli
from seq2seq_jax import config as config_lib
from seq2seq_jax.config import Config, load_config_file, resolve_config_path
from seq2seq_jax.errors import UserError
from seq2seq_jax.sweep import load_sweep
from tests.conftest import ROOT, cli_in_process

SHIPPED = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _train_config(*argv: str) -> Config:
  """The config `seq2seq-jax train ARGV` would train."""
  return cli._load_config(cli.build_parser().parse_args(["train", *argv]))


def test_config_defaults_are_the_recommended_model():
  recommended = dataclasses.asdict(load_config_file(os.path.join(ROOT, "configs", "default.py")))
  assert dataclasses.asdict(Config()) == recommended
  assert dataclasses.asdict(_train_config()) == recommended  # `seq2seq-jax train`, no --config


def test_a_shipped_name_and_its_path_load_the_same(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert _train_config("--config", "default") == _train_config("--config", "configs/default.py")
  assert _train_config("--config", "tiny") == _train_config("--config", "configs/tiny.py")
  assert _train_config("--config", "tiny.py") == _train_config("--config", "configs/tiny.py")
  assert (_train_config("--config", "default", "--set", "latent_dim=64").latent_dim == 64)
  by_name, by_path = load_sweep(resolve_config_path("sweep_lr")), load_sweep("configs/sweep_lr.py")
  assert by_name.base == by_path.base  # sweep_lr.py loads default.py beside it
  assert [t.name for t in by_name.trials] == [t.name for t in by_path.trials]


def test_the_checkout_configs_are_the_shipped_ones():
  assert os.path.realpath(config_lib.shipped_configs_dir()) == os.path.join(
      os.path.realpath(ROOT), "configs")
  assert config_lib.shipped_config_names() == SHIPPED
  assert {"default", "tiny", "sweep_lr", "keras_lstm_seq2seq"} <= set(SHIPPED)


def test_a_source_tree_without_the_installed_mapping_reads_its_configs(monkeypatch):
  """An editable install made before configs/ was mapped, or PYTHONPATH=checkout."""
  def missing(name):
    raise ModuleNotFoundError(name)
  monkeypatch.setattr(config_lib.importlib.resources, "files", missing)
  assert os.path.realpath(resolve_config_path("tiny")) == os.path.realpath(
      os.path.join(ROOT, "configs", "tiny.py"))


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "tiny.py").write_text("from seq2seq_jax.config import Config\n"
                                    "def get_config():\n  return Config(latent_dim=7)\n")
  assert resolve_config_path("tiny.py") == "tiny.py"
  assert _train_config("--config", "tiny.py").latent_dim == 7
  assert _train_config("--config", "tiny").latent_dim == 32  # no file 'tiny': the shipped one


def test_an_unknown_name_is_a_one_line_error_listing_the_shipped_names(capsys, tmp_path):
  with pytest.raises(UserError) as error:
    resolve_config_path("defualt")
  message = str(error.value)
  assert "\n" not in message and "defualt" in message
  assert ", ".join(SHIPPED) in message
  for command in ("train", "sweep"):
    code, out, err = cli_in_process(capsys, command, "--config", "defualt",
                                    "--workdir", str(tmp_path / command))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "defualt" in err and "sweep_lr" in err, err
  assert not os.path.exists(tmp_path / "train")


def test_pyproject_ships_every_package_and_the_configs():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  source = {os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
            for p in glob.glob(os.path.join(ROOT, "seq2seq_jax", "**", "__init__.py"),
                               recursive=True)}
  assert set(setuptools["packages"]) == source | {"seq2seq_jax.configs"}
  assert setuptools["package-dir"] == {"seq2seq_jax.configs": "configs"}
  assert os.path.isfile(os.path.join(ROOT, "configs", "__init__.py"))


def _build_wheel(tmp_path) -> str:
  """The project's wheel, built offline from a copy of the working tree (setuptools leaves
  build/ in the tree it builds, and a stale build/lib would go into later wheels): with this
  environment's setuptools when it can (>= 68 with bdist_wheel), else in pip's isolated build
  environment from the configured local indexes / find-links."""
  tree, out_dir = tmp_path / "tree", tmp_path / "dist"
  shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
      ".git", ".venv", "venv", "build", "dist", "runs", "*.egg-info", "__pycache__",
      ".hypothesis", ".pytest_cache"))
  base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(tree)]
  errors = []
  for extra in (["--no-build-isolation"], []):
    result = subprocess.run(base[:4] + extra + base[4:], capture_output=True, text=True,
                            timeout=300)
    wheels = glob.glob(os.path.join(out_dir, "seq2seq_jax-*.whl"))
    if result.returncode == 0 and wheels:
      return wheels[0]
    errors.append(result.stdout[-1500:] + result.stderr[-1500:])
  pytest.fail("could not build the wheel:\n" + "\n---\n".join(errors))


INSTALLED_CHECK = textwrap.dedent("""
    import dataclasses, json, os, sys
    import seq2seq_jax
    from seq2seq_jax import cli, config as config_lib, keras_import
    from seq2seq_jax.sweep import load_sweep
    parse = lambda *a: cli._load_config(cli.build_parser().parse_args(["train", *a]))
    print(json.dumps({
        "package": seq2seq_jax.__file__,
        "configs": config_lib.shipped_configs_dir(),
        "names": config_lib.shipped_config_names(),
        "default": dataclasses.asdict(parse("--config", "default")),
        "no_config": dataclasses.asdict(parse()),
        "Config()": dataclasses.asdict(config_lib.Config()),
        "sweep_lr": dataclasses.asdict(load_sweep(config_lib.resolve_config_path("sweep_lr")).base),
        "gettext_fr": dataclasses.asdict(parse("--config", "gettext_fr")),
        "keras": dataclasses.asdict(keras_import.import_config("anki:fra.txt", 10_000, 256)),
    }))
""")


@pytest.mark.slow
def test_a_wheel_install_ships_the_configs_and_trains(tmp_path):
  """A non-editable install: the wheel holds every config, `--config default` there is the
  README's model (= Config()), and `seq2seq-jax train --config tiny` trains, far from the
  checkout's configs/."""
  wheel = _build_wheel(tmp_path)
  names = set(zipfile.ZipFile(wheel).namelist())
  for name in SHIPPED + ["__init__"]:
    assert f"seq2seq_jax/configs/{name}.py" in names
  assert "seq2seq_jax/config.py" in names and "seq2seq_jax/bench/harness.py" in names

  # installed (not editable) into its own directory, the dependencies reused from this
  # environment; cwd and sys.path hold no checkout
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                  "--target", str(target), wheel], check=True, capture_output=True, timeout=300)
  env = dict(os.environ, PYTHONPATH=str(target))
  result = subprocess.run([sys.executable, "-c", INSTALLED_CHECK], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  got = json.loads(result.stdout)
  assert got["package"].startswith(str(target)) and got["configs"].startswith(str(target))
  assert got["names"] == SHIPPED
  recommended = dataclasses.asdict(load_config_file(os.path.join(ROOT, "configs", "default.py")))
  assert got["default"] == got["no_config"] == got["Config()"] == recommended
  assert got["sweep_lr"] == dataclasses.asdict(load_sweep(os.path.join(ROOT, "configs",
                                                                       "sweep_lr.py")).base)
  assert got["gettext_fr"] == dataclasses.asdict(
      load_config_file(os.path.join(ROOT, "configs", "gettext_fr.py")))
  assert got["keras"]["num_epochs"] == 100 and got["keras"]["keras_compat"]

  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", "seq2seq_jax", "train", "--config", "tiny",
                           "--set", "num_epochs=1", "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  tiny = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
  assert saved == dataclasses.asdict(dataclasses.replace(tiny, num_epochs=1))
