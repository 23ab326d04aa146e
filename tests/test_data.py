"""Data sources, vocabularies and batching: the embedded numbers, Anki/TSV files and gettext
catalogs parse or name the file and line at fault; ids are int32; batches are seeded and whole."""

import numpy as np
import pytest

from seq2seq_jax import data as data_lib
from seq2seq_jax.errors import DataError
from seq2seq_jax.data import sources
from seq2seq_jax.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab
from tests.conftest import tiny_config, write_tsv


def test_numbers_are_num2words_pairs_and_deterministic():
  config = tiny_config(numbers_max=99_999, numbers_train=300, numbers_val=50, numbers_test=50)
  first = data_lib.load_splits(config)
  again = data_lib.load_splits(config)
  assert first == again
  other_seed = data_lib.load_splits(tiny_config(numbers_max=99_999, numbers_train=300,
                                                numbers_val=50, numbers_test=50, seed=1))
  assert first.train != other_seed.train
  from num2words import num2words
  numbers = data_lib.sample_numbers(config).tolist()
  assert first.train[:10] == [(num2words(n), num2words(n, lang="fr")) for n in numbers[:10]]
  assert first.test[-1] == (num2words(numbers[-1]), num2words(numbers[-1], lang="fr"))


def test_number_splits_are_disjoint_by_number():
  config = tiny_config(numbers_max=999_999, numbers_train=2000, numbers_val=300, numbers_test=300)
  numbers = data_lib.sample_numbers(config)
  assert len(set(numbers.tolist())) == len(numbers) == 2600
  splits = data_lib.load_splits(config)
  sources = [set(s for s, _ in part) for part in (splits.train, splits.val, splits.test)]
  assert not sources[0] & sources[1] and not sources[0] & sources[2] and not sources[1] & sources[2]
  # "digits" sampling: every digit count appears, not just six-digit numbers
  assert {len(str(n)) for n in numbers.tolist()} == {1, 2, 3, 4, 5, 6}


def test_digits_sampling_draws_zero_with_the_other_one_digit_numbers():
  """"digits" sampling (the default) draws one-digit numbers from 0 to 9: 0 was never
  drawn, so no numbers:LANG model ever saw "zero"."""
  config = tiny_config(numbers_max=999, numbers_train=200, numbers_val=50, numbers_test=50)
  assert config.numbers_sampling == "digits"
  numbers = data_lib.sample_numbers(config).tolist()
  assert {n for n in numbers if n < 10} == set(range(10))


def test_asking_for_every_number_gives_each_number_once():
  """numbers_train + numbers_val + numbers_test = numbers_max + 1 asks for all of
  0..numbers_max: allowed (it was refused as more pairs than there are numbers)."""
  config = tiny_config(numbers_max=9, numbers_train=6, numbers_val=2, numbers_test=2,
                       numbers_sampling="uniform")
  assert sorted(data_lib.sample_numbers(config).tolist()) == list(range(10))
  splits = data_lib.load_splits(config)
  assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
  with pytest.raises(DataError, match="11 distinct pairs asked for but only 10 numbers"):
    data_lib.sample_numbers(tiny_config(numbers_max=9, numbers_train=7, numbers_val=2,
                                        numbers_test=2, numbers_sampling="uniform"))


def test_known_french_numbers():
  lang = sources._num2words_language("fr")
  assert lang(97) == "quatre-vingt-dix-sept"
  assert lang(71) == "soixante et onze"
  assert lang(1984) == "mille neuf cent quatre-vingt-quatre"
  assert sources._num2words_language("en")(1984) == "one thousand, nine hundred and eighty-four"


def test_unknown_language_is_a_clear_error():
  with pytest.raises(DataError, match="no language 'xx'.*fr"):
    data_lib.load_splits(tiny_config(data="numbers:xx"))


def test_anki_file_with_and_without_attribution(tmp_path):
  path = tmp_path / "fra.txt"
  path.write_bytes("\ufeffGo.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org\r\n"
                   "\r\nHi.\tSalut !\r\nRun!\tCours !\tCC-BY\n".encode("utf-8"))
  pairs = data_lib.tab_pairs(str(path), "anki")
  assert pairs == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !")]
  assert data_lib.tab_pairs(str(path), "anki", num_samples=2) == pairs[:2]


def test_missing_column_names_file_and_line(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_text("a\tb\nno tab here\nc\td\n", encoding="utf-8")
  with pytest.raises(DataError, match=r"bad.txt:2: expected source<TAB>target"):
    data_lib.tab_pairs(str(path), "tsv")
  assert data_lib.tab_pairs(str(path), "tsv", skip_bad_lines=True) == [("a", "b"), ("c", "d")]


def test_tsv_rejects_a_third_column(tmp_path):
  path = tmp_path / "three.tsv"
  path.write_text("a\tb\tc\n", encoding="utf-8")
  with pytest.raises(DataError, match="three.tsv:1"):
    data_lib.tab_pairs(str(path), "tsv")


def test_non_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes(b"a\tb\ncaf\xe9\tcoffee\n")
  with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8"):
    data_lib.tab_pairs(str(path), "tsv")


def test_source_lowercase_lowers_the_sources_not_the_targets(tmp_path):
  """source_lowercase lower-cases what the model reads, not what it learns to write:
  targets lower-cased too gave a model that never wrote a capital ("bonjour")."""
  path = write_tsv(tmp_path / "hello.tsv", [("Hello", "Bonjour")])
  splits = data_lib.load_splits(tiny_config(data=f"tsv:{path}", val_fraction=0.0,
                                            test_fraction=0.0, source_lowercase=True))
  assert splits.train == [("hello", "Bonjour")]


def test_split_mode_last_validates_on_the_file_s_last_pairs_in_order(tmp_path):
  """split_mode="last" keeps file order and holds out the tail for validation, as Keras'
  validation_split does (the parity runs compare against it): validation was the pairs
  before the tail, and test the tail."""
  pairs = [(f"s{i}", f"t{i}") for i in range(10)]
  path = write_tsv(tmp_path / "ordered.tsv", pairs)
  splits = data_lib.load_splits(tiny_config(data=f"tsv:{path}", split_mode="last",
                                            val_fraction=0.2, test_fraction=0.1))
  assert splits.train == pairs[:7] and splits.val == pairs[8:] and splits.test == pairs[7:8]


def test_a_test_source_never_enters_training_as_a_sentence_of_a_long_pair(tmp_path):
  """With split_sentences a long training pair gives its sentence pairs, but none whose
  source is a validation or a test source: a test sentence was trained on, and the test
  scores measured memory."""
  pairs = ([("Open the file. Close it now.", "Ouvrez le fichier. Fermez-le.")]
           + [(f"Item {i}.", f"Article {i}.") for i in range(7)]
           + [("Close it now.", "Fermez-le."), ("Open the file.", "Ouvrez le fichier.")])
  path = write_tsv(tmp_path / "help.tsv", pairs)
  config = tiny_config(data=f"tsv:{path}", split_mode="last", val_fraction=0.1,
                       test_fraction=0.1, split_sentences=True, max_source_len=20,
                       max_target_len=20)
  splits = data_lib.load_splits(config)
  assert splits.test == [("Close it now.", "Fermez-le.")]
  assert splits.val == [("Open the file.", "Ouvrez le fichier.")]
  assert splits.held_out_sources() == {"Close it now.", "Open the file."}
  train = data_lib.drop_long(splits.train, config, "train", None, splits.held_out_sources())
  assert train == pairs[1:8]


def test_a_sentence_of_a_held_out_paragraph_never_enters_training(tmp_path):
  """A test paragraph's sentence, cut from a long training paragraph of another page,
  was trained on (16 sentence pairs of LibreOffice's French help)."""
  pairs = ([("Select the cell. Click OK to close the dialog.",
             "Sélectionnez la cellule. Cliquez sur OK pour fermer la boîte.")]
           + [(f"Item {i}.", f"Article {i}.") for i in range(8)]
           + [("Save it. Click OK to close the dialog.",
               "Enregistrez-le. Cliquez sur OK pour fermer la boîte.")])
  path = write_tsv(tmp_path / "help.tsv", pairs)
  config = tiny_config(data=f"tsv:{path}", split_mode="last", val_fraction=0.0,
                       test_fraction=0.1, split_sentences=True, max_source_len=30,
                       max_target_len=40)
  splits = data_lib.load_splits(config)
  assert splits.test == pairs[-1:]
  train = data_lib.drop_long(splits.train, config, "train", None, splits.held_out_sources())
  assert train == [("Select the cell.", "Sélectionnez la cellule.")] + pairs[1:9]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
  path = tmp_path / "empty.txt"
  path.write_text(content)
  with pytest.raises(DataError, match="no usable"):
    data_lib.tab_pairs(str(path), "tsv")


def test_missing_file_and_bad_spec(tmp_path):
  with pytest.raises(DataError, match="does not exist. Download e.g. fra-eng.zip"):
    data_lib.load_splits(tiny_config(data=f"anki:{tmp_path}/nope.txt"))
  with pytest.raises(DataError, match=r"does not exist. Check the path\.$"):  # not anki's advice
    data_lib.load_splits(tiny_config(data=f"tsv:{tmp_path}/nope.tsv"))
  with pytest.raises(DataError, match="not understood"):
    data_lib.parse_spec("fra.txt")


def test_a_home_relative_data_path_is_expanded(tmp_path, monkeypatch):
  """The shell leaves the ~ of `--data tsv:~/pairs.tsv` alone (it follows "tsv:"): it was
  "data file '~/pairs.tsv' does not exist" with the file there."""
  monkeypatch.setenv("HOME", str(tmp_path))
  write_tsv(tmp_path / "pairs.tsv", [(f"s{i}", f"t{i}") for i in range(40)])
  splits = data_lib.load_splits(tiny_config(data="tsv:~/pairs.tsv"))
  assert len(splits.train) + len(splits.val) + len(splits.test) == 40
  assert data_lib.parse_spec("libreoffice:fr:~/debs") == ("libreoffice", f"fr:{tmp_path}/debs")
  assert data_lib.spec_paths("gettext:~/fr.mo") == [f"{tmp_path}/fr.mo"]


def test_long_pairs_are_dropped_and_counted(caplog):
  config = tiny_config(max_source_len=5, max_target_len=5)
  with caplog.at_level("INFO", logger="seq2seq_jax"):
    kept = data_lib.drop_long([("abc", "de"), ("abcdef", "x"), ("a", "abcdefg")], config, "train")
  assert kept == [("abc", "de")]


def test_vocab_round_trip_and_unknowns():
  vocab = Vocab.build(["hello world", "wörld"])
  assert vocab.chars == sorted(set("hello worldö"))
  text = "low qöz"
  ids = vocab.encode(text)
  assert ids[:3] == vocab.encode("low")
  assert ids[4] == UNK_ID and ids[5] != UNK_ID and vocab.unknown_chars(text) == {"q", "z"}
  assert vocab.decode(vocab.encode("hello") + [END_ID] + vocab.encode("xx")) == "hello"
  assert Vocab.from_list(vocab.to_list()) == vocab
  assert len(vocab) == 4 + len(vocab.chars)


def test_encoding_is_int32_with_start_end_and_padding():
  src_vocab, tgt_vocab = Vocab.build(["ab"]), Vocab.build(["xyz"])
  encoded = data_lib.encode_pairs([("ab", "xyz"), ("a", "x")], src_vocab, tgt_vocab)
  assert encoded.src_NxS.dtype == np.int32 and encoded.tgt_NxT.dtype == np.int32
  assert encoded.tgt_NxT[0].tolist() == [START_ID, *tgt_vocab.encode("xyz"), END_ID]
  assert encoded.tgt_NxT[1].tolist() == [START_ID, tgt_vocab.encode("x")[0], END_ID, PAD_ID, PAD_ID]
  assert encoded.src_len_N.tolist() == [2, 1] and encoded.tgt_len_N.tolist() == [4, 2]


def test_epoch_batches_cover_every_row_once_and_are_seeded():
  rng = np.random.default_rng(0)
  pairs = [("a" * rng.integers(1, 40), "b" * rng.integers(1, 40)) for _ in range(500)]
  encoded = data_lib.encode_pairs(pairs, Vocab.build(["a"]), Vocab.build(["b"]))
  for width in (0, 8):
    batches = data_lib.epoch_batches(encoded, 32, seed=3, epoch=1, bucket_width=width)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))
    assert len(batches) == data_lib.steps_per_epoch(encoded, 32)
    same = data_lib.epoch_batches(encoded, 32, seed=3, epoch=1, bucket_width=width)
    assert all((a == b).all() for a, b in zip(batches, same))
    next_epoch = data_lib.epoch_batches(encoded, 32, seed=3, epoch=2, bucket_width=width)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, next_epoch))
  batch = data_lib.make_batch(encoded, batches[0][:5], 32, 8)
  assert batch["src"].shape[0] == 32 and batch["src"].shape[1] % 8 == 0
  assert (batch["index"][5:] == -1).all() and (batch["src"][5:] == PAD_ID).all()
  assert batch["tgt_in"].shape == batch["tgt_out"].shape


def test_bucketed_batches_are_full_and_keep_their_shapes_across_epochs():
  """Batches are cut across length buckets: all full but the last, each padded little,
  and every epoch has the same set of batch shapes (one compiled program each)."""
  rng = np.random.default_rng(1)
  pairs = [("a" * rng.integers(1, 60), "b" * rng.integers(1, 60)) for _ in range(1000)]
  encoded = data_lib.encode_pairs(pairs, Vocab.build(["a"]), Vocab.build(["b"]))
  shapes_per_epoch, padded_steps = [], 0
  for epoch in range(4):
    batches = data_lib.epoch_batches(encoded, 64, seed=0, epoch=epoch, bucket_width=8)
    assert sorted(len(b) for b in batches) == [1000 - 15 * 64] + [64] * 15
    shapes = set()
    for rows in batches:
      batch = data_lib.make_batch(encoded, rows, 64, 8)
      shapes.add((batch["src"].shape[1], batch["tgt_in"].shape[1]))
      if epoch == 0:
        padded_steps += len(rows) * (batch["src"].shape[1] + batch["tgt_in"].shape[1])
    shapes_per_epoch.append(shapes)
  assert all(shapes == shapes_per_epoch[0] for shapes in shapes_per_epoch)
  # random batches, each padded to its own longest pair (as a PyTorch loop does)
  order = rng.permutation(1000)
  random_steps = sum(len(rows) * (encoded.src_len_N[rows].max() + encoded.tgt_len_N[rows].max() - 1)
                     for rows in np.split(order, range(64, 1000, 64)))
  assert padded_steps < 0.8 * random_steps


def test_sources_are_cut_at_max_len_tokens():
  """A source of exactly max_len tokens is read whole, a longer one cut to max_len: the
  last token of every source at the limit was dropped."""
  vocab = Vocab.build(["abcde"])
  ids, lengths = data_lib.encode_sources(["abc", "abcde", "ab"], vocab, max_len=3)
  assert lengths.tolist() == [3, 3, 2]
  assert ids.tolist() == [vocab.encode("abc"), vocab.encode("abc"), vocab.encode("ab") + [PAD_ID]]


def test_a_batch_s_target_mask_covers_each_row_s_target_steps_exactly():
  """tgt_mask marks each row's target ids and its END, no step after them: a padding step
  more per row (and one for each padding row) was counted in the loss and token accuracy."""
  encoded = data_lib.encode_pairs([("ab", "xyz"), ("a", "x"), ("b", "xy")],
                                  Vocab.build(["ab"]), Vocab.build(["xyz"]))
  for width in (0, 8):
    batch = data_lib.make_batch(encoded, np.array([0, 1, 2]), 4, width)
    assert batch["tgt_mask"].sum(axis=1).tolist() == [4, 2, 3, 0]
    assert (batch["tgt_out"][batch["tgt_mask"]] != PAD_ID).all()


def test_an_epoch_s_batches_come_in_shuffled_order_not_by_length():
  """Bucketed batches are cut from length-sorted rows and then shuffled: without that
  every epoch went from the shortest pairs to the longest, in the same order each time."""
  rng = np.random.default_rng(2)
  pairs = [("a" * rng.integers(1, 60), "b" * rng.integers(1, 60)) for _ in range(1000)]
  encoded = data_lib.encode_pairs(pairs, Vocab.build(["a"]), Vocab.build(["b"]))
  keys = data_lib.bucket_keys(encoded, 8)
  orders = [[int(keys[rows].max()) for rows in
             data_lib.epoch_batches(encoded, 64, seed=0, epoch=epoch, bucket_width=8)]
            for epoch in range(2)]
  assert all(order != sorted(order) for order in orders)
  assert orders[0] != orders[1]


def test_large_file_loads_as_int32_not_one_hot(tmp_path):
  pairs = [(f"sentence number {i} here", f"phrase numéro {i} ici") for i in range(200_000)]
  encoded = data_lib.encode_pairs(pairs, *data_lib.build_vocabs(pairs))
  total = encoded.src_NxS.nbytes + encoded.tgt_NxT.nbytes
  assert total < 100 * 2**20  # one-hot would be ~200k x 30 x 40 x 4 bytes x 2 = 1.9 GB


# ---------------------------------------------------------------------------
# gettext catalogs
# ---------------------------------------------------------------------------

def write_mo(path, messages, charset="UTF-8", endian="<") -> str:
  """A GNU .mo file of {msgid: msgstr} plus a header, as msgfmt lays it out."""
  import struct
  entries = sorted([("", f"Content-Type: text/plain; charset={charset}\n")] + list(messages.items()))
  encoded = [(k.encode(charset), v.encode(charset)) for k, v in entries]
  n = len(encoded)
  ids_at, strs_at = 28, 28 + 8 * n
  at = strs_at + 8 * n
  tables, blob = [[], []], b""
  for pair in encoded:
    for side, text in enumerate(pair):
      tables[side].append(struct.pack(endian + "2I", len(text), at + len(blob)))
      blob += text + b"\0"
  header = struct.pack(endian + "7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0)
  with open(path, "wb") as f:
    f.write(header + b"".join(tables[0]) + b"".join(tables[1]) + blob)
  return str(path)


CATALOG = {
    "Open file": "Ouvrir le fichier",
    "menu\x04Close": "Fermer",                    # a context is dropped
    "  Quit now?  ": "Quitter maintenant\u00a0?",  # stripped, no-break space normalised
    "Narrow\u202fspace": "Espace\u202fétroite",
    "100% complete": "100 % terminé",             # a percent sign is not a placeholder
    "one file\0%d files": "un fichier\0%d fichiers",  # plural
    "Save": "",                                    # untranslated
    "OK": "OK",                                    # identical
    "Line one\nLine two": "Ligne un\nLigne deux",
    "Name\tValue": "Nom\tValeur",
    "Cannot open %s": "Impossible d'ouvrir %s",
    "Copied %1$s to %2$s": "%1$s copié vers %2$s",
    "Progress: %.1f": "Progression : %.1f",
    "Done (100%%)": "Fini (100 %%)",
    "Delete {0}?": "Supprimer {0} ?",
    "Hello {name}": "Bonjour {name}",
    "Set $HOME first": "Définissez d'abord $HOME",
    "Page %1 of %2": "Page %1 sur %2",
    "Total: %<PRIu64>": "Total : %<PRIu64>",
}


def test_gettext_keeps_natural_single_messages(tmp_path):
  path = write_mo(tmp_path / "app.mo", CATALOG)
  assert data_lib.gettext_pairs(path) == [
      ("100% complete", "100 % terminé"),
      ("Close", "Fermer"),
      ("Narrow space", "Espace étroite"),
      ("Open file", "Ouvrir le fichier"),
      ("Quit now?", "Quitter maintenant ?"),
  ]


def test_gettext_directory_first_catalog_wins_and_is_sorted(tmp_path):
  write_mo(tmp_path / "b.mo", {"Zoom": "Agrandir", "Open": "Ouvrir (b)"}, endian=">")
  write_mo(tmp_path / "a.mo", {"Open": "Ouvrir", "Help": "Aide"}, charset="ISO-8859-1")
  (tmp_path / "notes.txt").write_text("not a catalog")
  pairs = data_lib.gettext_pairs(str(tmp_path))
  assert pairs == [("Help", "Aide"), ("Open", "Ouvrir"), ("Zoom", "Agrandir")]
  sample = data_lib.gettext_pairs(str(tmp_path), num_samples=2, seed=1)
  assert len(sample) == 2 and set(sample) < set(pairs) and sample == sorted(sample)
  assert sample == data_lib.gettext_pairs(str(tmp_path), num_samples=2, seed=1)


def test_gettext_splits_are_seeded_and_disjoint(tmp_path):
  messages = {f"Message number {word}": f"Message numéro {word}" for word in
              ("one two three four five six seven eight nine ten eleven twelve thirteen "
               "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()}
  path = write_mo(tmp_path / "app.mo", messages)
  config = tiny_config(data=f"gettext:{path}", val_fraction=0.1, test_fraction=0.1)
  splits = data_lib.load_splits(config)
  assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 2)
  assert sorted(splits.train + splits.val + splits.test) == sorted(messages.items())
  assert splits == data_lib.load_splits(config)
  assert splits != data_lib.load_splits(tiny_config(data=f"gettext:{path}", seed=1))


def test_gettext_errors_name_the_path(tmp_path):
  with pytest.raises(DataError, match="'.*nowhere' does not exist"):
    data_lib.load_splits(tiny_config(data=f"gettext:{tmp_path}/nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="holds no .mo file"):
    data_lib.gettext_pairs(str(tmp_path / "empty"))
  only_bad = {"Cannot open %s": "Impossible d'ouvrir %s"}
  with pytest.raises(DataError, match="no translated single-line message"):
    data_lib.gettext_pairs(write_mo(tmp_path / "bad_only.mo", only_bad))


def test_corrupt_catalog_is_named_or_skipped(tmp_path, caplog):
  good = write_mo(tmp_path / "good.mo", {"Open": "Ouvrir"})
  (tmp_path / "garbage.mo").write_bytes(b"this is not a catalog at all")
  raw = open(good, "rb").read()
  (tmp_path / "truncated.mo").write_bytes(raw[:40])
  with pytest.raises(DataError, match=r"garbage.mo: not a gettext .mo file"):
    data_lib.gettext_pairs(str(tmp_path))
  with pytest.raises(DataError, match=r"truncated.mo: corrupt .mo file"):
    data_lib.gettext_pairs(str(tmp_path / "truncated.mo"))
  with caplog.at_level("WARNING", logger="seq2seq_jax"):
    pairs = data_lib.gettext_pairs(str(tmp_path), skip_bad_files=True)
  assert pairs == [("Open", "Ouvrir")]
  assert "skipped 2 unreadable catalog(s): garbage.mo, truncated.mo" in caplog.text
  write_mo(tmp_path / "wrong_charset.mo", {"Café": "Café"}, charset="ISO-8859-1")
  raw = open(tmp_path / "wrong_charset.mo", "rb").read().replace(b"ISO-8859-1", b"UTF-8\n\n\n\n\n")
  (tmp_path / "wrong_charset.mo").write_bytes(raw)
  with pytest.raises(DataError, match=r"wrong_charset.mo: a message is not valid UTF-8"):
    data_lib.read_mo(str(tmp_path / "wrong_charset.mo"))


def test_the_old_tasks_module_s_names_are_in_the_data_package():
  """data.py and tasks.py became the data/ package; code importing their names from
  seq2seq_jax.data keeps working (docs/layout.md)."""
  from seq2seq_jax import data
  from seq2seq_jax.config import Config
  train, val, test = data.task_pairs("reverse", Config(task_train=4, task_val=2, task_test=2))
  assert (len(train), len(val), len(test)) == (4, 2, 2) and "reverse" in data.TASKS
  assert all(target == source[::-1] for source, target in train)


def test_keras_encoding_of_text_without_spaces_names_the_setting_that_trains_it():
  """The Keras example pads with the space character, so keras_compat needs one."""
  from seq2seq_jax.data.splits import keras_vocabs
  with pytest.raises(DataError, match="no source sentence contains a space.*keras_compat=false"):
    keras_vocabs([("abc", "x y"), ("de", "z w")])
  src, tgt, dims = keras_vocabs([("a b", "x y")])
  assert dims == {"max_encoder_seq_length": 3, "max_decoder_seq_length": 5}


def test_a_file_that_repeats_pairs_says_its_held_out_pairs_are_trained_on(tmp_path, caplog):
  """Tatoeba's files repeat pairs: copies land in training and in validation/test, and
  the held-out scores then measure memory. Said with a count; a file without repeats is
  silent."""
  from seq2seq_jax.data import load_splits
  distinct = [(f"s{i}", f"t{i}") for i in range(40)]
  path = write_tsv(tmp_path / "dups.tsv", distinct * 5)
  splits = load_splits(tiny_config(data=f"tsv:{path}", val_fraction=0.1, test_fraction=0.1))
  [warning] = [r.getMessage() for r in caplog.records if "also training pairs" in r.getMessage()]
  held_out = len(splits.val) + len(splits.test)
  repeated = sum(pair in set(splits.train) for pair in splits.val + splits.test)
  assert repeated > 0 and f"{repeated} of {held_out} validation and test pairs" in warning
  caplog.clear()
  load_splits(tiny_config(data=f"tsv:{write_tsv(tmp_path / 'once.tsv', distinct)}"))
  assert not [r for r in caplog.records if "also training pairs" in r.getMessage()]


def test_a_vocabulary_limit_that_leaves_no_token_is_refused():
  """min_token_freq above every count: each token was <unk>, and predicting <unk> for
  <unk> scored token accuracy 0.92 while the outputs were all U+FFFD."""
  from seq2seq_jax.data import build_vocabs
  with pytest.raises(DataError, match="the source vocabulary holds no token: min_token_freq=1000"):
    build_vocabs([("ab", "xy"), ("ba", "yx")], tiny_config(min_token_freq=1000))
  src, tgt = build_vocabs([("ab", "xy"), ("ba", "yx")], tiny_config(min_token_freq=2))
  assert len(src) == len(tgt) == 6  # the specials and two characters each
