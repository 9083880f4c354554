import io
import json
import sys

import pytest

from afqmc.config import from_dict
from afqmc.data import (DataError, LengthGroupedSampler, PairDataset, collate, count_overlap, encode, load_pairs,
                        load_splits, parse_pairs, split_train_val)
from afqmc.make_demo import generate
from afqmc.modeling import load_tokenizer
from conftest import AFQMC_TRAIN, DEMO_TEST, DEMO_TRAIN, VOCAB, need_shared, write_lines

GOOD = json.dumps({"text1": "花呗怎么还款", "text2": "花呗在哪里还钱", "label": 1}, ensure_ascii=False)
NEG = json.dumps({"text1": "借呗利息", "text2": "花呗账单", "label": 0}, ensure_ascii=False)


def test_both_schemas(tmp_path):
    ours = load_pairs(write_lines(tmp_path / "a.jsonl", [GOOD, NEG]))
    clue = load_pairs(write_lines(tmp_path / "b.jsonl", [
        '{"sentence1": "花呗怎么还款", "sentence2": "花呗在哪里还钱", "label": "1"}',
        '{"sentence1": "借呗利息", "sentence2": "花呗账单", "label": "0"}']))
    assert ours.text1 == clue.text1 and ours.text2 == clue.text2 and ours.labels == clue.labels == [1, 0]
    unlabelled = load_pairs(DEMO_TEST, require_labels=False)
    assert unlabelled.labels is None and len(unlabelled) == 300


@pytest.mark.parametrize("bad_line, message", [
    ('{"text1": "a", "text2": "b", "label": 1', r"bad\.jsonl:2: malformed JSON"),
    ('{"text1": "花呗", "label": 1}', r"bad\.jsonl:2: missing field 'text2'"),
    ('{"sentence1": "花呗", "label": "1"}', r"bad\.jsonl:2: missing field 'sentence2'"),
    ('{"text1": "a", "text2": "b", "label": 2}', r"bad\.jsonl:2: field 'label' must be 0 or 1"),
    ('{"text1": "a", "text2": "b", "label": "yes"}', r"bad\.jsonl:2: field 'label' must be 0 or 1"),
    ('{"text1": "a", "text2": "b", "label": null}', r"bad\.jsonl:2: field 'label' must be 0 or 1"),
    ('{"text1": "a", "text2": "b", "label": true}', r"bad\.jsonl:2: field 'label' must be 0 or 1"),
    ('{"text1": "a", "text2": "b", "label": [1]}', r"bad\.jsonl:2: field 'label' must be 0 or 1"),
    ('{"text1": "a", "text2": 5, "label": 1}', r"bad\.jsonl:2: field 'text2' must be a string"),
    ('{"text1": "a", "text2": "  ", "label": 1}', r"bad\.jsonl:2: field 'text2' is empty"),
    ('["a", "b", 1]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"text1": "a", "text2": "b"}', r"bad\.jsonl:2: missing field 'label'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, bad_line, NEG])
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_empty_sentences_can_be_skipped_and_counted(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [GOOD, '{"text1": "", "text2": "b", "label": 0}', NEG])
    data = load_pairs(path, skip_empty=True)
    assert len(data) == 2 and data.skipped_empty == 1 and data.lines == [1, 3]


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no sentence pairs"):
        load_pairs(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="only class 0"):
        load_pairs(write_lines(tmp_path / "one.jsonl", [NEG, NEG]))
    with pytest.raises(DataError, match=r"unlabelled\.jsonl:1: missing field 'label'"):
        load_pairs(write_lines(tmp_path / "unlabelled.jsonl", ['{"text1": "a", "text2": "b"}']))
    with pytest.raises(DataError, match="some rows have a 'label'"):
        load_pairs(write_lines(tmp_path / "mixed.jsonl", [GOOD, '{"text1": "a", "text2": "b"}']),
                   require_labels=False)


def test_split_is_seeded_and_stratified():
    data = load_pairs(DEMO_TRAIN)
    train, val = split_train_val(data, 0.2, seed=7)
    again, _ = split_train_val(data, 0.2, seed=7)
    other, _ = split_train_val(data, 0.2, seed=8)
    assert train.text1 == again.text1 and train.text1 != other.text1
    assert len(val) == pytest.approx(0.2 * len(data), abs=1)
    rate = lambda d: d.label_counts()[1] / len(d)  # noqa: E731
    assert rate(train) == pytest.approx(rate(val), abs=0.01)
    assert count_overlap(train, val) == count_overlap(train, val.subset(range(len(val))))


def test_overlap_counts_pairs_in_either_order(tmp_path):
    a = load_pairs(write_lines(tmp_path / "a.jsonl", [GOOD, NEG]))
    swapped = json.dumps({"text1": "花呗在哪里还钱", "text2": "花呗怎么还款", "label": 1}, ensure_ascii=False)
    b = load_pairs(write_lines(tmp_path / "b.jsonl", [swapped, NEG, GOOD.replace("还钱", "还")]))
    assert count_overlap(a, b) == 2


def test_demo_data_is_reproduced_by_its_generator(tmp_path):
    files = generate(tmp_path)
    assert files["train"].read_bytes() == DEMO_TRAIN.read_bytes()
    assert files["test"].read_bytes() == DEMO_TEST.read_bytes()
    counts = load_pairs(DEMO_TRAIN).label_counts()
    assert 0.25 < counts[1] / sum(counts) < 0.35  # AFQMC-like imbalance


def test_pair_encoding_and_dynamic_padding():
    need_shared()
    cfg = from_dict({"model_name_or_path": "tiny", "vocab_file": str(VOCAB), "max_length": 16})
    tok = load_tokenizer(cfg)
    data = load_pairs(DEMO_TRAIN, max_rows=40)
    enc = encode(tok, data, cfg.max_length)
    ids = enc.input_ids[0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
    first_sep = ids.index(tok.sep_token_id)
    assert set(enc.token_type_ids[0][: first_sep + 1]) == {0} and set(enc.token_type_ids[0][first_sep + 1:]) == {1}
    assert max(len(x) for x in enc.input_ids) <= 16
    ds = PairDataset(enc)
    short = collate([ds[i] for i in range(4)])
    assert short["input_ids"].shape[1] == max(len(enc.input_ids[i]) for i in range(4))  # not padded to 16
    assert short["attention_mask"].sum().item() == sum(len(enc.input_ids[i]) for i in range(4))


def test_unk_rate_on_real_afqmc_with_the_macbert_vocab():
    """The tokenizer trap of transformers 5: BertTokenizerFast(vocab_file=...) builds a 5-token
    vocabulary, so every character is [UNK]; BertTokenizer(path) loads all 21,128 tokens."""
    need_shared()
    tok = load_tokenizer(from_dict({"model_name_or_path": "tiny", "vocab_file": str(VOCAB)}))
    assert len(tok) == 21128
    data = load_pairs(AFQMC_TRAIN)
    enc = encode(tok, data, 64)
    unk = sum(ids.count(tok.unk_token_id) for ids in enc.input_ids)
    assert unk / enc.num_tokens() < 0.01


def test_length_grouped_batches_are_seeded_per_epoch_and_cover_every_pair_once():
    lengths = [(i * 37) % 61 + 4 for i in range(1000)]  # 1000 pairs: 31 batches of 32, one of 8
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=7, megabatch=5)
    epoch0 = sampler.batches()
    assert LengthGroupedSampler(lengths, 32, seed=7, megabatch=5).batches() == epoch0  # same seed, same batches
    assert LengthGroupedSampler(lengths, 32, seed=8, megabatch=5).batches() != epoch0
    assert list(sampler) == [i for b in epoch0 for i in b]  # DataLoader(batch_size=32) cuts exactly these
    sampler.set_epoch(1)
    epoch1 = sampler.batches()
    assert epoch1 != epoch0
    for batches in (epoch0, epoch1):
        assert sorted(i for b in batches for i in b) == list(range(1000))  # every pair once per epoch
        assert [len(b) for b in batches] == [32] * 31 + [8]  # the short batch last
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest first (OOM shows at once)
        # Within a batch the lengths are close: a sorted mega-batch of 160 pairs spans all 61 lengths in
        # 5 batches, ~12 each (random batches of 32 span ~55).
        assert sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches) < 16
    sampler.set_epoch(0)
    assert sampler.batches() == epoch0  # an epoch's order depends on seed + epoch only (resume)


def test_length_grouping_cuts_padding_on_real_afqmc():
    """Mean padded width per batch of 32 (what dynamic padding pads to) on 6,400 AFQMC pairs."""
    need_shared()
    import torch

    tok = load_tokenizer(from_dict({"model_name_or_path": "tiny", "vocab_file": str(VOCAB)}))
    lengths = [len(x) for x in encode(tok, load_pairs(AFQMC_TRAIN, max_rows=6400), 64).input_ids]
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_width = sum(max(lengths[i] for i in perm[k:k + 32]) for k in range(0, len(perm), 32)) / 200
    batches = LengthGroupedSampler(lengths, 32, seed=0).batches()
    grouped_width = sum(max(lengths[i] for i in b) for b in batches) / len(batches)
    mean_length = sum(lengths) / len(lengths)
    assert 20 < mean_length < 40 and random_width > 50  # AFQMC: ~30 tokens a pair, a long tail
    assert grouped_width < 1.1 * mean_length < 0.7 * random_width


def test_a_missing_train_file_says_which_field_to_set(tmp_path):
    from afqmc.config import from_dict
    from afqmc.data import load_splits

    with pytest.raises(DataError) as info:
        load_splits(from_dict({"train_file": str(tmp_path / "data" / "afqmc" / "train.json")}))
    message = str(info.value)
    assert "field 'train_file'" in message and "does not exist" in message and "--train_file" in message
    assert "CLUE" in message


# --- the files people have: encodings, TSV/CSV, JSON arrays, too few pairs (issue 23) -------------

DEMO_ROWS = [json.loads(line) for line in DEMO_TRAIN.read_text(encoding="utf-8").splitlines()[:40]]  # 16 positives


def _tsv(rows) -> str:
    return "".join(f"{r['text1']}\t{r['text2']}\t{r['label']}\n" for r in rows)


def test_a_gbk_file_is_refused_with_the_command_that_converts_it(tmp_path, monkeypatch):
    path = tmp_path / "gbk.tsv"
    path.write_bytes(_tsv(DEMO_ROWS).encode("gbk"))  # as a Windows tool or an Excel export writes it
    with pytest.raises(DataError) as info:
        load_pairs(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: not UTF-8") and "\n" not in message
    assert "GB18030/GBK" in message and DEMO_ROWS[0]["text1"] in message  # it shows the line as GBK reads it
    assert f"iconv -f GB18030 -t UTF-8 {path} > {tmp_path / 'gbk.utf8.tsv'}" in message
    # The Python alternative it gives converts the file exactly as iconv would.
    python = message.split('python -c "', 1)[1].split('"', 1)[0]
    monkeypatch.setattr(sys, "argv", ["-c", str(path), str(tmp_path / "out.tsv")])
    exec(python, {})
    assert (tmp_path / "out.tsv").read_text(encoding="utf-8") == _tsv(DEMO_ROWS)
    # A bad byte after good lines is named by its line.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes((GOOD + "\n" + NEG + "\n").encode() + NEG.encode("gbk") + b"\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:3: not UTF-8"):
        load_pairs(mixed)
    latin1 = tmp_path / "latin1.jsonl"  # bytes that are not GBK either: no GBK guess, the general advice
    latin1.write_bytes('{"text1": "café", "text2": "thé", "label": 1}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl:1: not UTF-8 \(byte 0xe9 at byte 15 of the line\); .*"
                                        r"find the file's encoding .*iconv -f ENCODING -t UTF-8") as info:
        load_pairs(latin1)
    assert "GBK" not in str(info.value)


def test_a_gbk_file_never_reaches_the_tokenizer_garbled(tmp_path):
    need_shared()
    from afqmc.train import prepare_data

    path = tmp_path / "gbk.tsv"
    path.write_bytes(_tsv(DEMO_ROWS).encode("gbk"))
    cfg = from_dict({"train_file": str(path), "model_name_or_path": "tiny", "vocab_file": str(VOCAB), "val_ratio": 0.25})
    with pytest.raises(DataError, match="not UTF-8"):
        prepare_data(cfg, log=lambda _: None)
    data = prepare_data(cfg.replace(encoding="gb18030"), log=lambda _: None)  # read as it is, under its option
    assert data.info["train_pairs"] + data.info["val_pairs"] == 40 and data.info["unk_rate"] == 0.0
    text = data.tokenizer.decode(data.train.input_ids[0], skip_special_tokens=True).replace(" ", "")
    originals = {r["text1"] + r["text2"] for r in DEMO_ROWS}
    assert text in originals  # the characters themselves, not mojibake
    pairs = load_pairs(path, encoding="gb18030")
    assert pairs.text1 == [r["text1"] for r in DEMO_ROWS] and pairs.labels == [r["label"] for r in DEMO_ROWS]
    utf8 = write_lines(tmp_path / "utf8.jsonl", [GOOD, NEG])  # a UTF-8 file read as GBK would be garbled: refused
    with pytest.raises(DataError, match=r"utf8\.jsonl: the file is UTF-8, not gb18030"):
        load_pairs(utf8, encoding="gb18030")


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "notepad.jsonl"
    path.write_bytes(("\ufeff" + GOOD + "\n" + NEG + "\n").encode("utf-8"))
    assert load_pairs(path).text1 == ["花呗怎么还款", "借呗利息"]
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8": a BOM before the header
    excel.write_bytes("\ufefftext1,text2,label\n花呗怎么还款,花呗在哪里还钱,1\n借呗利息,花呗账单,0\n".encode("utf-8"))
    pairs = load_pairs(excel)
    assert pairs.text1 == ["花呗怎么还款", "借呗利息"] and pairs.labels == [1, 0] and pairs.lines == [2, 3]
    utf16 = tmp_path / "unicode.jsonl"
    utf16.write_bytes((GOOD + "\n").encode("utf-16"))
    with pytest.raises(DataError, match=r"unicode\.jsonl: UTF-16 text .*`iconv -f UTF-16 -t UTF-8"):
        load_pairs(utf16)


@pytest.mark.parametrize("header", ["", "text1\ttext2\tlabel\n", "Sentence1\tsentence2\tLabel\n",
                                    "id\ttext_a\ttext_b\tlabel\n"])
def test_tsv_with_and_without_a_header(tmp_path, header):
    rows = DEMO_ROWS[:4]
    id_column = header.startswith("id")  # an extra column a header names is read past
    path = tmp_path / "lcqmc.tsv"
    path.write_text(header + "".join(f"{i}\t" * id_column + f"{r['text1']}\t{r['text2']}\t{r['label']}\n"
                                     for i, r in enumerate(rows)), encoding="utf-8")
    pairs = load_pairs(path)
    assert pairs.text1 == [r["text1"] for r in rows] and pairs.text2 == [r["text2"] for r in rows]
    first = 2 if header else 1
    assert pairs.labels == [r["label"] for r in rows] and pairs.lines == list(range(first, first + 4))


def test_unlabelled_tsv_and_tab_separated_text_files(tmp_path):
    (tmp_path / "test.tsv").write_text("花呗怎么还款\t花呗在哪里还钱\n借呗利息\t花呗账单\n", encoding="utf-8")
    pairs = load_pairs(tmp_path / "test.tsv", require_labels=False)
    assert pairs.text2 == ["花呗在哪里还钱", "花呗账单"] and pairs.labels is None
    with pytest.raises(DataError, match=r"test\.tsv:1: 2 columns; .* needs labels"):
        load_pairs(tmp_path / "test.tsv")
    (tmp_path / "train.txt").write_text(_tsv(DEMO_ROWS[:3]), encoding="utf-8")  # LCQMC ships train.txt
    assert load_pairs(tmp_path / "train.txt").labels == [r["label"] for r in DEMO_ROWS[:3]]
    (tmp_path / "pairs.dat").write_text("a,b,1\nc,d,0\n", encoding="utf-8")
    assert load_pairs(tmp_path / "pairs.dat", data_format="csv").text2 == ["b", "d"]  # the option, for any name
    stdin = io.StringIO("花呗\t借呗\n")  # standard input (predict --data -) is told by its first line too
    assert parse_pairs(stdin, "<stdin>", require_labels=False).text1 == ["花呗"]


def test_csv_quoting_follows_the_csv_module(tmp_path):
    path = tmp_path / "bq.csv"
    path.write_text('sentence1,sentence2,label\n"花呗, 借呗怎么还","他说""还款""了吗",1\n'
                    '"两行\n的问题",借呗利息,0\n花呗账单,"a,b",1\n', encoding="utf-8")
    pairs = load_pairs(path)
    assert pairs.text1 == ["花呗, 借呗怎么还", "两行\n的问题", "花呗账单"]
    assert pairs.text2 == ['他说"还款"了吗', "借呗利息", "a,b"] and pairs.labels == [1, 0, 1]
    assert pairs.lines == [2, 3, 5]  # a row is named by the line it starts on


def test_a_json_array_of_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text("[\n  " + ",\n  ".join([GOOD, NEG, GOOD]) + "\n]\n", encoding="utf-8")
    pairs = load_pairs(path)
    assert pairs.labels == [1, 0, 1] and pairs.lines == [2, 3, 4]
    path.write_text("[\n  " + ",\n  ".join([GOOD, NEG.replace('"label": 0', '"label": 5')]) + "\n]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.json:3: field 'label' must be 0 or 1"):
        load_pairs(path)
    path.write_text(f"[{GOOD},\n{NEG}\n{GOOD}]", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.json:3: malformed JSON array \(expected ',' or '\]'"):
        load_pairs(path)
    path.write_text(f"[{GOOD},\n{NEG}]\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.json:2: malformed JSON \(text after the array's closing"):
        load_pairs(path)
    path.write_text(f"[{GOOD},\n{NEG.replace(': 0', ': O')}]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.json:2: malformed JSON \("):
        load_pairs(path)


@pytest.mark.parametrize("text, message", [
    ("a\tb\t1\nc\td\t2\n", r"bad\.tsv:2: column 3 \('label'\) must be 0 or 1, got '2' \(a file without a header"),
    ("text1\ttext2\tlabel\na\tb\t1\nc\td\tyes\n", r"bad\.tsv:3: column 3 \('label'\) must be 0 or 1, got 'yes'$"),
    ("a\tb\t1\nc\td\n", r"bad\.tsv:2: 2 columns, the first row has 3 \(text1, text2, label\)"),
    ("a\tb\t1\n\nc\td\t0\te\n", r"bad\.tsv:3: 4 columns, the first row has 3"),
    ("1\ta\tb\n0\tc\td\n", r"bad\.tsv:1: column 3 \('label'\) must be 0 or 1, got 'b' \(a file without"),
    ("text1\tlabel\na\t1\n", r"bad\.tsv:1: the header names no pair of text columns"),
    ("text1\ttext2\na\tb\n", r"bad\.tsv:1: the header names no 'label' column"),
    ("a\tb\t1\n \td\t0\n", r"bad\.tsv:2: column 1 \('text1'\) is empty"),
    ("a\tb\tc\td\n", r"bad\.tsv:1: 4 columns; a TSV file without a header has 3"),
    ('a\tb\t1\n"c\td\t0\ne\tf\t1\n', r"bad\.tsv:2: a quoted field runs from here to line 3"),
])
def test_bad_tsv_rows_name_file_line_and_column(tmp_path, text, message):
    (tmp_path / "bad.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_pairs(tmp_path / "bad.tsv")


def test_data_format_and_encoding_are_checked():
    from afqmc.config import ConfigError

    assert from_dict({"data_format": "tsv", "encoding": "GBK"}).encoding == "GBK"
    with pytest.raises(ConfigError, match="field 'data_format' must be one of auto, json, jsonl, tsv, csv"):
        from_dict({"data_format": "xlsx"})
    for name in ("gbk2", "rot13"):
        with pytest.raises(ConfigError, match="field 'encoding' is not a text encoding"):
            from_dict({"encoding": name})


@pytest.mark.parametrize("labels, ratios, phrases", [
    ([0, 0, 0, 0, 1], {}, ["5 pairs (class 0: 4, class 1: 1)", "split as val 1, train 4", "val would hold 1 pair",
                           "class 1 has 1 pair", "at least 2 pairs in each and 2 pairs of each class"]),
    ([0] * 16 + [1] * 2, {"test_ratio": 0.2}, ["class 1 has 2 pairs", "split as test 4, val 2, train 12",
                                               "3 pairs of each class", "give test_file and val_file"]),
    ([0] * 37 + [1] * 3, {"val_ratio": 0.05}, ["split as val 2, train 38", "the val split drew no pair of class 1"]),
])
def test_too_few_pairs_for_the_split_stop_before_anything_loads(tmp_path, monkeypatch, capsys, labels, ratios, phrases):
    import afqmc.train

    path = tmp_path / "few.tsv"
    path.write_text("".join(f"问题{i}\t回答{i}\t{y}\n" for i, y in enumerate(labels)), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_splits(from_dict({"train_file": str(path), **ratios}))
    assert str(info.value).startswith(f"{path}: too few pairs to split")
    for phrase in phrases:
        assert phrase in str(info.value)

    def built(*args, **kwargs):
        raise AssertionError("the tokenizer was built")

    monkeypatch.setattr(afqmc.train, "load_tokenizer", built)
    args = ["--model_name_or_path", "tiny", "--train_file", str(path), "--output_dir", str(tmp_path / "run")]
    args += [x for k, v in ratios.items() for x in (f"--{k}", str(v))]
    assert afqmc.train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {info.value}"]


def test_a_header_may_put_the_columns_in_any_order(tmp_path):
    (tmp_path / "any.csv").write_text("label,text2,text1,source\n1,答,问,web\n0,否,是,app\n", encoding="utf-8")
    pairs = load_pairs(tmp_path / "any.csv")
    assert pairs.text1 == ["问", "是"] and pairs.text2 == ["答", "否"] and pairs.labels == [1, 0]
