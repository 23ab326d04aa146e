"""export.py and exported.py: a workdir's model as jax.export functions, loaded with jax
and numpy alone, translating exactly as `seq2seq-jax translate` does."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from seq2seq_jax.errors import UserError
from seq2seq_jax.exported import ExportedTranslator, flatten_params, unflatten_params
from tests.conftest import ROOT, run_cli

BEAM = 3


def sentences_200() -> list[str]:
  """200 English number words of the tiny model's range, an empty line, one too long for
  its max_source_len (40) and one with characters it never saw."""
  from num2words import num2words
  rng = random.Random(20)
  texts = [num2words(n) for n in rng.sample(range(1000), 197)]
  return texts + ["", "nine hundred and ninety-nine thousand, nine hundred and ninety-nine",
                  "twelve!?"]


def test_flat_params_round_trip():
  tree = {"encoder_lstm_0": {"kernel": np.ones((2, 8)), "bias": np.zeros(8)},
          "attention_query": np.eye(2)}
  flat = flatten_params(tree)
  assert sorted(flat) == ["attention_query", "encoder_lstm_0/bias", "encoder_lstm_0/kernel"]
  assert unflatten_params(flat).keys() == tree.keys()
  assert unflatten_params(flat)["encoder_lstm_0"]["kernel"] is tree["encoder_lstm_0"]["kernel"]


def test_load_errors_say_what_to_do(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    ExportedTranslator.load(str(tmp_path / "nowhere"))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(UserError, match=r"notes.txt' is a file; give the export's directory"):
    ExportedTranslator.load(str(tmp_path / "notes.txt"))
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(UserError, match="not valid JSON"):
    ExportedTranslator.load(str(tmp_path))
  (tmp_path / "manifest.json").write_text('{"format": "other"}')
  with pytest.raises(UserError, match="not a seq2seq_jax export"):
    ExportedTranslator.load(str(tmp_path))


class _FakeExported:
  """What write_artifact reads of a jax.export function: its bytes."""

  def __init__(self, data: bytes):
    self.data = data

  def serialize(self) -> bytes:
    if isinstance(self.data, Exception):
      raise self.data
    return self.data


def _artifact(version: int, serialized=b"stablehlo"):
  """An ExportedTranslator as write_artifact reads it, without a model behind it."""
  import types
  return types.SimpleNamespace(manifest={"format": "seq2seq_jax.exported", "v": version},
                               vocab={"tokenizer": "char"}, flat_params={"w": np.arange(3.0)},
                               exported={"greedy": _FakeExported(serialized)},
                               sentencepiece_models=None)


def test_export_replaces_its_directory_and_nothing_beside_it(tmp_path):
  """A user's DIR.old and DIR.partial are theirs; a failed export keeps the older DIR."""
  from seq2seq_jax.export import write_artifact
  out = tmp_path / "ex4"
  write_artifact(_artifact(1), str(out))
  (tmp_path / "ex4.old").mkdir()
  (tmp_path / "ex4.old" / "manifest.json").write_text("my copy")
  (tmp_path / "ex4.partial").mkdir()
  (tmp_path / "ex4.partial" / "f").write_text("x")
  write_artifact(_artifact(2), str(out))
  assert sorted(os.listdir(tmp_path)) == ["ex4", "ex4.old", "ex4.partial"]
  assert json.loads((out / "manifest.json").read_text())["v"] == 2
  assert (out / "greedy.stablehlo").read_bytes() == b"stablehlo"
  assert (tmp_path / "ex4.old" / "manifest.json").read_text() == "my copy"
  assert (tmp_path / "ex4.partial" / "f").read_text() == "x"
  with pytest.raises(OSError, match="disk full"):
    write_artifact(_artifact(3, serialized=OSError("disk full")), str(out))
  assert sorted(os.listdir(tmp_path)) == ["ex4", "ex4.old", "ex4.partial"]
  assert json.loads((out / "manifest.json").read_text())["v"] == 2


def test_an_out_that_is_a_link_stays_a_link_to_the_new_export(tmp_path):
  from seq2seq_jax.export import write_artifact
  write_artifact(_artifact(1), str(tmp_path / "real"))
  os.symlink("real", tmp_path / "link")
  write_artifact(_artifact(2), str(tmp_path / "link"))
  assert os.path.islink(tmp_path / "link")
  assert json.loads((tmp_path / "real" / "manifest.json").read_text())["v"] == 2


def test_export_refuses_a_directory_holding_anything_but_an_export(tmp_path):
  """An export beside the user's files (notes, a folder, another export nested in it) is
  refused in one line naming them: replacing DIR whole would delete them. An export's
  own files alone (sentencepiece models and beam functions included) are replaced. An
  export into an export is refused before it is written."""
  from seq2seq_jax.export import write_artifact
  out = tmp_path / "ex7"
  write_artifact(_artifact(1), str(out))
  for name in ("beam5.stablehlo", "sentencepiece.src.model", "sentencepiece.tgt.model"):
    (out / name).write_bytes(b"an older export's")
  write_artifact(_artifact(2), str(out))
  assert json.loads((out / "manifest.json").read_text())["v"] == 2
  assert sorted(os.listdir(out)) == ["greedy.stablehlo", "manifest.json", "params.npz",
                                     "vocab.json"]
  (out / "notes.txt").write_text("mine")
  (out / "plots").mkdir()
  with pytest.raises(UserError, match=f"--out '{out}/inner' is inside the export '{out}', which "
                     "could then no longer be replaced by the next export to it: pick an --out "
                     "outside it.$"):
    write_artifact(_artifact(1), str(out / "inner"))
  write_artifact(_artifact(1), str(tmp_path / "inner"))
  os.replace(tmp_path / "inner", out / "inner")  # one moved in all the same
  manifest = (out / "inner" / "manifest.json").read_text()
  (out / "inner" / "manifest.json").unlink()  # an export that lost its manifest is one still
  with pytest.raises(UserError, match="is inside the export"):
    write_artifact(_artifact(1), str(out / "inner" / "deeper"))
  (out / "inner" / "manifest.json").write_text(manifest)
  webapp = tmp_path / "webapp"  # a manifest.json and params.npz that are no export's
  webapp.mkdir()
  (webapp / "manifest.json").write_text('{"name": "my app"}')
  (webapp / "params.npz").write_text("mine")
  write_artifact(_artifact(1), str(webapp / "export"))
  shutil.rmtree(webapp)
  (out / "z.txt").write_text("mine too")
  with pytest.raises(UserError) as refused:
    write_artifact(_artifact(3), str(out))
  message = str(refused.value)
  assert "\n" not in message
  assert "inner, notes.txt, plots" in message and "and 1 more" in message
  assert "move them" in message and "another --out" in message
  assert json.loads((out / "manifest.json").read_text())["v"] == 2
  assert (out / "notes.txt").read_text() == "mine"
  assert json.loads((out / "inner" / "manifest.json").read_text())["v"] == 1
  assert sorted(os.listdir(tmp_path)) == ["ex7"]  # no staging folder left beside it


def test_an_export_that_lost_its_manifest_is_replaced_and_a_lone_vocab_json_is_not(tmp_path):
  """Loading an export without manifest.json says to export again to DIR; export then
  refused DIR. Its functions say it is an export; a folder holding only a file by an
  export's name (a vocab.json of the user's) is refused, naming it."""
  from seq2seq_jax.export import write_artifact
  out = tmp_path / "ex"
  write_artifact(_artifact(1), str(out))
  (out / "manifest.json").unlink()
  write_artifact(_artifact(2), str(out))
  assert json.loads((out / "manifest.json").read_text())["v"] == 2
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "vocab.json").write_text("{}")
  with pytest.raises(UserError, match=f"^--out '{mine}' holds vocab.json, not an export "
                     r"\(neither its manifest.json nor params.npz beside its functions\); "
                     "delete them, or name a new or empty directory.$"):
    write_artifact(_artifact(3), str(mine))
  assert (mine / "vocab.json").read_text() == "{}"
  (mine / "vocab.json").unlink()
  for name in ("model_v1.stablehlo", "params.npz"):  # .stablehlo files of the user's own
    (mine / name).write_text("mine")
  with pytest.raises(UserError, match="holds an entry that is not an export's "
                                      r"\(model_v1.stablehlo\)"):
    write_artifact(_artifact(3), str(mine))
  assert sorted(os.listdir(mine)) == ["model_v1.stablehlo", "params.npz"]


def test_a_file_put_in_dir_while_the_export_is_written_stays(tmp_path):
  """DIR is checked again just before the swap: a file the user saved there while the
  export was being written is not deleted with the older export."""
  from seq2seq_jax.errors import UserError
  from seq2seq_jax.export import write_artifact
  out = tmp_path / "ex7"
  write_artifact(_artifact(1), str(out))

  class SavedMeanwhile(_FakeExported):
    def serialize(self) -> bytes:
      (out / "notes.txt").write_text("mine")
      return super().serialize()

  artifact = _artifact(2)
  artifact.exported = {"greedy": SavedMeanwhile(b"stablehlo")}
  with pytest.raises(UserError, match=r"holds an entry that is not an export's \(notes\.txt\)"):
    write_artifact(artifact, str(out))
  assert (out / "notes.txt").read_text() == "mine"
  assert json.loads((out / "manifest.json").read_text())["v"] == 1
  assert sorted(os.listdir(tmp_path)) == ["ex7"]  # the staging folder went


def test_the_next_export_removes_what_a_killed_export_left(tmp_path):
  """A killed export leaves its hidden staging folder (and, killed between two renames,
  the retired one): the next export to DIR removes those of dead processes on this host,
  not a live process's (an export running beside it) nor another host's."""
  import platform
  import subprocess
  from seq2seq_jax.export import write_artifact
  host = platform.node().replace(".", "_")
  dead = subprocess.Popen(["true"])
  dead.wait()
  left = [f".ex5.0a1b2c3d.{dead.pid}@{host}.partial", f".ex5.0a1b2c3e.{dead.pid}@{host}.old"]
  kept = [f".ex5.0a1b2c3d.{os.getppid()}@{host}.partial",  # a live export's
          f".ex5.0a1b2c3d.{dead.pid}@{host}-2.partial",  # host-2's, whose name starts as ours
          f".ex6.0a1b2c3d.{dead.pid}@{host}.partial"]  # another DIR's
  for name in left + kept:
    (tmp_path / name).mkdir()
    (tmp_path / name / "params.npz").write_bytes(b"big")
  write_artifact(_artifact(1), str(tmp_path / "ex5"))
  assert sorted(os.listdir(tmp_path)) == sorted(["ex5"] + kept)


# The loader in a fresh process: what it translates, and which modules it imported.
LOADER = textwrap.dedent("""
    import json, sys
    from seq2seq_jax.exported import ExportedTranslator
    translator = ExportedTranslator.load(sys.argv[1])
    texts = json.loads(sys.stdin.read())
    out = {"greedy": translator.translate(texts), "beam": translator.translate(texts, beam=%d),
           "warnings": translator.input_warnings(texts),
           "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                             ("flax", "orbax", "optax", "seq2seq_jax", "tensorstore"))}
    print(json.dumps(out))
""" % BEAM)


@pytest.fixture(scope="module")
def exported_dir(trained_workdir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export") / "tiny")
  result = run_cli("export", "--workdir", trained_workdir, "--out", out,
                   "--beam-sizes", f"{BEAM},2")
  assert result.returncode == 0, result.stderr
  assert "exported checkpoint" in result.stdout
  return out


@pytest.mark.slow
def test_export_then_load_in_a_fresh_process_translates_as_translate(trained_workdir, exported_dir):
  texts = sentences_200()
  stdin = "\n".join(texts) + "\n"
  greedy = run_cli("translate", "--workdir", trained_workdir, input_text=stdin)
  beam = run_cli("translate", "--workdir", trained_workdir, "--beam", str(BEAM), input_text=stdin)
  assert greedy.returncode == 0 and beam.returncode == 0, greedy.stderr + beam.stderr
  loaded = subprocess.run([sys.executable, "-c", LOADER, exported_dir], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert loaded.returncode == 0, loaded.stderr
  out = json.loads(loaded.stdout)
  assert out["greedy"] == greedy.stdout.split("\n")[:-1]
  assert out["beam"] == beam.stdout.split("\n")[:-1]
  assert out["beam"] != out["greedy"] or len(set(out["greedy"])) > 1  # not all one text
  # translate's warnings, word for word: one unknown-characters line, one truncation
  assert [w for w in out["warnings"]] == [line.removeprefix("warning: ") for line in
                                          greedy.stderr.splitlines() if line.startswith("warning:")]
  assert not [m for m in out["modules"] if m.split(".")[0] in ("flax", "orbax", "optax")]
  assert set(out["modules"]) <= {"seq2seq_jax", "seq2seq_jax.exported", "seq2seq_jax.vocab",
                                 "seq2seq_jax.errors"}


@pytest.mark.slow
def test_the_manifest_describes_the_artifact(exported_dir, trained_workdir):
  manifest = json.load(open(os.path.join(exported_dir, "manifest.json")))
  assert manifest["beam_sizes"] == [2, BEAM]
  assert sorted(manifest["functions"]) == ["beam2", f"beam{BEAM}", "encoder", "greedy"]
  assert manifest["shapes"]["src_BxS"] == "int32[b, s]"
  assert manifest["decode_max_len"] == 41  # tiny: max_target_len 40 + 1
  assert manifest["checkpoint"]["which"] == "best"
  assert manifest["checkpoint"]["workdir"] == os.path.abspath(trained_workdir)
  assert manifest["model"]["latent_dim"] == 32 and manifest["model"]["attention"] == "general"
  assert {"seq2seq_jax", "jax", "jaxlib", "numpy"} <= set(manifest["versions"])
  # cpu always; cuda where this host could lower it, else a note says why not
  assert "cpu" in manifest["platforms"]
  assert "cuda" in manifest["platforms"] or "cuda" in manifest["platform_notes"]
  for name, entry in manifest["functions"].items():
    assert os.path.getsize(os.path.join(exported_dir, entry["file"])) > 0
    assert entry["platforms"] == manifest["platforms"]
    assert entry["inputs"]["src_BxS"] == "int32[b, s]"
  assert manifest["functions"]["greedy"]["outputs"] == ["int32[b, 41]"]
  params = np.load(os.path.join(exported_dir, "params.npz"))
  assert sum(params[k].size for k in params.files) == manifest["params"]["count"]


@pytest.mark.slow
def test_a_split_sentences_model_translates_long_texts_in_sentences_as_translate(
    exported_dir, trained_workdir, tmp_path):
  """A model trained with split_sentences (the libreoffice recipes) decodes a long text
  sentence by sentence in translate; the export and the server did the same text cut."""
  import shutil
  from seq2seq_jax.inference import load_trained
  split = str(tmp_path / "split")
  shutil.copytree(exported_dir, split)
  manifest = json.load(open(os.path.join(split, "manifest.json")))
  assert manifest["settings"]["split_sentences"] is False  # what the tiny model trained with
  manifest["settings"]["split_sentences"] = True
  json.dump(manifest, open(os.path.join(split, "manifest.json"), "w"))
  texts = ["Twelve. Three hundred and forty-five. Nine hundred and ninety-nine. Eighty.",
           "twelve", ""]
  exported = ExportedTranslator.load(split)
  translator, params, _ = load_trained(trained_workdir)
  expected = translator.translate(params, texts, split_sentences=True)
  assert len(expected[0].split()) > len(translator.translate(params, texts[:1])[0].split())
  assert exported.translate(texts) == expected
  from seq2seq_jax.decode import make_beam_decoder
  beam = make_beam_decoder(translator.model, translator.decode_max_len, BEAM)
  assert exported.translate(texts, beam=BEAM) == translator.translate(
      params, texts, decoder=beam, split_sentences=True)
  assert exported.input_warnings(texts) == translator.input_warnings(texts, split_sentences=True)


@pytest.mark.slow
def test_exported_translate_checks_beam_and_needs_no_more_rows_than_texts(exported_dir, monkeypatch):
  translator = ExportedTranslator.load(exported_dir)
  with pytest.raises(TypeError, match="beam must be a whole number or None, got 3.0"):
    translator.translate(["twelve"], beam=3.0)  # was KeyError: 'beam3.0'
  rows = []
  decode = translator.decode_ids
  monkeypatch.setattr(translator, "decode_ids",
                      lambda src_BxS, beam=None: rows.append(len(src_BxS)) or decode(src_BxS, beam))
  translator.translate(["twelve"], batch_size=65536)
  translator.translate(["twelve", "two", "three"])
  assert rows == [1, 4]  # a power of two that holds the texts, as translate pads


@pytest.mark.slow
def test_one_artifact_any_batch_and_length(exported_dir):
  """The symbolic batch and source length: shapes never exported one by one."""
  translator = ExportedTranslator.load(exported_dir)
  src_NxS, _ = translator.encode_sources(["twelve", "three hundred and forty-five"])
  for rows, width in ((1, 7), (3, src_NxS.shape[1]), (5, 33)):
    src_BxS = np.zeros((rows, width), np.int32)
    n = min(rows, 2)
    cut = min(width, src_NxS.shape[1])
    src_BxS[:n, :cut] = src_NxS[:n, :cut]
    assert translator.decode_ids(src_BxS).shape == (rows, 41)
    assert translator.decode_ids(src_BxS, beam=2).shape == (rows, 41)
  carries, enc_BxSxH, mask_BxS = translator.encode(np.ones((2, 5), np.int32) * 4)
  assert enc_BxSxH.shape == (2, 5, 32) and mask_BxS.shape == (2, 5)
  assert [np.shape(part) for part in carries[0]] == [(2, 32), (2, 32)]
  with pytest.raises(UserError, match="beam 7 was not exported") as refused:
    translator.translate(["one"], beam=7)
  assert isinstance(refused.value, ValueError)  # what it raised before, still caught


def _damage_params(directory):  # cut short, as by a full disk or an interrupted copy
  path = os.path.join(directory, "params.npz")
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def _damage_function(directory):
  open(os.path.join(directory, "greedy.stablehlo"), "wb").write(b"not a jax export\n")


def _damage_vocab(directory):
  open(os.path.join(directory, "vocab.json"), "w").write("[]")


def _damage_manifest(directory):
  path = os.path.join(directory, "manifest.json")
  manifest = json.load(open(path))
  del manifest["settings"]
  json.dump(manifest, open(path, "w"))


def _mix_params(directory):  # another model's params.npz: an array of another shape
  path = os.path.join(directory, "params.npz")
  with np.load(path) as arrays:
    params = {key: arrays[key] for key in arrays.files}
  params["output_dense/bias"] = params["output_dense/bias"][:3]
  np.savez(path, **params)


def _swap_functions(first, second):  # a function file copied over another's
  def damage(directory):
    shutil.copyfile(os.path.join(directory, f"{first}.stablehlo"),
                    os.path.join(directory, f"{second}.stablehlo"))
  return damage


def _mix_vocab(directory):  # another export's vocab.json: a target vocabulary of another size
  path = os.path.join(directory, "vocab.json")
  vocab = json.load(open(path))
  vocab["tgt"] = vocab["tgt"][:-1]
  json.dump(vocab, open(path, "w"))


@pytest.mark.slow
@pytest.mark.parametrize("damage, named, reason", [
    (_damage_params, "params.npz", "is damaged (zipfile.BadZipFile"),
    (_damage_function, "greedy.stablehlo", "is damaged"),
    (_damage_vocab, "vocab.json", "is damaged"),
    (_damage_manifest, "manifest.json", "is damaged (KeyError: 'settings')"),
    (_mix_params, "params.npz", "does not fit"),
    (_mix_vocab, "vocab.json", "does not fit the model: its tgt vocabulary has"),
    (_swap_functions("encoder", "greedy"), "greedy.stablehlo", "is not the greedy function: it gives"),
    (_swap_functions("beam2", "encoder"), "encoder.stablehlo",
     "is not the encoder function: it gives int32[b, "),
])
def test_a_damaged_export_is_named_in_one_line(exported_dir, tmp_path, capsys, damage, named,
                                               reason):
  """Loading it, and serving it, say which file is wrong and to export again."""
  import shutil
  from tests.conftest import cli_in_process
  damaged = str(tmp_path / "damaged")
  shutil.copytree(exported_dir, damaged)
  damage(damaged)
  with pytest.raises(UserError) as refused:
    ExportedTranslator.load(damaged)
  message = str(refused.value)
  assert f"{os.path.join(damaged, named)} {reason}" in message
  assert message.endswith("export again.") and "\n" not in message
  code, _, err = cli_in_process(capsys, "serve", "--exported", damaged, "--port", "0")
  assert code == 2 and err == f"seq2seq-jax serve: error: {message}\n"


@pytest.mark.slow
def test_export_refuses_clearly(trained_workdir, tmp_path):
  bad = run_cli("export", "--workdir", trained_workdir, "--out", str(tmp_path / "x"),
                "--beam-sizes", "0")
  assert bad.returncode == 2 and "positive whole numbers" in bad.stderr
  (tmp_path / "notes.txt").write_text("mine")
  taken = run_cli("export", "--workdir", trained_workdir, "--out", str(tmp_path))
  assert taken.returncode == 2 and "not an export" in taken.stderr
  assert (tmp_path / "notes.txt").read_text() == "mine"
  from seq2seq_jax.export import write_artifact
  beside = tmp_path / "beside"  # an export, and the user's file in it
  write_artifact(_artifact(1), str(beside))
  (beside / "notes.txt").write_text("mine")
  kept = run_cli("export", "--workdir", trained_workdir, "--out", str(beside))
  assert kept.returncode == 2 and kept.stderr == (
      f"seq2seq-jax export: error: --out '{beside}' holds an entry that is not an export's "
      "(notes.txt), which replacing it would delete: move it elsewhere, or pick another "
      "--out.\n")
  assert (beside / "notes.txt").read_text() == "mine"


def test_a_length_penalty_without_beams_is_refused_as_translate_refuses_it(tmp_path, capsys):
  """`--beam-sizes none --length-penalty 1` exported (and served) silently, where translate
  refuses --length-penalty without --beam."""
  from tests.conftest import cli_in_process
  for command in (["export", "--out", str(tmp_path / "x")], ["serve", "--port", "0"]):
    code, out, err = cli_in_process(capsys, *command[:1], "--workdir", str(tmp_path / "none"),
                                    *command[1:], "--beam-sizes", "none", "--length-penalty", "1")
    assert code == 2 and out == "" and err.splitlines() == [
        f"seq2seq-jax {command[0]}: error: --length-penalty applies to beam search, and "
        "--beam-sizes none exports no beam: give beam sizes, or leave --length-penalty out."]


def test_an_empty_list_of_beam_sizes_or_buckets_is_refused_not_taken_for_none(tmp_path, capsys):
  """`--beam-sizes "$SIZES"` with SIZES unset exported greedy alone, silently; `none` is how
  to say it."""
  from tests.conftest import cli_in_process
  for command, flag in ((["export", "--out", str(tmp_path / "x")], "--beam-sizes"),
                        (["serve", "--port", "0"], "--beam-sizes"),
                        (["serve", "--port", "0"], "--batch-buckets"),
                        (["serve", "--port", "0"], "--length-buckets")):
    code, out, err = cli_in_process(capsys, *command[:1], "--workdir", str(tmp_path / "none"),
                                    *command[1:], flag, "")
    assert code == 2 and out == "" and err.splitlines() == [
        f"seq2seq-jax {command[0]}: error: {flag} takes positive whole numbers separated by "
        "commas (e.g. 1,4,16), got ''."], (flag, err)


@pytest.mark.slow
def test_an_export_for_another_platform_is_refused_when_loaded(trained_workdir, tmp_path, capsys):
  """Lowered for tpu alone on this CPU host, it loaded and failed at the first
  translation with jax's ValueError (serve: as a warm-up failure, with an out-of-memory
  hint); load names the platforms and the flag that makes one for this machine."""
  from jax import export as jax_export
  from tests.conftest import cli_in_process
  here = jax_export.default_export_platform()
  other = "tpu" if here != "tpu" else "cpu"
  out = str(tmp_path / "elsewhere")
  made = run_cli("export", "--workdir", trained_workdir, "--out", out, "--platforms", other,
                 "--beam-sizes", "none")
  assert made.returncode == 0, made.stderr
  assert json.load(open(os.path.join(out, "manifest.json")))["platforms"] == [other]
  with pytest.raises(UserError) as refused:
    ExportedTranslator.load(out)
  hint = f"{here} (or cpu,cuda)" if here in ("cpu", "cuda") else here
  assert str(refused.value) == (f"{out} was exported for platforms {other}, not this "
                                f"machine's {here}: export it again with --platforms {hint}.")
  code, _, err = cli_in_process(capsys, "serve", "--exported", out, "--port", "0")
  assert code == 2 and err == f"seq2seq-jax serve: error: {refused.value}\n"


def test_an_exported_beam_decodes_with_the_export_s_length_penalty():
  """test_decode's table model, where the length penalty decides: alpha 0 picks the short
  output, the default 0.6 the long one."""
  import jax.numpy as jnp
  from seq2seq_jax import export
  from seq2seq_jax import model as model_lib
  from seq2seq_jax.vocab import END_ID, START_ID
  from tests.conftest import tiny_config
  from tests.test_decode import _table_params
  a, eps = 4, 1e-9
  table = np.full((6, 6), 1 / 6)
  table[START_ID] = [eps, eps, 0.3, eps, 0.6, 0.1]
  table[a] = [eps, eps, 0.45, eps, 0.3, 0.25]
  model = model_lib.build_model(tiny_config(attention="none", embed_dim=6, latent_dim=6), 7, 6)
  params = flatten_params(_table_params(model, table / table.sum(axis=1, keepdims=True)))
  src = jnp.array([[4, 5, 6]], jnp.int32)
  for alpha, expected in ((0.0, [[END_ID, 0, 0, 0]]), (0.6, [[a, END_ID, 0, 0]])):
    beam = export._functions(model, 4, (2,), length_penalty=alpha)["beam2"]
    np.testing.assert_array_equal(beam(params, src), expected)


def test_the_workdir_module_names_an_export_by_the_loader_s_manifest():
  from seq2seq_jax.exported import MANIFEST_FILE
  from seq2seq_jax.workdir import EXPORT_MANIFEST
  assert EXPORT_MANIFEST == MANIFEST_FILE


def test_the_platforms_to_lower_for_are_checked_in_the_library_too():
  """build_artifact's platforms, as export --platforms: each once, none unknown (a typo
  wrote an artifact no machine could run, found only at load)."""
  from seq2seq_jax.export import check_platforms
  assert check_platforms(("cpu", "cuda", "cpu")) == ("cpu", "cuda")
  for bad in ((), ("tpuu",), ("cpu", "CPU")):
    with pytest.raises(UserError, match="platforms: one or more of cpu, cuda, rocm and tpu"):
      check_platforms(bad)
  with pytest.raises(UserError, match="--platforms takes cpu, cuda, rocm and tpu, comma-separated; got 'x'"):
    check_platforms(("x",), "x")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_export_that_cannot_be_written_names_its_directory(tmp_path):
  """`export --out /proc/x` named the hidden staging folder beside DIR
  ('/proc/.x.d69f320a.30046@vm.partial')."""
  from seq2seq_jax.export import write_artifact
  with pytest.raises(OSError) as caught:
    write_artifact(None, "/proc/x")  # /proc takes no new folder: fails before any file
  assert caught.value.filename == "/proc/x"


def _translator_of(seen: list, **settings) -> ExportedTranslator:
  """An ExportedTranslator of a character vocabulary, without jax.export: its greedy
  function records the source batches it is given and outputs "x" for every row."""
  import types
  from seq2seq_jax.vocab import END_ID
  manifest = {"settings": {"max_source_len": 40, "bucket_width": 0, "source_lowercase": False,
                           **settings},
              "decode_max_len": 3, "beam_sizes": [], "platforms": ["cpu"],
              "checkpoint": {"step": 1}}
  vocab = {"tokenizer": "char", "src": list("abcdefghij. "), "tgt": list("x")}
  translator = ExportedTranslator(manifest, vocab, {}, {"greedy": types.SimpleNamespace(call=len)})

  def greedy(params, src_BxS):
    seen.append(np.array(src_BxS))
    return np.tile(np.array([[4, END_ID, 0]], np.int32), (len(src_BxS), 1))

  translator._calls = {"greedy": greedy}
  return translator


def test_exported_blank_inputs_translate_to_empty_lines():
  """Blank texts came back as the model's output for an empty source, where translate
  gives an empty line."""
  assert _translator_of([]).translate(["", "  ", "ab"]) == ["", "", "x"]


def test_exported_bucket_width_never_pads_past_the_longest_input():
  """An export with bucket_width 8 translating "ab" alone crashed with numpy's broadcast
  error: the bucket's width was wider than the encoded texts."""
  seen = []
  translator = _translator_of(seen, bucket_width=8)
  assert translator.translate(["abcdefghij", "ab"], batch_size=1) == ["x", "x"]
  assert [src.shape[1] for src in seen] == [8, 10]  # "ab" in a bucket of 8; 16 capped at 10
  assert translator.translate(["ab"]) == ["x"]


def test_exported_inputs_are_cut_to_max_source_len_as_translate_cuts_them():
  """An over-long input reached the exported model whole, where translate cuts it to
  max_source_len: the two translated it differently."""
  seen = []
  translator = _translator_of(seen, max_source_len=3)
  src_NxS, lengths_N = translator.encode_sources(["abcdef", "ab"])
  assert src_NxS.tolist() == [[4, 5, 6], [4, 5, 0]] and lengths_N.tolist() == [3, 2]
  translator.translate(["abcdef"])
  assert [src.tolist() for src in seen] == [[[4, 5, 6]]]


def test_an_export_of_a_newer_format_is_refused_saying_to_upgrade(tmp_path):
  """A newer export loaded and failed on its first unknown field, as a damaged one."""
  from seq2seq_jax.exported import FORMAT, FORMAT_VERSION
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"format": FORMAT, "format_version": FORMAT_VERSION + 1}))
  with pytest.raises(UserError, match=f"written in export format {FORMAT_VERSION + 1}, newer "
                     f"than this loader's {FORMAT_VERSION}; upgrade seq2seq_jax."):
    ExportedTranslator.load(str(tmp_path))


def test_an_export_from_before_split_sentences_translates_long_inputs_cut():
  """A manifest without the key (an older export) was read as a split_sentences model."""
  seen = []
  translator = _translator_of(seen)
  assert translator.split_sentences is False
  assert translator.translate(["ab. cd."]) == ["x"] and len(seen[0]) == 1


def _tiny_artifact(monkeypatch, config_overrides=None, **options):
  """build_artifact of an untrained tiny model, its functions not lowered (the slow tests
  lower them)."""
  import types
  from seq2seq_jax import export
  from seq2seq_jax import model as model_lib
  from seq2seq_jax.inference import Translator
  from seq2seq_jax.vocab import Vocab
  from tests.conftest import tiny_config
  monkeypatch.setattr(export, "_export_one", lambda fn, flat_params, platforms:
                      types.SimpleNamespace(call=fn))
  monkeypatch.setattr(export, "_describe", lambda exported: {})
  config = tiny_config(**(config_overrides or {}))
  src, tgt = Vocab(list("abc")), Vocab(list("xy"))
  translator = Translator(config, src, tgt, model_lib.build_model(config, len(src), len(tgt)))
  return export.build_artifact(translator, {}, 7, platforms=("cpu",), **options)


def test_the_manifest_lists_each_beam_size_once_in_order(monkeypatch):
  """`--beam-sizes 5,2,5` wrote [5, 2, 5] in the manifest."""
  artifact = _tiny_artifact(monkeypatch, beam_sizes=(5, 2, 5))
  assert artifact.manifest["beam_sizes"] == [2, 5]
  assert artifact.beam_sizes == (2, 5)


def test_the_manifest_of_a_split_sentences_model_says_so(monkeypatch):
  """Its export recorded split_sentences false: the exported model cut long texts where
  translate splits them into sentences."""
  artifact = _tiny_artifact(monkeypatch, {"split_sentences": True}, beam_sizes=())
  assert artifact.manifest["settings"]["split_sentences"] is True
  assert artifact.split_sentences is True
  assert _tiny_artifact(monkeypatch, beam_sizes=()).manifest["settings"]["split_sentences"] is False


def test_the_manifest_records_the_length_penalty_exported_with(monkeypatch):
  """`export --length-penalty 1` recorded 0.0 in the manifest."""
  artifact = _tiny_artifact(monkeypatch, beam_sizes=(2,), length_penalty=1.0)
  assert artifact.manifest["length_penalty"] == 1.0
