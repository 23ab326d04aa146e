"""LibreOffice's help as a parallel corpus (`--data libreoffice:LANG[:DIR]`) from Debian packages.

Debian ships LibreOffice's help pages as HTML, one package per language
(`libreoffice-help-en-us`, `libreoffice-help-fr`, ...). Every paragraph and heading of a
page carries an id (`par_id3151191`, `hd_id3146936`) that is the same in every language,
so aligning the English page with the LANG page by id gives English -> LANG pairs.

Where the files come from (no dpkg needed: a .deb is an `ar` archive holding a
compressed tar, and the standard library reads both):
  libreoffice:fr        the two .deb files in the cache directory ($SEQ2SEQ_JAX_DATA, or
                        ~/.cache/seq2seq_jax), fetched by `seq2seq-jax data download libreoffice:fr`;
  libreoffice:fr:DIR    DIR holding the two .deb files, or the pages extracted from them
                        (a tree with `usr/share/libreoffice/help/en-US` and `.../fr`, or DIR
                        itself holding `en-US/` and `fr/`).
The UI strings of `libreoffice-l10n-LANG` (.mo catalogs) are read by the gettext reader
(`gettext:PATH.deb`); config `libreoffice_ui=true` adds them to the training split.

Pairs: the text of each element with a `hd_id`/`par_id` id, without hidden parts (e.g.
the macOS variant of a shortcut), whitespace normalised; kept when both sides hold a
letter and differ. Splits are drawn **by page** (seeded, by val_fraction/test_fraction of
the pairs): pages repeat boilerplate paragraphs, and a split by pair would leak them into
the test set. Within a split a source is kept once; a source already in an earlier split
(train, then val, then test) is dropped from the later one.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import os
import re
import tarfile
from html.parser import HTMLParser

import numpy as np

from seq2seq_jax.errors import DataError

log = logging.getLogger(__name__)

Pair = tuple[str, str]
HELP_ROOT = "usr/share/libreoffice/help"
_ID_RE = re.compile(r"^(?:hd|par)_id")
_LETTER_RE = re.compile(r"[^\W\d_]")
_VOID_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr".split())


def cache_dir() -> str:
  """Where `data download` puts packages and `libreoffice:LANG` looks for them."""
  root = os.environ.get("SEQ2SEQ_JAX_DATA") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "seq2seq_jax")
  return os.path.join(root, "libreoffice")


def help_package(lang: str) -> str:
  """Debian's help package of a language: 'fr' -> 'libreoffice-help-fr', 'en-US' -> '...-en-us'."""
  return f"libreoffice-help-{lang.lower()}"


def packages_for(lang: str) -> list[str]:
  """The packages `data download libreoffice:LANG` fetches: both help packages and LANG's UI catalogs."""
  return [help_package("en-us"), help_package(lang), f"libreoffice-l10n-{lang.lower()}"]


# ---------------------------------------------------------------------------
# .deb files: an ar archive with control.tar.* and data.tar.*
# ---------------------------------------------------------------------------

def read_ar(path: str) -> dict[str, bytes]:
  """Members of an `ar` archive (a .deb), by name."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as error:
    raise DataError(f"package '{path}' cannot be read: {error.strerror or error}.") from None
  if not raw.startswith(b"!<arch>\n"):
    raise DataError(f"{path}: not a Debian package (no ar archive header); download it again "
                    "with `seq2seq-jax data download`.")
  members, at = {}, 8
  while at + 60 <= len(raw):
    header = raw[at:at + 60]
    try:
      name = header[:16].decode("ascii").strip().rstrip("/")
      size = int(header[48:58].decode("ascii").strip())
    except ValueError:
      raise DataError(f"{path}: corrupt package (bad ar member header at byte {at}); "
                      "download it again.") from None
    at += 60
    if at + size > len(raw):
      raise DataError(f"{path}: truncated package (member '{name}' ends past the file); "
                      "download it again.")
    members[name] = raw[at:at + size]
    at += size + size % 2
  if raw[at:].strip(b"\n"):  # less than a member header left: the file was cut inside one
    raise DataError(f"{path}: truncated package (a member header cut short at byte {at}); "
                    "download it again.")
  if not any(name.startswith("data.tar") for name in members):
    raise DataError(f"{path}: truncated package (no data.tar member); download it again.")
  return members


def _decompress(name: str, blob: bytes, where: str) -> bytes:
  try:
    if name.endswith(".xz"):
      return lzma.decompress(blob)
    if name.endswith(".gz"):
      return gzip.decompress(blob)
    if name.endswith(".bz2"):
      return bz2.decompress(blob)
    if name.endswith(".tar"):
      return blob
  except (lzma.LZMAError, OSError, EOFError, ValueError) as error:
    raise DataError(f"{where}: corrupt {name} ({error}); download the package again.") from None
  raise DataError(f"{where}: {name} is compressed in a way Python cannot read without an extra "
                  "library; extract the package (`dpkg-deb -x FILE DIR`) and pass libreoffice:LANG:DIR.")


def deb_tar(path: str, part: str = "data") -> tarfile.TarFile:
  """The data (or control) tar of a .deb, opened in memory."""
  members = read_ar(path)
  name = next((n for n in members if n.startswith(f"{part}.tar")), None)
  if name is None:
    raise DataError(f"{path}: no {part}.tar member; is it a Debian package?")
  try:
    return tarfile.open(fileobj=io.BytesIO(_decompress(name, members[name], path)))
  except tarfile.TarError as error:
    raise DataError(f"{path}: corrupt {name} ({error}); download the package again.") from None


def deb_version(path: str) -> str:
  """'Package Version' from a .deb's control file."""
  with deb_tar(path, "control") as tar:
    member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "control"), None)
    fields = {}
    if member is not None:
      for line in tar.extractfile(member).read().decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
          fields[key.strip()] = value.strip()
  return f"{fields.get('Package', os.path.basename(path))} {fields.get('Version', '?')}".strip()


# ---------------------------------------------------------------------------
# Help pages: {page path: {paragraph id: text}}
# ---------------------------------------------------------------------------

class _Paragraphs(HTMLParser):
  """The text of every element whose id is a paragraph or heading id, hidden parts left out."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.texts: dict[str, str] = {}
    self._stack: list[tuple[str, str | None, bool]] = []  # (tag, collecting id, hidden)
    self._parts: dict[str, list[str]] = {}

  def handle_starttag(self, tag, attrs):
    if tag in _VOID_TAGS:
      if tag == "br":
        self._add(" ")
      return
    attrs = dict(attrs)
    hidden = (self._stack[-1][2] if self._stack else False) or "hidden" in attrs
    ident = attrs.get("id") or ""
    collecting = ident if _ID_RE.match(ident) and not hidden else None
    if collecting is not None:
      self._parts[collecting] = []
    self._stack.append((tag, collecting, hidden))

  def handle_endtag(self, tag):
    # pop to the matching open tag (HTML tolerates unclosed <p>, <li>, ...)
    for depth in range(len(self._stack) - 1, -1, -1):
      if self._stack[depth][0] == tag:
        for _, collecting, _ in self._stack[depth:]:
          if collecting is not None:
            text = " ".join("".join(self._parts.pop(collecting)).split())
            self.texts.setdefault(collecting, text)  # an id repeated in a page: the first
        del self._stack[depth:]
        return

  def handle_data(self, data):
    self._add(data)

  def _add(self, text):
    if self._stack and self._stack[-1][2]:
      return
    for _, collecting, _ in reversed(self._stack):
      if collecting is not None:
        self._parts[collecting].append(text)
        return

  def close(self):
    super().close()
    self.handle_endtag(self._stack[0][0]) if self._stack else None


def page_paragraphs(html: str) -> dict[str, str]:
  parser = _Paragraphs()
  parser.feed(html)
  parser.close()
  return parser.texts


def _pages_from_tar(tar: tarfile.TarFile, lang_dir: str, where: str) -> dict[str, dict[str, str]]:
  pages = {}
  prefix = None
  for member in tar:
    name = member.name.lstrip("./")
    if not (member.isfile() and name.endswith(".html")):
      continue
    parts = name.split("/")
    # .../help/<LANG>/<page path>
    if len(parts) > 5 and "/".join(parts[:4]) == HELP_ROOT and parts[4].lower() == lang_dir.lower():
      prefix = parts[4]
      pages["/".join(parts[5:])] = page_paragraphs(
          tar.extractfile(member).read().decode("utf-8", "replace"))
  if prefix is None:
    raise DataError(f"{where} holds no help pages under {HELP_ROOT}/{lang_dir}/; is it "
                    f"{help_package(lang_dir)}?")
  return pages


def _pages_from_dir(root: str) -> dict[str, dict[str, str]]:
  pages = {}
  for directory, _, files in os.walk(root):
    for file in files:
      if file.endswith(".html"):
        path = os.path.join(directory, file)
        with open(path, encoding="utf-8", errors="replace") as f:
          pages[os.path.relpath(path, root).replace(os.sep, "/")] = page_paragraphs(f.read())
  return pages


def _find_debs(directory: str, lang: str) -> dict[str, str]:
  """{help package name: .deb path} of the en-US and LANG help packages in directory."""
  found = {}
  for name in sorted(os.listdir(directory)):
    for package in (help_package("en-us"), help_package(lang)):
      if name.endswith(".deb") and name.split("_")[0] == package:
        found[package] = os.path.join(directory, name)
  return found


def _lang_dir(root: str, lang: str) -> str | None:
  for base in (os.path.join(root, HELP_ROOT), root):
    if os.path.isdir(base):
      for name in os.listdir(base):
        if name.lower() == lang.lower() and os.path.isdir(os.path.join(base, name)):
          return os.path.join(base, name)
  return None


def missing_files_message(lang: str, directory: str) -> str:
  return (f"libreoffice:{lang}: the help packages {help_package('en-us')} and {help_package(lang)} "
          f"are not in {directory}: run `seq2seq-jax data download libreoffice:{lang}` first, or "
          f"pass libreoffice:{lang}:DIR with DIR holding the two .deb files or their extracted pages.")


def help_pages(lang: str, directory: str | None = None):
  """(English pages, LANG pages, {language: package and version or 'directory'}) of the help."""
  directory = directory or cache_dir()
  if lang.lower() in ("en", "en-us"):
    raise DataError("libreoffice:LANG translates English help into LANG: pick another "
                    "language, e.g. libreoffice:fr.")
  if not os.path.isdir(directory):
    raise DataError(missing_files_message(lang, directory))
  debs = _find_debs(directory, lang)
  sides, versions = [], {}
  for side, package in (("en-US", help_package("en-us")), (lang, help_package(lang))):
    if package in debs:
      with deb_tar(debs[package]) as tar:
        sides.append(_pages_from_tar(tar, side, debs[package]))
      versions[side] = deb_version(debs[package])
      continue
    extracted = _lang_dir(directory, side)
    if extracted is None:
      raise DataError(missing_files_message(lang, directory))
    sides.append(_pages_from_dir(extracted))
    versions[side] = f"directory {os.path.abspath(extracted)}"
  return sides[0], sides[1], versions


def aligned_pages(english: dict[str, dict[str, str]], other: dict[str, dict[str, str]]
                  ) -> dict[str, list[Pair]]:
  """{page: [(English, LANG) pairs in English page order]}, pages present in both."""
  pages = {}
  for page in sorted(english.keys() & other.keys()):
    theirs = other[page]
    pairs = [(source, theirs[ident]) for ident, source in english[page].items()
             if ident in theirs and source and theirs[ident] and source != theirs[ident]
             and _LETTER_RE.search(source) and _LETTER_RE.search(theirs[ident])]
    if pairs:
      pages[page] = pairs
  return pages


def split_by_page(pages: dict[str, list[Pair]], val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[list[Pair], list[Pair], list[Pair]]:
  """Train/val/test pairs from whole pages in a seeded order: test pages first until they
  hold test_fraction of the pairs, then validation pages, the rest training; sources
  distinct within and across splits (an earlier split keeps a repeated source)."""
  names = sorted(pages)
  order = np.random.default_rng([seed, 41]).permutation(len(names))
  total = sum(len(pairs) for pairs in pages.values())
  test_pages, val_pages, train_pages = [], [], []
  held = 0
  for position, i in enumerate(order.tolist()):
    name = names[i]
    if position == len(names) - 1 and not train_pages:  # training keeps a page at least
      train_pages.append(name)
    elif held < test_fraction * total:
      test_pages.append(name)
    elif held < (test_fraction + val_fraction) * total:
      val_pages.append(name)
    else:
      train_pages.append(name)
    held += len(pages[name])
  seen: set[str] = set()
  splits = []
  for chosen in (train_pages, val_pages, test_pages):
    kept = []
    for name in sorted(chosen):
      for source, target in pages[name]:
        if source not in seen:
          seen.add(source)
          kept.append((source, target))
    splits.append(kept)
  if not splits[0]:
    raise DataError("libreoffice: no training pair left after the held-out pages; lower "
                    "val_fraction/test_fraction.")
  return splits[0], splits[1], splits[2]


def ui_catalogs(lang: str, directory: str | None = None) -> str:
  """The path gettext_pairs reads LANG's UI messages from: the libreoffice-l10n-LANG .deb
  beside the help packages, or its extracted resource directory."""
  directory = directory or cache_dir()
  package = f"libreoffice-l10n-{lang.lower()}"
  if os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      if name.endswith(".deb") and name.split("_")[0] == package:
        return os.path.join(directory, name)
    resources = os.path.join(directory, "usr/lib/libreoffice/program/resource")
    found = _lang_dir(resources, lang) if os.path.isdir(resources) else None
    if found and os.path.isdir(os.path.join(found, "LC_MESSAGES")):
      return os.path.join(found, "LC_MESSAGES")
  raise DataError(f"libreoffice_ui=true: {package} is not in {directory}: run `seq2seq-jax data "
                  f"download libreoffice:{lang}` (it fetches it too), or set libreoffice_ui=false.")


def libreoffice_splits(arg: str, val_fraction: float, test_fraction: float, seed: int):
  """(train, val, test, versions) of `libreoffice:LANG[:DIR]`."""
  lang, _, directory = arg.partition(":")
  if not lang:
    raise DataError("libreoffice:LANG needs a language, e.g. libreoffice:fr.")
  english, other, versions = help_pages(lang, directory or None)
  pages = aligned_pages(english, other)
  if not pages:
    raise DataError(f"libreoffice:{arg}: no paragraph id is shared by the English and {lang} "
                    "pages; are these the help packages of the same LibreOffice version?")
  train, val, test = split_by_page(pages, val_fraction, test_fraction, seed)
  log.info("libreoffice:%s: %d pages, %d/%d/%d train/val/test pairs (%s)", arg, len(pages),
           len(train), len(val), len(test), "; ".join(versions.values()))
  return train, val, test, versions


# ---------------------------------------------------------------------------
# Getting the packages: `seq2seq-jax data download libreoffice:LANG`
# ---------------------------------------------------------------------------

def download(lang: str, directory: str | None = None) -> tuple[str, list[str]]:
  """Fetches the help packages of English and LANG and LANG's UI catalogs with `apt-get
  download` (no root, no install, no dependencies) into directory (default cache_dir());
  returns (directory, the .deb files). Files already there are kept, unless damaged (cut
  short, not an ar archive): those are downloaded again and removed once the new ones are
  there; a folder made for a download that failed is removed."""
  import shutil
  directory = os.path.abspath(directory or cache_dir())
  packages = packages_for(lang)
  if lang.lower() in ("en", "en-us"):
    raise DataError("libreoffice:LANG translates English help into LANG: pick another "
                    "language, e.g. libreoffice:fr.")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise DataError(f"'{directory}' is a file, not a directory: give a folder for the .deb "
                    "files.")
  have = {name.split("_")[0]: os.path.join(directory, name)
          for name in (os.listdir(directory) if os.path.isdir(directory) else [])
          if name.endswith(".deb")}
  damaged = {}
  for package in packages:
    if package in have:
      try:
        read_ar(have[package])
      except DataError as error:  # its own message says to download it again: so we do
        log.warning("warning: %s; downloading it again", str(error).partition(";")[0])
        damaged[package] = have.pop(package)
  wanted = [package for package in packages if package not in have]
  if wanted:
    apt = shutil.which("apt-get")
    if apt is None:
      raise DataError(f"apt-get is not on this machine: get the Debian packages {', '.join(packages)} "
                      f"(e.g. from packages.debian.org) into {directory}, or extract them and pass "
                      f"libreoffice:{lang}:DIR.")
    made = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    try:
      _apt_download(apt, wanted, lang, directory, have)
    except BaseException:
      if made:  # the folder made for this download, if nothing else came into it
        with contextlib.suppress(OSError):
          os.rmdir(directory)
      raise
  for package, path in damaged.items():
    if have.get(package) != path:  # the new one came under another name (another version)
      with contextlib.suppress(OSError):
        os.remove(path)
  return directory, [have[package] for package in packages if package in have]


def _apt_download(apt: str, wanted: list[str], lang: str, directory: str,
                  have: dict[str, str]) -> None:
  """`apt-get download` of the wanted packages into a scratch folder of directory, moved
  into it once all are there; have gets their paths."""
  import subprocess
  import tempfile
  with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as scratch:
    done = subprocess.run([apt, "download", *wanted], cwd=scratch, capture_output=True, text=True)
    if done.returncode != 0:
      errors = [line for line in done.stderr.splitlines() if line.startswith("E:")]
      why = (errors or done.stderr.strip().splitlines() or ["no message"])[-1]
      raise DataError(f"apt-get download {' '.join(wanted)} failed ({why}); check the language "
                      f"code (Debian names it libreoffice-help-{lang.lower()}) and that apt can "
                      "reach its archive (`apt-get update` may be needed).")
    for name in os.listdir(scratch):
      if name.endswith(".deb"):
        os.replace(os.path.join(scratch, name), os.path.join(directory, name))
        have[name.split("_")[0]] = os.path.join(directory, name)
