"""libreoffice:LANG: help pages read from Debian packages (built here, tiny), aligned by
paragraph id, split by page; the UI catalogs; `data download`."""

import io
import json
import lzma
import os
import stat
import tarfile

import pytest

from seq2seq_jax import data as data_lib
from seq2seq_jax.data import libreoffice
from seq2seq_jax.errors import DataError
from tests.conftest import cli_in_process, tiny_config
from tests.test_data import write_mo

VERSION = "4:7.4.7-1+test1"


def page(title_id, title, *paragraphs) -> str:
  """A help page as LibreOffice lays it out: a header outside the content, ids on h1/p."""
  body = "".join(f'<p id="{ident}" class="paragraph" dir="auto">{html}</p>\n'
                 for ident, html in paragraphs)
  return ('<!DOCTYPE html><html><head><title>x</title></head><body>'
          '<header id="TopLeftHeader"><p dir="auto">LibreOffice 7.4 Help</p></header>'
          f'<div id="DisplayArea"><h1 id="{title_id}" dir="auto">{title}</h1>\n{body}'
          '<img src="a.svg" alt="Icon"></div></body></html>')


def _tar_xz(files: dict[str, bytes]) -> bytes:
  raw = io.BytesIO()
  with tarfile.open(fileobj=raw, mode="w") as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return lzma.compress(raw.getvalue())


def write_deb(directory, package, files: dict[str, bytes], version=VERSION) -> str:
  """A Debian package as dpkg-deb builds it: an ar archive of debian-binary,
  control.tar.xz and data.tar.xz."""
  control = f"Package: {package}\nVersion: {version}\nArchitecture: all\n".encode()
  members = [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"./control": control})),
             ("data.tar.xz", _tar_xz({f"./{name}": content for name, content in files.items()}))]
  out = b"!<arch>\n"
  for name, content in members:
    out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode() + content
    out += b"\n" if len(content) % 2 else b""
  path = os.path.join(directory, f"{package}_{version.replace(':', '%3a')}_all.deb")
  with open(path, "wb") as f:
    f.write(out)
  return path


# English and French versions of three help pages: the same ids in both languages.
EN = {
    "text/shared/open.html": page(
        "hd_id1", "Open",
        ("par_id2", '<span class="avis">Opens a local or remote file.</span>'),
        ("par_id3", 'Choose <span class="menuitem">File - Open</span>.'),
        ("par_id4", '<span hidden="true">Command</span><span>Ctrl</span>+O'),
        ("par_id5", "LibreOffice"),                 # the same in French: dropped
        ("par_id6", "2023"),                        # no letter: dropped
        ("par_id7", "Only in English."),            # no French paragraph: dropped
        ("par_id8", "Press  Enter\n   to   confirm."),  # whitespace normalised
        ("par_id9", "Related Topics")),             # boilerplate: on every page
    "text/shared/save.html": page(
        "hd_id11", "Save",
        ("par_id12", "Saves the current document."),
        ("par_id9", "Related Topics"),
        ("par_id13", "Choose a &quot;format&quot; &amp; a name.")),
    "text/shared/print.html": page(
        "hd_id21", "Print",
        ("par_id22", "Prints the current document."),
        ("par_id9", "Related Topics")),
}
FR = {
    "text/shared/open.html": page(
        "hd_id1", "Ouvrir",
        ("par_id2", '<span class="avis">Ouvre un fichier local ou distant.</span>'),
        ("par_id3", 'Choisissez <span class="menuitem">Fichier - Ouvrir</span>.'),
        ("par_id4", '<span hidden="true">Commande</span><span>Ctrl</span>+O'),
        ("par_id5", "LibreOffice"),
        ("par_id6", "2023"),
        ("par_id8", "Appuyez sur Entrée pour confirmer."),
        ("par_id9", "Rubriques connexes")),
    "text/shared/save.html": page(
        "hd_id11", "Enregistrer",
        ("par_id12", "Enregistre le document actif."),
        ("par_id9", "Rubriques connexes"),
        ("par_id13", "Choisissez un «\u00a0format\u00a0» et un nom.")),
    "text/shared/print.html": page(
        "hd_id21", "Imprimer",
        ("par_id22", "Imprime le document actif."),
        ("par_id9", "Rubriques connexes")),
    "text/shared/only_fr.html": page("hd_id31", "Seulement en français"),
}
OPEN_PAIRS = [("Open", "Ouvrir"), ("Opens a local or remote file.", "Ouvre un fichier local ou distant."),
              ("Choose File - Open.", "Choisissez Fichier - Ouvrir."), ("Ctrl+O", "Ctrl+O"),
              ("Press Enter to confirm.", "Appuyez sur Entrée pour confirmer."),
              ("Related Topics", "Rubriques connexes")]


def help_files(lang, pages):
  return {f"{libreoffice.HELP_ROOT}/{lang}/{name}": html.encode() for name, html in pages.items()}


@pytest.fixture
def packages(tmp_path):
  """A directory holding the English and French help packages and the French UI catalogs."""
  directory = tmp_path / "debs"
  directory.mkdir()
  write_deb(directory, "libreoffice-help-en-us", help_files("en-US", EN))
  write_deb(directory, "libreoffice-help-fr", help_files("fr", FR))
  mo = write_mo(tmp_path / "sw.mo", {"~Open": "~Ouvrir", "Save _As...": "Enregistrer _sous...",
                                     "Opens a local or remote file.": "Ouvrir un fichier",
                                     "file_name_here": "nom_de_fichier_ici"})
  with open(mo, "rb") as f:
    ui = {"usr/lib/libreoffice/program/resource/fr/LC_MESSAGES/sw.mo": f.read()}
  write_deb(directory, "libreoffice-l10n-fr", ui)
  return str(directory)


def test_pages_align_by_paragraph_id_without_hidden_text(packages):
  english, french, versions = libreoffice.help_pages("fr", packages)
  pages = libreoffice.aligned_pages(english, french)
  # the hidden macOS variant is left out, so both sides read "Ctrl+O": dropped as identical
  assert pages["text/shared/open.html"] == [p for p in OPEN_PAIRS if p[0] != p[1]]
  assert pages["text/shared/save.html"][-1] == ("Choose a \"format\" & a name.",
                                                "Choisissez un « format » et un nom.")
  assert set(pages) == {"text/shared/open.html", "text/shared/save.html", "text/shared/print.html"}
  assert versions == {"en-US": f"libreoffice-help-en-us {VERSION}",
                      "fr": f"libreoffice-help-fr {VERSION}"}


def test_splits_are_whole_pages_with_sources_distinct_across_splits(packages):
  seen_pages = set()
  for seed in range(6):
    train, val, test, _ = libreoffice.libreoffice_splits(f"fr:{packages}", 0.3, 0.3, seed)
    sources = [s for s, _ in train + val + test]
    assert len(sources) == len(set(sources))  # "Related Topics" once, in the first split
    assert ("Related Topics", "Rubriques connexes") in train + val + test
    # a page's own paragraphs all land in one split
    for split in (train, val, test):
      titles = {s for s, _ in split} & {"Open", "Save", "Print"}
      for title, own in (("Open", "Opens a local or remote file."),
                         ("Save", "Saves the current document."),
                         ("Print", "Prints the current document.")):
        assert (title in titles) == (own in {s for s, _ in split})
      seen_pages.add(tuple(sorted(titles)))
  assert len(seen_pages) > 2  # the seed moves pages between splits


def test_fingerprints_and_package_versions_name_the_data(packages):
  config = tiny_config(data=f"libreoffice:fr:{packages}", val_fraction=0.3, test_fraction=0.3)
  info = data_lib.load_splits(config).info()
  assert info["packages"]["fr"] == f"libreoffice-help-fr {VERSION}"
  assert info == data_lib.load_splits(config).info()  # the same data, the same fingerprints
  others = [data_lib.load_splits(tiny_config(data=config.data, seed=seed, val_fraction=0.3,
                                             test_fraction=0.3)).info() for seed in range(1, 6)]
  assert any(other["fingerprints"] != info["fingerprints"] for other in others)  # pages moved
  assert all(sum(other["pairs"].values()) == sum(info["pairs"].values()) for other in others)


def test_an_extracted_directory_reads_as_the_packages(packages, tmp_path):
  tree = tmp_path / "extracted"
  for name in os.listdir(packages):
    if name.startswith("libreoffice-help"):
      with libreoffice.deb_tar(os.path.join(packages, name)) as tar:
        tar.extractall(tree, filter="data")
  from_debs = libreoffice.libreoffice_splits(f"fr:{packages}", 0.3, 0.3, 0)
  from_tree = libreoffice.libreoffice_splits(f"fr:{tree}", 0.3, 0.3, 0)
  assert from_tree[:3] == from_debs[:3]
  assert from_tree[3]["fr"].startswith("directory ")
  # DIR may also be the help directory itself, holding en-US/ and fr/
  help_dir = tree / libreoffice.HELP_ROOT
  assert libreoffice.libreoffice_splits(f"fr:{help_dir}", 0.3, 0.3, 0)[:3] == from_debs[:3]


def test_ui_catalogs_join_the_training_split_without_accelerators(packages):
  config = tiny_config(data=f"libreoffice:fr:{packages}", val_fraction=0.3, test_fraction=0.3,
                       libreoffice_ui=True)
  splits = data_lib.load_splits(config)
  assert ("Open", "Ouvrir") in splits.train + splits.val + splits.test  # from the help
  assert ("Save As...", "Enregistrer sous...") in splits.train  # "_" and "~" markers stripped
  assert ("file_name_here", "nom_de_fichier_ici") in splits.train  # several "_": not a marker
  # a UI source that is a help paragraph is not added again
  assert sum(s == "Opens a local or remote file." for s, _ in splits.train + splits.val + splits.test) == 1
  assert splits.info()["packages"]["ui"] == f"libreoffice-l10n-fr {VERSION}"


def test_gettext_reads_catalogs_inside_a_deb(packages):
  deb = next(os.path.join(packages, n) for n in os.listdir(packages) if "l10n" in n)
  assert ("Open", "Ouvrir") in data_lib.gettext_pairs(deb)


def test_missing_packages_name_the_download_command(tmp_path, capsys):
  with pytest.raises(DataError, match=r"seq2seq-jax data download libreoffice:fr"):
    libreoffice.help_pages("fr", str(tmp_path))
  with pytest.raises(DataError, match=r"not a Debian package"):
    (tmp_path / "libreoffice-help-en-us_1_all.deb").write_bytes(b"<html>")
    (tmp_path / "libreoffice-help-fr_1_all.deb").write_bytes(b"<html>")
    libreoffice.help_pages("fr", str(tmp_path))
  empty = tmp_path / "empty"
  empty.mkdir()
  code, out, err = cli_in_process(capsys, "train", "--data", f"libreoffice:de:{empty}",
                                  "--workdir", str(tmp_path / "run"))
  assert code == 2 and err.count("\n") == 1
  assert "seq2seq-jax data download libreoffice:de" in err


def test_truncated_package_is_named(packages, tmp_path):
  deb = next(os.path.join(packages, n) for n in os.listdir(packages) if "help-fr" in n)
  with open(deb, "rb") as f:
    raw = f.read()
  with open(deb, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(DataError, match=r"truncated package.*download it again"):
    libreoffice.help_pages("fr", packages)


def test_a_package_with_an_odd_sized_member_is_read_whole(tmp_path):
  """ar pads a member of odd size with a newline (a control.tar.xz of odd size is as common
  as one of even size): the member after it was read from one byte early, and the package
  called truncated."""
  def member(name, content):
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
    return header + content + (b"\n" if len(content) % 2 else b"")

  members = {"debian-binary": b"2.0\n", "control.tar.xz": b"odd", "data.tar.xz": b"payload"}
  path = tmp_path / "odd.deb"
  path.write_bytes(b"!<arch>\n" + b"".join(member(n, c) for n, c in members.items()))
  assert libreoffice.read_ar(str(path)) == members


def test_a_page_repeating_a_paragraph_id_keeps_its_first_text():
  """An id repeated in a page reads as its first paragraph (the English and the translated
  pages are aligned by id): the last one was kept instead."""
  html = page("hd_id1", "Open", ("par_id2", "Opens a file."), ("par_id2", "Opens a <b>folder</b>."))
  assert libreoffice.page_paragraphs(html) == {"hd_id1": "Open", "par_id2": "Opens a file."}


def fake_apt(tmp_path, monkeypatch, fail=False):
  """An `apt-get` on PATH that 'downloads' empty .deb files of the packages named."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  script = bindir / "apt-get"
  script.write_text("#!/bin/sh\n" + (
      'echo "E: Unable to locate package $3" >&2; exit 100\n' if fail else
      'shift\nfor p in "$@"; do echo "$p" > "${p}_1%3a2_all.deb"; done\n'))
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_data_download_fetches_the_three_packages(tmp_path, monkeypatch, capsys):
  fake_apt(tmp_path, monkeypatch)
  monkeypatch.setattr(libreoffice, "deb_version", lambda path: os.path.basename(path))
  monkeypatch.setenv("SEQ2SEQ_JAX_DATA", str(tmp_path / "cache"))
  code, out, err = cli_in_process(capsys, "data", "download", "libreoffice:fr")
  assert code == 0, err
  names = sorted(os.listdir(tmp_path / "cache" / "libreoffice"))
  assert names == [f"{p}_1%3a2_all.deb" for p in
                   ("libreoffice-help-en-us", "libreoffice-help-fr", "libreoffice-l10n-fr")]
  assert out.strip().endswith("ready: train with --data libreoffice:fr")


def test_data_download_fetches_a_damaged_package_again(tmp_path, monkeypatch, capsys):
  """A package cut short said "download it again", and `data download` kept it as it was.
  Now it is fetched again: under the same name it is replaced; under another (a newer
  version) the damaged one is removed once the new one is there. Sound ones are kept."""
  fake_apt(tmp_path, monkeypatch)
  monkeypatch.setattr(libreoffice, "deb_version", lambda path: os.path.basename(path))
  folder = tmp_path / "debs"
  folder.mkdir()
  cut_short = b"!<arch>\n" + b"data.tar.xz/".ljust(48) + b"999999".ljust(10) + b"`\n" + b"x" * 10
  (folder / "libreoffice-help-fr_1%3a2_all.deb").write_bytes(cut_short)
  (folder / "libreoffice-l10n-fr_1%3a1_all.deb").write_bytes(b"not an ar archive")
  member = lambda name, data: name.ljust(48) + str(len(data)).encode().ljust(10) + b"`\n" + data
  sound = b"!<arch>\n" + member(b"debian-binary/", b"2.0\n") + member(b"data.tar.xz/", b"xz")
  for cut, damage in ((sound[:-30], "a member header cut short at byte"),
                      (sound[:8 + 64], "no data.tar member")):
    (folder / "cut.deb").write_bytes(cut)
    with pytest.raises(DataError, match=damage):
      libreoffice.read_ar(str(folder / "cut.deb"))
  (folder / "cut.deb").unlink()
  (folder / "libreoffice-help-en-us_1%3a0_all.deb").write_bytes(sound)
  code, out, err = cli_in_process(capsys, "data", "download", "libreoffice:fr", "--dir", str(folder))
  assert code == 0, err
  assert sorted(os.listdir(folder)) == ["libreoffice-help-en-us_1%3a0_all.deb",
                                        "libreoffice-help-fr_1%3a2_all.deb",
                                        "libreoffice-l10n-fr_1%3a2_all.deb"]
  assert (folder / "libreoffice-help-fr_1%3a2_all.deb").read_text() == "libreoffice-help-fr\n"
  assert (folder / "libreoffice-help-en-us_1%3a0_all.deb").read_bytes() == sound
  assert "truncated package (member 'data.tar.xz' ends past the file); downloading it again" in err
  assert "not a Debian package (no ar archive header); downloading it again" in err


def test_data_download_errors_are_one_line(tmp_path, monkeypatch, capsys):
  fake_apt(tmp_path, monkeypatch, fail=True)
  code, _, err = cli_in_process(capsys, "data", "download", "libreoffice:xx", "--dir",
                                str(tmp_path / "d"))
  assert code == 2 and err.count("\n") == 1 and "Unable to locate package" in err
  monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
  code, _, err = cli_in_process(capsys, "data", "download", "libreoffice:fr", "--dir",
                                str(tmp_path / "d"))
  assert code == 2 and err.count("\n") == 1
  assert "libreoffice-help-en-us, libreoffice-help-fr, libreoffice-l10n-fr" in err
  assert "libreoffice:fr:DIR" in err
  assert not (tmp_path / "d").exists()  # nothing half-written, not even the folder, left
  (tmp_path / "again").mkdir()
  fake_apt(tmp_path / "again", monkeypatch, fail=True)
  (tmp_path / "mine").mkdir()  # a folder of the user's stays, empty or not
  code, _, _ = cli_in_process(capsys, "data", "download", "libreoffice:xx", "--dir",
                              str(tmp_path / "mine"))
  assert code == 2 and os.listdir(tmp_path / "mine") == []
  (tmp_path / "afile").write_text("x")
  code, _, err = cli_in_process(capsys, "data", "download", "libreoffice:fr", "--dir",
                                str(tmp_path / "afile"))
  assert code == 2 and err.strip().splitlines() == [
      f"seq2seq-jax data: error: '{tmp_path / 'afile'}' is a file, not a directory: give a "
      "folder for the .deb files."]


@pytest.mark.parametrize("spec, says", [
    ("foo", "'foo' is not one"),  # not a data spec: not the list of every spec
    ("numbers:fr", "numbers:fr needs no download")])
def test_data_download_of_something_else_names_what_it_fetches(capsys, spec, says):
  code, out, err = cli_in_process(capsys, "data", "download", spec)
  assert code == 2 and out == "" and err.count("\n") == 1
  assert "fetches libreoffice:LANG packages" in err and says in err and "anki:" not in err


def test_a_run_records_its_data_in_checkpoints_and_results(trained_workdir):
  """Every text run (here configs/tiny.py's numbers) stores what it read; libreoffice runs
  add the package versions (test_fingerprints_and_package_versions_name_the_data)."""
  from seq2seq_jax.checkpoint import Checkpointer
  from seq2seq_jax.workdir import CheckpointMeta
  with open(os.path.join(trained_workdir, "results.json")) as f:
    results = json.load(f)
  expected = data_lib.load_splits(tiny_config()).info()
  assert results["data"] == expected
  checkpointer = Checkpointer(trained_workdir, read_only=True)
  try:
    _, meta, _ = checkpointer.restore()
  finally:
    checkpointer.close()
  assert CheckpointMeta.from_json(meta).data == expected


DE = {
    "text/shared/open.html": page(
        "hd_id1", "Öffnen",
        ("par_id2", '<span class="avis">Öffnet eine lokale oder entfernte Datei.</span>'),
        ("par_id3", 'Wählen Sie <span class="menuitem">Datei - Öffnen</span>.'),
        ("par_id9", "Verwandte Themen")),
    "text/shared/save.html": page(
        "hd_id11", "Speichern",
        ("par_id12", "Speichert das aktuelle Dokument."),
        ("par_id9", "Verwandte Themen")),
    "text/shared/print.html": page(
        "hd_id21", "Drucken",
        ("par_id22", "Druckt das aktuelle Dokument."),
        ("par_id9", "Verwandte Themen")),
}


def test_the_german_config_reads_english_german_pairs_by_the_same_command_shape(tmp_path,
                                                                               monkeypatch):
  """configs/libreoffice_de.py is libreoffice_fr.py's recipe on libreoffice:de: the same
  cache directory and packages of German (help-de, l10n-de), the same page split."""
  from seq2seq_jax.config import load_config_file
  from tests.conftest import ROOT
  german = load_config_file(os.path.join(ROOT, "configs", "libreoffice_de.py"))
  french = load_config_file(os.path.join(ROOT, "configs", "libreoffice_fr.py"))
  assert german.data == "libreoffice:de"
  differing = {k for k, v in german.to_dict().items() if french.to_dict()[k] != v}
  assert differing <= {"data"}, differing
  assert libreoffice.packages_for("de") == ["libreoffice-help-en-us", "libreoffice-help-de",
                                            "libreoffice-l10n-de"]
  cache = tmp_path / "cache"
  monkeypatch.setenv("SEQ2SEQ_JAX_DATA", str(cache))
  (cache / "libreoffice").mkdir(parents=True)
  write_deb(cache / "libreoffice", "libreoffice-help-en-us", help_files("en-US", EN))
  write_deb(cache / "libreoffice", "libreoffice-help-de", help_files("de", DE))
  config = tiny_config(data=german.data, val_fraction=0.0, test_fraction=0.0)
  splits = data_lib.load_splits(config)
  assert ("Opens a local or remote file.", "Öffnet eine lokale oder entfernte Datei.") in splits.train
  assert ("Prints the current document.", "Druckt das aktuelle Dokument.") in splits.train
