import json

import pytest

from afqmc.config import from_dict
from afqmc.data import (DataError, LengthGroupedSampler, PairDataset, collate, count_overlap, encode, load_pairs,
                        split_train_val)
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
    ('{"text1": "a", "text2": 5, "label": 1}', r"bad\.jsonl:2: field 'text2' must be a string"),
    ('{"text1": "a", "text2": "  ", "label": 1}', r"bad\.jsonl:2: field 'text2' is empty"),
    ('["a", "b", 1]', r"bad\.jsonl:2: expected a JSON object"),
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
