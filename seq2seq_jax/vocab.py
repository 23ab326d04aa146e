"""Character, word or subword vocabularies with reserved pad / start / end / unknown ids.

Three tokenizers (config `tokenizer`):
  char  every character is a token (the Keras example's encoding).
  word  words and punctuation, by one regular expression, no lower-casing (below);
  sentencepiece  subword pieces of a SentencePiece model (unigram or BPE, the
        sentencepiece library) trained on the training split (below).

Words:
  - a word is a run of Unicode letters and digits ("naïve", "Straße", "42"), each with its
    combining marks (accents of NFD text, Indic vowel signs) and zero-width (non-)joiners
    ("می‌خواهم") kept: no token is a lone accent (vocabularies saved before 2026-12-06
    keep the rules they were built with, WORD_RULES below);
  - a number with inner separators stays whole ("3.14", "1,000", "10:30");
  - an apostrophe (' or ’) between two letters ends the word before it, French
    elision style: "l'homme" -> "l'" "homme", "don't" -> "don'" "t";
  - a hyphen between two letters or digits becomes the joiner token "@-@" (Moses'
    convention): "quatre-vingts" -> "quatre" "@-@" "vingts";
  - any other non-space character is a token of its own, with its marks; an emoji keeps
    its skin tone and its ZWJ sequence ("👨‍👩‍👧"), a flag its two letters; whitespace
    separates.

`detokenize` joins tokens with spaces, then removes the space before closing punctuation
(. , ! ? ; : ) ] } » ” ’ % …, Hindi । ॥, Arabic ، ؛ ؟, Urdu ۔), after opening punctuation
(( [ { « “ ‘ ¿ ¡, German „ ‚), on both sides of Chinese and Japanese fullwidth
punctuation (。，、！？：；「」『』（） ...), around "@-@", after an elided "l'", inside straight
double quotes (alternately opening and closing) and before the “ or ‘ that closes a
German „ or ‚. So detokenize(tokenize(s)) == s for ordinary sentences: single spaces, this
punctuation placed as in English (and in those scripts). It is not exact where spacing
carries no token:
  - runs of spaces, tabs, leading/trailing space and no-break spaces become one space or
    vanish; French spacing before ! ? ; : (e.g. "Va !", usually a no-break space) comes
    back as "Va!";
  - French guillemets lose their inner spaces ("« Oui »" -> "«Oui»");
  - abbreviations gain one ("i.e." -> "i. e."), and symbols not listed above get spaces
    around them ("and/or" -> "and / or", "$5" -> "$ 5", "C++" -> "C + +"), as do a lone
    apostrophe ("dogs' ") and a hyphen not between two letters or digits ("-5" -> "- 5").

Subwords (train_sentencepiece): ids 0-3 are SentencePiece's own pad, start, end and
unknown ids; no normalisation, no folding of spaces, every character of the training text
a piece, a space kept as the "▁" starting the next piece, so decode(encode(s)) == s exactly
("Va !", "« Oui »", "C++", "and/or", "  a  b "), but for a "▁" (U+2581) in s, which reads
as a space (warned of: SPACE_MARK_WARNING); a character never seen in training reads
as U+FFFD. The model's bytes (Vocab.model_proto) are the vocabulary: checkpoints, the
workdir and exports store them, and Vocab.from_sentencepiece rebuilds it. Training is
seeded and single-threaded: the same text gives the same bytes.

Metrics always compare detokenized text with the raw reference.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from seq2seq_jax.errors import UserError, is_whole_number

log = logging.getLogger(__name__)

PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TOKENIZERS = ("char", "word", "sentencepiece")
SENTENCEPIECE_MODELS = ("unigram", "bpe")

# What an unknown id reads as in decoded text, per tokenizer.
UNK_TEXT = {"char": "\ufffd", "word": "<unk>", "sentencepiece": "\ufffd"}
# Units of input_warnings: (what an unknown is, what max_source_len counts), per tokenizer.
_UNITS = {"char": ("characters", "characters"), "word": ("words", "words"),
          "sentencepiece": ("characters", "subword tokens")}
HYPHEN_JOINER = "@-@"


# The word rules a vocabulary was built with (CheckpointMeta.word_rules, an export's
# vocab.json): 2 keeps marks and emoji sequences in their token (_word_pattern); 1, before
# 2026-12-06, split each combining mark, joiner, skin tone and regional indicator off as a
# token of its own. A vocabulary saved without the field is 1: it keeps translating as it
# was trained.
WORD_RULES = 2


def word_rules_of(value: Any, where: str) -> int:
  """The word rules a saved vocabulary says it was built with (None: saved before the
  field, rules 1); a value this version does not know is refused in one line."""
  if value is None:
    return 1
  if isinstance(value, bool) or value not in range(1, WORD_RULES + 1):
    raise UserError(f"{where} was built with word rules {value!r}, which this seq2seq_jax "
                    f"does not know (it knows 1 to {WORD_RULES}): upgrade seq2seq_jax.")
  return int(value)


def _mark_class() -> str:
  """A regex character class of every Unicode combining mark (categories Mn, Mc, Me):
  accents written apart (NFD text), Indic vowel signs and viramas, variation selectors."""
  ranges: list[list[int]] = []
  for code in (*range(0x20000), *range(0xE0000, 0xE1000)):  # no marks lie elsewhere
    if unicodedata.category(chr(code))[0] == "M":
      if ranges and ranges[-1][1] == code - 1:
        ranges[-1][1] = code
      else:
        ranges.append([code, code])
  # BMP marks as one class (which re compiles to a bitmap) and astral ones behind a check
  # that the character is astral at all: one class of both tests range after range
  bmp = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges if b <= 0xFFFF)
  astral = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges if a > 0xFFFF)
  assert not any(a <= 0xFFFF < b for a, b in ranges)
  return f"(?:[{bmp}]|(?=[\\U00010000-\\U0010ffff])[{astral}])"


_LETTER = r"[^\W_]"  # a Unicode letter or digit (\w without the underscore)


@functools.cache
def _word_pattern(rules: int) -> re.Pattern:
  """The word tokenizer's regular expression under these rules, built at its first use:
  the table of combining marks takes a scan of Unicode, which a process reading no word
  vocabulary (a command's start-up) need not pay."""
  if rules < 2:
    return re.compile(rf"\d+(?:[.,:]\d+)+|{_LETTER}+(?:['’](?={_LETTER}))?"
                      rf"|(?P<joiner>(?<={_LETTER})-(?={_LETTER}))|\S")
  mark = _mark_class()
  # A word: a letter or digit, then letters, digits, combining marks and zero-width
  # (non-)joiners (ZWNJ inside Persian words, ZWJ in Indic half forms).
  in_word = rf"(?:{_LETTER}|{mark}|[\u200c\u200d])"
  # One symbol with what belongs to it: marks, emoji skin tones and tags, ZWJ sequences.
  symbol = rf"\S(?:{mark}|[\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]|\u200d\S)*"
  return re.compile(
      rf"\d+(?:[.,:]\d+)+"                             # 3.14  1,000  10:30
      rf"|{_LETTER}{in_word}*(?:['’](?={_LETTER}))?"     # a word, keeping an elision apostrophe: l'
      rf"|(?P<joiner>(?<={in_word})-(?={_LETTER}))"      # a hyphen inside a compound
      rf"|[\U0001f1e6-\U0001f1ff]{{2}}"                   # a flag: two regional indicators
      rf"|{symbol}")                                    # any other character: punctuation, symbols


# fullwidth punctuation of Chinese and Japanese carries its own spacing: no space on
# either side of it
FULLWIDTH_CLOSING = "。，、！？：；）」』》〉】〕．"
_FULLWIDTH_OPENING = "（「『《〈【〔"
_CLOSING = frozenset(".,!?;:)]}»”’%…" "।॥،؛؟۔" + FULLWIDTH_CLOSING)  # + Hindi, Arabic, Urdu
_OPENING = frozenset("([{«“‘¿¡„‚" + _FULLWIDTH_OPENING)
_NO_SPACE_AFTER = frozenset(FULLWIDTH_CLOSING)
_NO_SPACE_BEFORE = frozenset(_FULLWIDTH_OPENING)  # 他说「你好」：no space before 「 either
_LOW_QUOTES = {"„": "“", "‚": "‘"}  # German quotes: „Hallo“, ‚ja‘ (the closing one opens in English)
_CLOSING_OF = {"“": "”", "‘": "’"}  # Polish, Hungarian, Romanian: „Tak”
_ELISION = ("'", "’")


def word_tokenize(text: str, rules: int = WORD_RULES) -> list[str]:
  """Words and punctuation of text (see the module docstring; rules: WORD_RULES)."""
  return [HYPHEN_JOINER if m.group("joiner") else m.group()
          for m in _word_pattern(min(rules, WORD_RULES)).finditer(text)]


def detokenize(tokens: Iterable[str]) -> str:
  """Text of word tokens: spaces between them except around punctuation (see above)."""
  out: list[str] = []
  glue_next = True  # no space before the first token
  quote_open = False
  low_closers: list[str] = []  # the closing quotes of the German quotes open
  for token in tokens:
    if token == HYPHEN_JOINER:
      out.append("-")
      glue_next = True
      continue
    # a German „ closes with “, a Polish or Hungarian one with ”
    closing_quote = (token == '"' and quote_open) or (
        low_closers and token in (low_closers[-1], _CLOSING_OF[low_closers[-1]]))
    if not (glue_next or token in _CLOSING or token in _NO_SPACE_BEFORE or closing_quote):
      out.append(" ")
    out.append(token)
    if token == '"':
      quote_open = not quote_open
      glue_next = quote_open  # an opening quote sticks to what follows
    elif closing_quote:
      low_closers.pop()
      glue_next = False
    else:
      if token in _LOW_QUOTES:
        low_closers.append(_LOW_QUOTES[token])
      glue_next = (token in _OPENING or token in _NO_SPACE_AFTER
                   or (len(token) > 1 and token.endswith(_ELISION)))
  return "".join(out)


def tokenize(text: str, level: str, word_rules: int = WORD_RULES) -> list[str]:
  """Tokens of text at level "char" or "word" (subword pieces need their model: Vocab.tokenize)."""
  if level == "char":
    return list(text)
  if level == "word":
    return word_tokenize(text, word_rules)
  if level == "sentencepiece":
    raise ValueError("sentencepiece tokens come from a trained model: use Vocab.tokenize")
  raise ValueError(f"unknown tokenizer '{level}': use one of {', '.join(TOKENIZERS)}")


SENTENCEPIECE_SPACE = "\u2581"  # "▁": SentencePiece's mark of a space, which it reads as one
SPACE_MARK_WARNING = ("'\u2581' (U+2581, SentencePiece's mark of a space), which "
                      "tokenizer=sentencepiece reads as a space: it comes back as one")
_TOO_FEW_PIECES = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
                        seed: int = 0, what: str = "the training text") -> bytes:
  """The bytes of a SentencePiece model of texts, vocab_size pieces with the 4 specials
  (fewer, with a warning, where the text has fewer); the same bytes for the same arguments.

  Trained in memory, one thread, seeded, with SentencePiece's ids equal to ours (pad 0,
  start 1, end 2, unknown 3), no normalisation and no whitespace folding (exact text back),
  every character covered and unknowns decoded as U+FFFD."""
  import sentencepiece as spm  # only sentencepiece vocabularies need it

  if model_type not in SENTENCEPIECE_MODELS:
    raise ValueError(f"unknown sentencepiece model '{model_type}': use one of "
                     f"{', '.join(SENTENCEPIECE_MODELS)}")
  texts = [text for text in texts if text]
  if not texts:
    raise UserError(f"tokenizer=sentencepiece: {what} is empty; there is nothing to train on.")
  marked = sum(SENTENCEPIECE_SPACE in text for text in texts)
  if marked:
    log.warning("warning: %d text(s) of %s hold %s", marked, what, SPACE_MARK_WARNING)
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD_ID, bos_id=START_ID, eos_id=END_ID, unk_id=UNK_ID,
        pad_piece=SPECIAL_TOKENS[PAD_ID], bos_piece=SPECIAL_TOKENS[START_ID],
        eos_piece=SPECIAL_TOKENS[END_ID], unk_piece=SPECIAL_TOKENS[UNK_ID],
        unk_surface=UNK_TEXT["sentencepiece"], normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
  except RuntimeError as error:
    too_few = _TOO_FEW_PIECES.search(str(error))
    if too_few:
      raise UserError(f"vocab_size={vocab_size} is below the {too_few.group(2)} pieces "
                      f"SentencePiece needs for {what} (every character and the 4 special "
                      f"tokens): set vocab_size={too_few.group(2)} or more.") from None
    raise UserError(f"tokenizer=sentencepiece: training failed: {error}") from None
  proto = model.getvalue()
  pieces = len(Vocab.from_sentencepiece(proto))
  if pieces < vocab_size:
    log.warning("sentencepiece: vocab_size=%d is more than %s allows: the vocabulary has "
                "%d pieces", vocab_size, what, pieces)
  return proto


class Vocab:
  """Maps tokens (characters, words or subword pieces) to int ids and back; ids 0-3 are
  the special tokens."""

  def __init__(self, tokens: Sequence[str], start_text: str = "", level: str = "char",
               model_proto: bytes | None = None, word_rules: int = WORD_RULES):
    """start_text: what a START id in an output reads as ("\t" for Keras-example models,
    whose vocabulary has the start marker as an ordinary, predictable character).
    model_proto: level "sentencepiece"'s model, whose pieces are the tokens (tokens unused).
    word_rules: level "word"'s rules (WORD_RULES; 1 for a vocabulary saved before them)."""
    if level not in TOKENIZERS:
      raise ValueError(f"unknown tokenizer '{level}': use one of {', '.join(TOKENIZERS)}")
    self.level = level
    self.word_rules = word_rules
    self.start_text = start_text
    self.model_proto = model_proto
    self._processor = None
    if level == "sentencepiece":
      if model_proto is None:
        raise ValueError("a sentencepiece vocabulary needs its model: Vocab.from_sentencepiece")
      pieces = [self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())]
      if tuple(pieces[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"sentencepiece model's first pieces are {pieces[:4]}, "
                         f"not {SPECIAL_TOKENS}")
      tokens = pieces[len(SPECIAL_TOKENS):]
    elif model_proto is not None:
      raise ValueError(f"tokenizer '{level}' has no model")
    tokens = list(tokens)
    if len(set(tokens)) != len(tokens):
      raise ValueError("vocabulary tokens must be unique")
    self.tokens = list(SPECIAL_TOKENS) + tokens
    self._ids = {token: i + len(SPECIAL_TOKENS) for i, token in enumerate(tokens)}

  @classmethod
  def from_sentencepiece(cls, model_proto: bytes) -> "Vocab":
    """The vocabulary of a SentencePiece model's bytes (train_sentencepiece's)."""
    return cls((), level="sentencepiece", model_proto=bytes(model_proto))

  @property
  def processor(self):
    """The sentencepiece.SentencePieceProcessor of a sentencepiece vocabulary."""
    if self._processor is None and self.model_proto is not None:
      import sentencepiece as spm
      self._processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
    return self._processor

  def __getstate__(self):
    return dict(self.__dict__, _processor=None)  # rebuilt from model_proto when used

  @classmethod
  def build(cls, texts: Iterable[str], level: str = "char", max_size: int = 0,
            min_freq: int = 1) -> "Vocab":
    """The tokens of texts seen at least min_freq times, the max_size most frequent
    (0 = all; ties broken by the token). Characters are then sorted, as the Keras example;
    words stay most frequent first."""
    if level == "sentencepiece":
      raise ValueError("sentencepiece vocabularies are trained: use train_sentencepiece")
    counts: Counter[str] = Counter()
    for text in texts:
      counts.update(tokenize(text, level))
    kept = [token for token, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            if count >= min_freq]
    if max_size:
      kept = kept[:max_size]
    return cls(sorted(kept) if level == "char" else kept, level=level)

  @property
  def chars(self) -> list[str]:
    """The ordinary tokens (characters at character level), without the specials."""
    return self.tokens[len(SPECIAL_TOKENS):]

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and (
        (self.tokens, self.level, self.model_proto, self.saved_word_rules)
        == (other.tokens, other.level, other.model_proto, other.saved_word_rules))

  def tokenize(self, text: str) -> list[str]:
    if self.level == "sentencepiece":
      return self.processor.encode(text, out_type=str)
    return tokenize(text, self.level, self.word_rules)

  def encode(self, text: str) -> list[int]:
    """Token ids of text; unseen tokens map to UNK_ID."""
    if self.level == "sentencepiece":
      return self.processor.encode(text)
    return [self._ids.get(token, UNK_ID) for token in self.tokenize(text)]

  def unknown_tokens(self, text: str) -> set[str]:
    """Tokens of text that the vocabulary reads as unknown (characters, for subwords)."""
    if self.level == "sentencepiece":
      unknown = set()
      for piece in self.processor.encode(text, out_type="proto").pieces:
        if piece.id == UNK_ID:  # a run of unknown characters, maybe with known ones
          unknown |= {ch for ch in piece.surface
                      if self.processor.piece_to_id("▁" if ch == " " else ch) == UNK_ID}
      return unknown
    return {token for token in self.tokenize(text) if token not in self._ids}

  unknown_chars = unknown_tokens  # the name from character-only days

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids up to the first END_ID; pad is skipped, unknown ids read as
    U+FFFD (characters, subwords) or <unk> (words)."""
    out = []
    ids = np.asarray(list(ids)).tolist()
    if self.level == "sentencepiece":
      kept = []
      for i in ids:
        if i == END_ID:
          break
        if i == UNK_ID or len(SPECIAL_TOKENS) <= i < len(self.tokens):
          kept.append(i)
      return self.processor.decode(kept)
    for i in ids:
      if i == END_ID:
        break
      if i == UNK_ID:
        out.append(UNK_TEXT[self.level])
      elif i == START_ID:
        if self.start_text:
          out.append(self.start_text)
      elif i >= len(SPECIAL_TOKENS) and i < len(self.tokens):
        out.append(self.tokens[i])
    return "".join(out) if self.level == "char" else detokenize(out)

  def to_list(self) -> list[str]:
    return list(self.chars)

  @classmethod
  def from_list(cls, tokens: Sequence[str], level: str = "char",
                word_rules: int = WORD_RULES) -> "Vocab":
    """A char or word vocabulary of its saved tokens (sentencepiece: from_sentencepiece)."""
    return cls(tokens, level=level, word_rules=word_rules)

  @property
  def saved_word_rules(self) -> int | None:
    """word_rules as saved with the vocabulary: a word vocabulary's, else None."""
    return self.word_rules if self.level == "word" else None


MAX_NAMED_UNKNOWN = 20  # unknown tokens an input warning names; it counts the others


def check_texts(texts: Any, batch_size: Any = None, none_ok: bool = False) -> None:
  """A translate() call's texts and batch size, as a caller's mistake is named: a list
  (or tuple) of strings, since a str would be read as one sentence per character, and a
  batch size of at least 1 (none_ok: None, the default, too)."""
  if isinstance(texts, str):
    raise TypeError("texts must be a list of strings, got a str: pass [text] for one.")
  if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
    raise TypeError(f"texts must be a list of strings, got {type(texts).__name__} "
                    f"{texts!r:.60}.")
  if batch_size is None and none_ok:
    return
  if not is_whole_number(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}.")


def _shown(token: str) -> str:
  """A token as a warning names it: quoted, and escaped where it holds what cannot be seen
  alone (a combining accent, a joiner, a control)."""
  hidden = all(unicodedata.category(ch)[0] in "MC" or not ch.isprintable() for ch in token)
  return ascii(token) if hidden else repr(token)


def input_warnings(vocab: "Vocab", sources: list[str], max_source_len: int | None,
                   what: str = "input(s)") -> list[str]:
  """What translating these (already lower-cased, where the model does) sources does
  silently: tokens never seen in training, and inputs cut at max_source_len (None: none
  is cut); what: the sources' name in the warning."""
  unknown = sorted({token for s in sources for token in vocab.unknown_tokens(s)})
  unknown_unit, length_unit = _UNITS[vocab.level]
  warnings = []
  if unknown:  # the first ones: a page of another script would give a warning of pages
    more = f" and {len(unknown) - MAX_NAMED_UNKNOWN} more" if len(unknown) > MAX_NAMED_UNKNOWN else ""
    nfd = any(unicodedata.normalize("NFC", token) != token  # accents written apart
              or all(unicodedata.combining(ch) for ch in token) for token in unknown)
    written_apart = {token: unicodedata.normalize("NFD", token) for token in unknown}
    trained_nfd = not nfd and any(  # the other way round: known once written apart
        apart != token and not vocab.unknown_tokens(apart)
        for token, apart in written_apart.items())
    hint = (" (accents written apart from their letters: is the text NFD? Normalise it to "
            "NFC, as docs/data.md says)" if nfd else
            " (the model was trained on accents written apart from their letters, NFD text: "
            "retrain on NFC text, as docs/data.md says, or give it NFD input)" if trained_nfd
            else "")
    warnings.append(f"{unknown_unit} never seen in training (read as unknown): "
                    + " ".join(_shown(token) for token in unknown[:MAX_NAMED_UNKNOWN]) + more + hint)
  marked = sum(SENTENCEPIECE_SPACE in s for s in sources) if vocab.level == "sentencepiece" else 0
  if marked:
    warnings.append(f"{marked} {what} hold {SPACE_MARK_WARNING}")
  too_long = 0 if max_source_len is None else sum(len(vocab.encode(s)) > max_source_len
                                                  for s in sources)
  if too_long:
    warnings.append(f"{too_long} {what} longer than max_source_len={max_source_len} "
                    f"{length_unit} were truncated")
  return warnings
