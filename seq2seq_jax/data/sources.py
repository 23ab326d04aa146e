"""Data sources: every `--data SPEC` is parsed here into (source, target) text pairs.

Sources (`--data SPEC`):
  numbers:LANG  English number words -> LANG number words (num2words), embedded.
  anki:PATH     manythings.org/Tatoeba `English<TAB>Other[<TAB>attribution]` files.
  tsv:PATH      any `source<TAB>target` UTF-8 file.
  libreoffice:LANG[:DIR]  LibreOffice's help pages, English -> LANG (data/libreoffice.py).
  gettext:PATH  (msgid, msgstr) pairs of GNU gettext catalogs: PATH is one .mo file or a
                directory whose *.mo files are read in sorted order, e.g.
                /usr/share/locale/fr/LC_MESSAGES (English -> French UI messages), or a
                .deb package holding catalogs (libreoffice-l10n-fr_*.deb). Kept:
                single messages (no header, no plural forms; a msgctxt is dropped) that
                are translated and differ from their source, with no control character
                (newline, tab) and no format placeholder (%s, %1$d, %(name)s, %%, %1, {0},
                {name}, $VAR, ${VAR}), after no-break spaces (U+00A0, U+202F) become
                spaces, surrounding whitespace is stripped and a single accelerator
                marker is removed (LibreOffice's "Ou~vrir", GTK's "_Open"). The first catalog holding
                a source wins; pairs are sorted by source, then split as anki/tsv.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import struct
from collections import Counter

import numpy as np

from seq2seq_jax.config import Config
from seq2seq_jax.data.tasks import TASKS
from seq2seq_jax.errors import DataError

Pair = tuple[str, str]
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, str]:
  """'numbers:fr' -> ('numbers', 'fr'); checks the kind."""
  if not isinstance(spec, str):
    raise TypeError(f"a data spec is a str such as 'numbers:fr' or 'tsv:PATH', got {spec!r}.")
  kind, sep, arg = spec.partition(":")
  if kind in TASKS and not arg:  # embedded tasks take no argument
    return kind, ""
  if not sep or not arg or kind not in ("numbers", "anki", "tsv", "gettext",
                                            "libreoffice", "series"):
    raise DataError(f"data spec '{spec}' is not understood: use numbers:LANG "
                    "(e.g. numbers:fr), anki:PATH (e.g. anki:fra.txt), tsv:PATH, "
                    "gettext:PATH (.mo catalogs, e.g. gettext:/usr/share/locale/fr/LC_MESSAGES), "
                    "libreoffice:LANG[:DIR] (LibreOffice's help, e.g. libreoffice:fr), "
                    "series:PATH (a CSV) or one of the tasks addition, echo, reverse.")
  # a path after the kind is not expanded by the shell (tsv:~/pairs.tsv): expanded here
  if kind in ("anki", "tsv", "gettext", "series"):
    arg = os.path.expanduser(arg)
  elif kind == "libreoffice" and ":" in arg:
    lang, _, directory = arg.partition(":")
    arg = f"{lang}:{os.path.expanduser(directory)}"
  return kind, arg


def spec_paths(spec: str) -> list[str]:
  """The files or folders a data spec reads, as given (none for the embedded data sets,
  nor for libreoffice:LANG's default folder)."""
  kind, arg = parse_spec(spec)
  if kind in ("tsv", "anki", "gettext", "series"):
    return [arg]
  if kind == "libreoffice" and ":" in arg:  # libreoffice:LANG:DIR
    return [arg.partition(":")[2]]
  return []


def _num2words_language(lang: str):
  from num2words import CONVERTER_CLASSES, num2words  # a data dependency only
  if lang not in CONVERTER_CLASSES:
    raise DataError(f"numbers:{lang}: num2words has no language '{lang}'. "
                    f"Available: {', '.join(sorted(CONVERTER_CLASSES))}.")
  return lambda n: num2words(n, lang=lang)


def sample_numbers(config: Config) -> np.ndarray:
  """Distinct numbers in a seeded order; the splits are consecutive slices."""
  total = config.numbers_train + config.numbers_val + config.numbers_test
  if total > config.numbers_max + 1:
    raise DataError(f"numbers: {total} distinct pairs asked for but only "
                    f"{config.numbers_max + 1} numbers in 0..{config.numbers_max}; "
                    "lower numbers_train/val/test or raise numbers_max.")
  rng = np.random.default_rng([config.seed, 17])
  if config.numbers_sampling == "uniform":
    return rng.choice(config.numbers_max + 1, size=total, replace=False)
  # "digits": the digit count is uniform, so short numbers are not drowned out.
  max_digits = len(str(config.numbers_max))
  chosen: dict[int, None] = {}
  while len(chosen) < total:
    digits = rng.integers(1, max_digits + 1, size=4 * total)
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    high = np.minimum(10 ** digits - 1, config.numbers_max)
    draws = low + (rng.random(size=digits.shape) * (high - low + 1)).astype(np.int64)
    for n in draws.tolist():
      chosen.setdefault(n)
      if len(chosen) == total:
        break
  return np.fromiter(chosen, dtype=np.int64, count=total)


def number_pairs(lang: str, config: Config) -> tuple[list[Pair], list[Pair], list[Pair]]:
  to_target = _num2words_language(lang)
  to_english = _num2words_language("en")
  numbers = sample_numbers(config).tolist()
  pairs = [(to_english(n), to_target(n)) for n in numbers]
  a = config.numbers_train
  b = a + config.numbers_val
  return pairs[:a], pairs[a:b], pairs[b:]


ANKI_HINT = "Download e.g. fra-eng.zip from manythings.org/anki and pass anki:PATH/fra.txt."


def read_text(path: str, missing_hint: str | None = None) -> str:
  """A UTF-8 file's text; BOM and CRLF accepted; clear errors otherwise (missing_hint:
  what to do where the file does not exist; default: check the path)."""
  if not os.path.exists(path):
    hint = missing_hint or (f"Check the path (a relative one is read from {os.getcwd()})."
                            if not os.path.isabs(path) else "Check the path.")
    raise DataError(f"data file '{path}' does not exist. {hint}")
  if os.path.isdir(path):
    raise DataError(f"data file '{path}' is a directory, not a file.")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as error:
    raise DataError(f"data file '{path}' cannot be read: {error.strerror or error}. "
                    "Check its permissions.") from None
  text = decode_text(raw, path, "file")
  text = normalize_line_ends(text)
  if "\n\ufeff" in text:  # files with byte order marks joined (cat a b): one inside each
    line = text.count("\n", 0, text.index("\n\ufeff")) + 2
    more = text.count("\n\ufeff") - 1
    log.warning("warning: %s:%d: a byte order mark (U+FEFF) starts this line%s, as where files "
                "were joined; dropped (it would be read as a character of the text)", path, line,
                f" and {more} more" if more else "")
    text = text.replace("\n\ufeff", "\n")
  return text


def decode_text(raw: bytes, where: str, whole: str) -> str:
  """raw's UTF-8 text, a leading byte order mark dropped; else a DataError that begins with
  where (a path, "standard input") and names UTF-16 or UTF-32 text, binary data (a NUL
  byte) or the first byte that is not UTF-8, with how to re-encode it (whole: what raw is,
  "file" or "input")."""
  wide = _wide_encoding(raw)  # ASCII in UTF-16 without its byte order mark is valid UTF-8
  if wide:
    raise DataError(f"{where}: {wide[:6].upper()} text, not UTF-8; re-encode the {whole} as UTF-8, "
                    f"e.g. `iconv -f {wide} -t utf-8 IN > OUT`.")
  if b"\0" in raw:  # in no text of UTF-8 or a one-byte encoding: binary data
    where_nul = _position(raw, raw.index(b"\0"), "a NUL byte", whole)
    raise DataError(f"{where}:{where_nul}: is it a text file? Give a UTF-8 text file.")
  skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
  try:
    return raw[skip:].decode("utf-8")
  except UnicodeDecodeError as error:
    raise DataError(f"{where}:{_position(raw, error.start + skip, whole=whole)}; "
                    f"re-encode the {whole} as UTF-8, "
                    "e.g. `iconv -f latin1 -t utf-8 IN > OUT` for Latin-1 text.") from None


def normalize_line_ends(text: str) -> str:
  """text with "\n" line ends: CRLF (and the CRCRLF of a file converted twice) as one; a
  lone CR ends lines only in a text of old Mac line ends, with no LF: elsewhere it is a
  stray character inside a line (which the parsers name, and translate warns of)."""
  text = re.sub(r"\r+\n", "\n", text)
  return text if "\n" in text else text.replace("\r", "\n")


def text_lines(text: str) -> list[str]:
  """The lines of a text (normalize_line_ends'), the newline that ends the last one not
  starting another."""
  lines = normalize_line_ends(text).split("\n")
  if lines[-1] == "":
    lines.pop()
  return lines


def _position(raw: bytes, offset: int, what: str = "not UTF-8", whole: str = "file") -> str:
  """'LINE: WHAT (line, byte of the line, byte of the file: the byte)', counting from 1
  (whole: what raw is, the file or the input)."""
  line = raw.count(b"\n", 0, offset) + 1
  column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
  return (f"{line}: {what} (line {line}, byte {column} of the line, byte {offset + 1} of the "
          f"{whole}, counting from 1: {raw[offset:offset + 1]!r})")


def _wide_encoding(raw: bytes) -> str | None:
  """iconv's name for raw's UTF-32 or UTF-16 ("utf-32", "utf-16" with a byte order mark,
  else the byte order its NUL bytes in every other place, as UTF-16 gives ASCII, show), or
  None."""
  if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16's: FF FE
    return "utf-32"
  if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    return "utf-16"
  head = raw[:512]
  even, odd = head[0::2].count(0), head[1::2].count(0)
  # UTF-16's ASCII has its NULs on one side only, binary data on both; a few bytes with a
  # NUL prove neither (b"one\n\0x\n" read as UTF-16 is three CJK characters)
  if len(head) < 8 or max(even, odd) < len(head) // 4 or min(even, odd) > max(even, odd) // 8:
    return None
  name = "utf-16le" if odd > even else "utf-16be"
  try:
    sample = head[:len(head) // 2 * 2].decode(name)
  except UnicodeDecodeError:
    return None
  # text, not binary data with NULs on one side: printable characters and line ends
  printable = sum(c.isprintable() or c in "\t\r\n" for c in sample)
  return name if printable >= 0.9 * len(sample) else None


def tab_pairs(path: str, kind: str, num_samples: int = 0,
              skip_bad_lines: bool = False) -> list[Pair]:
  """Pairs from a tab-separated file (`anki` allows a third, attribution column)."""
  text = read_text(path, ANKI_HINT if kind == "anki" else None)
  pairs: list[Pair] = []
  bad = 0
  max_columns = 3 if kind == "anki" else 2
  for number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    columns = line.split("\t")
    blank = [not column.strip() for column in columns[:2]]  # spaces alone are no text
    if len(columns) < 2 or len(columns) > max_columns or any(blank) or "\r" in line:
      if not skip_bad_lines:
        want = "source<TAB>target" + ("[<TAB>attribution]" if kind == "anki" else "")
        found = (f"found {len(columns)} column(s)" if not 2 <= len(columns) <= max_columns
                 else f"found an empty {'source' if blank[0] else 'target'}" if any(blank)
                 else "found a carriage return (\\r) inside the line")
        raise DataError(f"{path}:{number}: expected {want}, {found}: {line[:60]!r}. Fix the "
                        "line (a run trained with --set skip_bad_lines=true skips such lines, "
                        "when it is evaluated too).")
      bad += 1
      continue
    pairs.append((columns[0], columns[1]))
    if num_samples and len(pairs) >= num_samples:
      break
  if bad:
    log.warning("%s: skipped %d malformed line(s)", path, bad)
  if not pairs:
    why = (f"all {bad} non-blank line(s) are malformed" if bad
           else "the file is empty or holds only blank lines")
    raise DataError(f"{path}: no usable source<TAB>target pair found ({why}).")
  return pairs


# ---------------------------------------------------------------------------
# gettext catalogs: the software's own translations of its messages
# ---------------------------------------------------------------------------

MO_MAGIC = 0x950412DE
# printf (%s %1$d %-10.2f %(name)s %<PRIu64> %%), Qt (%1), Python/ICU ({0} {name}), shell ($VAR)
_PLACEHOLDER_RE = re.compile(
    r"%(?:\(\w+\))?(?:\d+\$)?[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
    r"(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcsSpnm%]"
    r"|%<\w+>|%\d|\{\w*\}|\$\{?[A-Za-z_]\w*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # newline, tab and the other controls


def read_mo(path: str, raw: bytes | None = None) -> list[tuple[str, str]]:
  """(msgid, msgstr) of every entry of a GNU .mo file (or of its bytes raw, path naming
  it), in file order, decoded with the catalog's charset; plural entries keep their
  NUL-separated forms, contexts their EOT."""
  if raw is None:
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except OSError as error:
      raise DataError(f"gettext catalog '{path}' cannot be read: {error.strerror or error}.") from None
  # msgfmt writes the host's byte order: the magic number tells which
  endian = next((e for e in "<>" if raw[:4] == struct.pack(e + "I", MO_MAGIC)), None)
  if endian is None:
    raise DataError(f"{path}: not a gettext .mo file (it does not start with the .mo magic "
                    "number 0x950412de); compile .po files with msgfmt.")
  try:
    revision, count, ids_at, strs_at = struct.unpack_from(endian + "4I", raw, 4)
    if revision >> 16 > 1:
      raise DataError(f"{path}: .mo format revision {revision >> 16}.{revision & 0xFFFF} is not "
                      "supported (0 or 1).")
    entries = []
    for i in range(count):
      strings = []
      for table_at in (ids_at, strs_at):
        length, at = struct.unpack_from(endian + "2I", raw, table_at + 8 * i)
        if at + length > len(raw):
          raise struct.error(f"string {i} lies past the end of the file")
        strings.append(raw[at:at + length])
      entries.append(tuple(strings))
  except struct.error as error:
    raise DataError(f"{path}: corrupt .mo file (truncated or bad offsets: {error}).") from None
  header = next((msgstr for msgid, msgstr in entries if msgid == b""), b"")
  charset = re.search(rb"charset=([\w.:-]+)", header)
  encoding = charset.group(1).decode("ascii") if charset else "utf-8"
  try:
    return [(msgid.decode(encoding), msgstr.decode(encoding)) for msgid, msgstr in entries]
  except LookupError:
    raise DataError(f"{path}: unknown charset '{encoding}' in the catalog header.") from None
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: a message is not valid {encoding} as its header declares "
                    f"({error.reason} at byte {error.start}).") from None


def _catalogs(path: str) -> list[tuple[str, bytes | None]]:
  """(name, bytes or None to read from the file) of the catalogs at path, in sorted order."""
  if not os.path.exists(path):
    raise DataError(f"gettext catalog path '{path}' does not exist. Pass a .mo file, a "
                    "directory of them (e.g. gettext:/usr/share/locale/fr/LC_MESSAGES) or a "
                    ".deb package holding them (e.g. libreoffice-l10n-fr).")
  if path.endswith(".deb") and os.path.isfile(path):
    from seq2seq_jax.data.libreoffice import deb_tar
    with deb_tar(path) as tar:
      found = sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers()
                     if m.isfile() and m.name.endswith(".mo"))
    if not found:
      raise DataError(f"package '{path}' holds no .mo catalog.")
    return found
  if not os.path.isdir(path):
    return [(path, None)]
  files = sorted(os.path.join(path, name) for name in os.listdir(path)
                 if name.endswith(".mo") and os.path.isfile(os.path.join(path, name)))
  if not files:
    raise DataError(f"gettext catalog directory '{path}' holds no .mo file.")
  return [(file, None) for file in files]


# A keyboard accelerator marker: LibreOffice's "~" (Ou~vrir) or GTK's "_" (_Open), before a
# letter or digit; stripped where the message holds exactly one of them.
_ACCELERATOR_RE = re.compile(r"[~_](?=[^\W_])")


def strip_accelerator(text: str) -> str:
  """'Ou~vrir' -> 'Ouvrir', '_Open' -> 'Open'; text with several '~'/'_' is kept as it is."""
  markers = _ACCELERATOR_RE.findall(text)
  if len(markers) == 1 and text.count(markers[0]) == 1:
    return _ACCELERATOR_RE.sub("", text)
  return text


def _clean_message(text: str) -> str:
  return strip_accelerator(text.replace("\u00a0", " ").replace("\u202f", " ").strip())


def gettext_skip_reason(msgid: str, msgstr: str) -> str | None:
  """Why a catalog entry is not a natural-language pair (None: it is one)."""
  if not msgid:
    return "header"
  if "\0" in msgid:
    return "plural"
  source, target = _clean_message(msgid.rpartition("\x04")[2]), _clean_message(msgstr)
  if not source or not target:
    return "untranslated"
  if source == target:
    return "identical"
  if _CONTROL_RE.search(source) or _CONTROL_RE.search(target):
    return "multi-line"
  if _PLACEHOLDER_RE.search(source) or _PLACEHOLDER_RE.search(target):
    return "placeholder"
  return None


def gettext_pairs(path: str, num_samples: int = 0, seed: int = 0,
                  skip_bad_files: bool = False) -> list[Pair]:
  """Natural-language (source, translation) pairs of the .mo catalogs at path, sorted by
  source (see the module docstring); num_samples > 0 keeps a seeded sample of that many."""
  by_source: dict[str, str] = {}
  skipped: Counter[str] = Counter()
  bad_files = []
  files = _catalogs(path)
  for file, raw in files:
    try:
      entries = read_mo(file, raw)
    except DataError:
      if not skip_bad_files:
        raise
      bad_files.append(os.path.basename(file))
      continue
    for msgid, msgstr in entries:
      reason = gettext_skip_reason(msgid, msgstr)
      if reason is None:
        source = _clean_message(msgid.rpartition("\x04")[2])
        if source in by_source:
          reason = "duplicate"
        else:
          by_source[source] = _clean_message(msgstr)
      if reason:
        skipped[reason] += 1
  if bad_files:
    log.warning("%s: skipped %d unreadable catalog(s): %s", path, len(bad_files),
                ", ".join(bad_files))
  log.info("%s: %d pairs from %d catalog(s); skipped %s", path, len(by_source),
           len(files) - len(bad_files),
           ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none")
  if not by_source:
    raise DataError(f"{path}: no translated single-line message without placeholders "
                    f"found in {len(files) - len(bad_files)} catalog(s).")
  pairs = sorted(by_source.items())
  if num_samples and num_samples < len(pairs):
    chosen = np.random.default_rng([seed, 31]).choice(len(pairs), num_samples, replace=False)
    pairs = [pairs[i] for i in sorted(chosen.tolist())]
  return pairs
