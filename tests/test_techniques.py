"""The fine-tuning techniques (afqmc/techniques.py): each against a hand computation, and each in
real runs (off equals the run from before they existed, resume, mixed precision, checkpointing)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from afqmc.config import FIELDS, TECHNIQUES, ConfigError, from_dict, load_config
from afqmc.data import Encoded
from afqmc.predict import predict_probs
from afqmc.techniques import (FGM, PairOrderDataset, classification_loss, layer_depth, make_ema, make_objective,
                              parameter_groups, rdrop_loss, swap_pair, swapped, symmetric_kl)
from afqmc.train import prepare_data, train
from conftest import DEMO_TRAIN, write_lines

CLS, SEP = 2, 3


def tiny_bert(layers: int = 2, seed: int = 0, dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        num_labels=2, pad_token_id=0)
    return BertForSequenceClassification(config)


def a_batch(seed: int = 0, n: int = 6, width: int = 9) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, width), generator=g)
    ids[:, 0], ids[:, 4], ids[:, -1] = CLS, SEP, SEP
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    labels = torch.tensor([0, 1] * (n // 2))
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}, labels


# --- losses --------------------------------------------------------------------------------------


def test_focal_loss_with_gamma_0_is_the_weighted_cross_entropy_and_follows_its_formula():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    w = torch.tensor([1.0, 2.5])
    assert torch.equal(classification_loss(logits, labels, w, 0.0),
                       torch.nn.CrossEntropyLoss(weight=w)(logits, labels))
    # gamma 2 by hand: sum_i w_yi (1 - p_i)^2 (-log p_i) / sum_i w_yi
    p = torch.softmax(logits, -1).numpy()[np.arange(4), labels.numpy()]
    wy = w.numpy()[labels.numpy()]
    expected = (wy * (1 - p) ** 2 * -np.log(p)).sum() / wy.sum()
    assert classification_loss(logits, labels, w, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # the focal loss weighs the well-classified pairs down: below the cross-entropy
    assert classification_loss(logits, labels, w, 2.0) < classification_loss(logits, labels, w, 0.0)


def test_label_smoothing_equals_a_hand_computation_with_class_weights_and_focal():
    """q_ic = (1 - eps) [c = y_i] + eps / 2; loss = sum_i w_yi sum_c q_ic (1 - p_ic)^gamma (-log p_ic) / sum_i w_yi."""
    rows, labels, w, eps = [[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5]], [0, 1, 1], [1.0, 2.5], 0.1

    def by_hand(gamma: float, weights: list[float]) -> float:
        total = norm = 0.0
        for (a, b), y in zip(rows, labels):
            p = [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
            q = [eps / 2 + (1 - eps if c == y else 0.0) for c in (0, 1)]
            total += weights[y] * sum(q[c] * (1 - p[c]) ** gamma * -math.log(p[c]) for c in (0, 1))
            norm += weights[y]
        return total / norm

    logits, y, wt = torch.tensor(rows), torch.tensor(labels), torch.tensor(w)
    for gamma in (0.0, 2.0):
        for weights, tensor in ((w, wt), ([1.0, 1.0], None)):
            got = classification_loss(logits, y, tensor, gamma, smoothing=eps).item()
            assert got == pytest.approx(by_hand(gamma, weights), rel=1e-6), (gamma, weights)
    # Unweighted, it is PyTorch's label smoothing; weighted, PyTorch weighs a pair's smoothed part by the
    # other class's weight too, which this loss does not (a pair's weight is its label's).
    assert classification_loss(logits, y, None, 0.0, eps).item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=eps).item(), rel=1e-6)
    assert classification_loss(logits, y, wt, 0.0, eps).item() != pytest.approx(
        F.cross_entropy(logits, y, weight=wt, label_smoothing=eps).item(), rel=1e-3)
    # Smoothing pulls a confident right answer's loss up: the target is no longer all on the label.
    assert classification_loss(logits, y, wt, 0.0, eps) > classification_loss(logits, y, wt, 0.0)


def test_label_smoothing_0_is_the_loss_without_it_exactly():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5], [0.0, 0.0]])
    labels, w = torch.tensor([0, 1, 1, 0]), torch.tensor([1.0, 2.5])
    assert torch.equal(classification_loss(logits, labels, w, 0.0, 0.0), F.cross_entropy(logits, labels, weight=w))
    assert torch.equal(classification_loss(logits, labels, None, 0.0, 0.0), F.cross_entropy(logits, labels))
    assert torch.equal(classification_loss(logits, labels, w, 2.0, 0.0), classification_loss(logits, labels, w, 2.0))
    a, b = logits, logits.flip(0)
    assert torch.equal(rdrop_loss(a, b, labels, w, 1.0, 2.0, 0.0), rdrop_loss(a, b, labels, w, 1.0, 2.0))
    # ...and the objective passes it on: R-Drop's two passes both use the smoothed target.
    model = tiny_bert(dropout=0.0).eval()
    batch, y = a_batch()
    smoothed = make_objective(0.0, 0.0, w, smoothing=0.2)(model, batch, y)
    assert torch.equal(smoothed, classification_loss(model(**batch).logits.float(), y, w, 0.0, 0.2))
    both = make_objective(0.0, 1.0, w, smoothing=0.2)(model, batch, y)  # no dropout: KL 0, both passes equal
    assert both.item() == pytest.approx(smoothed.item(), rel=1e-6)


def test_rdrop_loss_equals_a_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.2, 0.9], [-1.0, 0.5]])
    b = torch.tensor([[0.5, 0.2], [0.0, 1.4], [-0.3, 0.1]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([1.0, 2.0])
    pa, pb = torch.softmax(a, -1).numpy(), torch.softmax(b, -1).numpy()
    kl = lambda p, q: (p * np.log(p / q)).sum(-1).mean()  # noqa: E731  KL(p || q), batch mean
    wy = w.numpy()[labels.numpy()]
    ce = lambda p: (wy * -np.log(p[np.arange(3), labels.numpy()])).sum() / wy.sum()  # noqa: E731
    expected = (ce(pa) + ce(pb)) / 2 + 4.0 * (kl(pa, pb) + kl(pb, pa)) / 2
    assert rdrop_loss(a, b, labels, w, alpha=4.0).item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_rdrop_objective_runs_two_dropout_passes_and_off_is_one_plain_pass():
    model = tiny_bert(dropout=0.3).train()
    batch, labels = a_batch()
    torch.manual_seed(1)
    plain = make_objective(0.0, 0.0, None)(model, batch, labels)
    torch.manual_seed(1)
    assert torch.equal(plain, F.cross_entropy(model(**batch).logits.float(), labels))
    torch.manual_seed(1)
    with_rdrop = make_objective(0.0, 1.0, None)(model, batch, labels)
    torch.manual_seed(1)
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    la, lb = model(**doubled).logits.float().chunk(2)
    assert not torch.equal(la, lb)  # two dropout masks
    assert with_rdrop.item() == pytest.approx(rdrop_loss(la, lb, labels, None, 1.0).item(), rel=1e-6)


# --- FGM -----------------------------------------------------------------------------------------


def fgm_step(model, batch, labels, epsilon: float, scale: float = 1.0):
    """One micro-batch as the training loop runs it: backward, FGM's adversarial pass, restore."""
    embedding = model.get_input_embeddings().weight
    fgm = FGM(embedding, epsilon)
    seen = {}
    objective = make_objective(0.0, 0.0, None)
    fgm.catch_next_backward()
    (scale * objective(model, batch, labels)).backward()
    before = embedding.detach().clone()

    def adversarial(weight):
        seen["perturbed"] = embedding.detach().clone()
        (weight * scale * objective(model, batch, labels)).backward()

    fgm.attack(adversarial)
    return fgm, before, seen.get("perturbed")


def test_fgm_restores_the_embeddings_bit_for_bit_and_changes_the_update():
    batch, labels = a_batch()
    plain = tiny_bert()
    F.cross_entropy(plain(**batch).logits, labels).backward()
    model = tiny_bert()
    fgm, before, perturbed = fgm_step(model, batch, labels, epsilon=0.5)
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding.detach(), before)  # restored exactly
    r = perturbed - before
    assert torch.linalg.vector_norm(r).item() == pytest.approx(0.5, rel=1e-5)  # epsilon * g / ||g||
    used = torch.unique(batch["input_ids"])
    assert torch.count_nonzero(r.abs().sum(1)) == len(used)  # only the rows of the batch's tokens move
    # the gradient now holds the plain one plus the adversarial pass's
    g_plain = plain.get_input_embeddings().weight.grad
    assert not torch.allclose(embedding.grad, g_plain)
    assert fgm.skipped == 0


def test_fgm_direction_ignores_the_loss_scale_and_a_zero_gradient_is_skipped():
    batch, labels = a_batch()
    _, b1, p1 = fgm_step(tiny_bert(), batch, labels, 1.0, scale=1.0)
    _, b2, p2 = fgm_step(tiny_bert(), batch, labels, 1.0, scale=1024.0)  # as fp16's GradScaler scales
    assert torch.allclose(p1 - b1, p2 - b2, atol=1e-6)
    model = tiny_bert()
    fgm = FGM(model.get_input_embeddings().weight, 1.0)
    embedding = model.get_input_embeddings().weight
    before = embedding.detach().clone()
    called = []

    def adversarial(weight):  # a skipped pass still runs (no host sync decides it), unperturbed, weighted 0
        called.append((weight.item(), torch.equal(embedding.detach(), before)))

    fgm.catch_next_backward()
    (0.0 * F.cross_entropy(model(**batch).logits, labels)).backward()  # a zero gradient
    fgm.attack(adversarial)
    assert called == [(0.0, True)] and fgm.skipped == 1
    fgm.catch_next_backward()
    (math.inf * F.cross_entropy(model(**batch).logits, labels)).backward()  # an overflow
    fgm.attack(adversarial)
    assert called == [(0.0, True)] * 2 and fgm.skipped == 2
    assert torch.equal(embedding.detach(), before)


def test_fgm_under_accumulation_perturbs_along_this_micro_batchs_own_gradient():
    first, labels = a_batch(seed=1)
    second, _ = a_batch(seed=2)
    alone = tiny_bert()
    _, before, expected = fgm_step(alone, second, labels, 1.0)
    model = tiny_bert()
    F.cross_entropy(model(**first).logits, labels).backward()  # an earlier micro-batch's gradient is in .grad
    _, before2, perturbed = fgm_step(model, second, labels, 1.0)
    assert torch.allclose(perturbed - before2, expected - before, atol=1e-6)


# --- layer-wise learning rates -------------------------------------------------------------------


def test_layerwise_rates_of_every_parameter_group_match_the_formula():
    model = tiny_bert(layers=3)
    lr, decay = 1e-3, 0.5
    groups = parameter_groups(model, lr, weight_decay=0.01, decay=decay)
    owner = {id(p): g for g in groups for p in g["params"]}
    assert len(owner) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    for name, param in model.named_parameters():
        g = owner[id(param)]
        depth = 0 if "embeddings" in name else (int(name.split("layer.")[1].split(".")[0]) + 1 if "layer." in name else 4)
        assert layer_depth(name, 3) == depth, name
        assert g["lr"] == pytest.approx(lr * decay ** (4 - depth)), name  # head lr, layer 2: lr/2, ..., embeddings lr/16
        assert g["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0), name  # no decay on biases and LayerNorm
    assert owner[id(model.classifier.weight)]["lr"] == lr
    assert owner[id(model.bert.embeddings.word_embeddings.weight)]["lr"] == pytest.approx(lr * decay ** 4)
    # off: the two groups of the plain recipe, no per-group rate
    plain = parameter_groups(model, lr, 0.01, 1.0)
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0] and all("lr" not in g for g in plain)


@pytest.mark.slow
def test_layerwise_rates_follow_the_schedule(tiny_cfg):
    """In a run, each group's rate is the schedule's factor times its own peak."""
    cfg = tiny_cfg(max_steps=4, eval_steps=4, layerwise_lr_decay=0.5, tiny_num_layers=2, warmup_ratio=0.0)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        train(cfg, progress=False)
    finally:
        torch.optim.AdamW.step = original
    first = seen[0]  # no warm-up: the peak rates, the head at learning_rate
    assert max(first) == pytest.approx(cfg.learning_rate)
    assert sorted({round(x / cfg.learning_rate, 6) for x in first}) == [0.125, 0.25, 0.5, 1.0]


# --- EMA -----------------------------------------------------------------------------------------


def test_ema_after_k_updates_equals_the_hand_computed_average():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(model, 0.9)
    values = [1.0, 3.0, -2.0, 5.0]
    expected = None
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update_parameters(model)
        expected = v if expected is None else 0.9 * expected + 0.1 * v  # the first update copies
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert int(ema.n_averaged) == len(values)


# --- pair order ----------------------------------------------------------------------------------


def test_swap_pair_exchanges_the_sentences_and_their_token_types():
    ids = [CLS, 10, 11, 12, SEP, 20, 21, SEP]
    assert swap_pair(ids, SEP) == ([CLS, 20, 21, SEP, 10, 11, 12, SEP], [0, 0, 0, 0, 1, 1, 1, 1])
    assert swap_pair(swap_pair(ids, SEP)[0], SEP)[0] == ids


def test_pair_order_is_reproducible_per_seed_and_differs_across_epochs():
    enc = Encoded([[CLS, 10 + i, SEP, 50 + i, 51, SEP] for i in range(200)], [[0, 0, 0, 1, 1, 1]] * 200, [0] * 200)
    a, b, other = PairOrderDataset(enc, SEP, seed=7), PairOrderDataset(enc, SEP, seed=7), PairOrderDataset(enc, SEP, seed=8)
    orders = []
    for epoch in range(3):
        for d in (a, b, other):
            d.set_epoch(epoch)
        assert [a[i]["input_ids"] for i in range(200)] == [b[i]["input_ids"] for i in range(200)]
        assert a.swap != other.swap
        orders.append(list(a.swap))
        assert 60 < sum(a.swap) < 140  # about half of the pairs swapped
        swapped_item = a[a.swap.index(True)]
        assert swapped_item["input_ids"][1] >= 50 and swapped_item["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert orders[0] != orders[1] != orders[2]
    a.set_epoch(1)
    assert a.swap == orders[1]  # what a resumed run sees again


def test_averaging_over_both_orders_is_the_mean_of_the_two_orders_probabilities(tmp_path):
    from afqmc.data import PairData
    from afqmc.modeling import build_char_vocab
    from transformers import BertTokenizer

    pairs = PairData(["花呗怎么还款", "借呗额度", "如何开通"], ["花呗如何还钱", "借呗的额度怎么提高", "怎样关闭"], None, "test")
    tokenizer = BertTokenizer(str(build_char_vocab(pairs.text1 + pairs.text2, tmp_path / "vocab.txt")))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2)).eval()
    forward = predict_probs(model, tokenizer, pairs, 64)
    backward = predict_probs(model, tokenizer, PairData(pairs.text2, pairs.text1, None, "test"), 64)
    assert forward != backward  # the plain model is not symmetric
    model.config.average_pair_orders = True  # what save_model_dir records for average_pair_orders
    averaged = predict_probs(model, tokenizer, pairs, 64)
    assert averaged == pytest.approx([(f + b) / 2 for f, b in zip(forward, backward)], rel=1e-6)
    swapped_enc = swapped(Encoded(*[tokenizer(pairs.text1, pairs.text2)[k] for k in ("input_ids", "token_type_ids")],
                                  None), tokenizer.sep_token_id)
    assert swapped_enc.input_ids == tokenizer(pairs.text2, pairs.text1)["input_ids"]  # the same as tokenizing (b, a)


@pytest.mark.slow
def test_a_run_shows_each_pair_in_a_new_random_order_every_epoch(tiny_cfg, monkeypatch):
    """The loop sets the pair orders of every epoch itself: under several processes Accelerate's
    set_epoch stops at the sharded batch sampler and never reaches the dataset."""
    epochs, masks = [], []
    original = PairOrderDataset.set_epoch

    def spy(self, epoch):
        original(self, epoch)
        epochs.append(epoch)
        masks.append(list(self.swap))

    monkeypatch.setattr(PairOrderDataset, "set_epoch", spy)
    train(tiny_cfg(max_train_samples=200, num_epochs=3, augment_pair_order=True, group_by_length=True), progress=False)
    # set once per epoch by the loop (Accelerate may set it again: the same epoch gives the same orders)
    assert [e for i, e in enumerate(epochs) if i == 0 or epochs[i - 1] != e] == [0, 1, 2]
    per_epoch = {e: m for e, m in zip(epochs, masks)}
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,why", [
    ("fgm_epsilon", -0.1, "must be >= 0"), ("rdrop_alpha", -1, "must be >= 0"), ("focal_gamma", -2, "must be >= 0"),
    ("layerwise_lr_decay", 0.0, r"must be in \(0, 1\]"), ("layerwise_lr_decay", 1.2, r"must be in \(0, 1\]"),
    ("ema_decay", 1.0, r"must be in \[0, 1\)"), ("ema_decay", -0.5, r"must be in \[0, 1\)"),
])
def test_bad_technique_values_name_the_file_line_and_field(tmp_path, field, value, why):
    path = write_lines(tmp_path / "run.yaml", ["model_name_or_path: tiny", "learning_rate: 1.0e-3", f"{field}: {value}"])
    with pytest.raises(ConfigError, match=rf"run.yaml:3: field '{field}' {why}"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"command line: field '{field}' {why}"):
        load_config(None, {field: str(value)})


def outside(tech) -> list:
    """Values just outside a technique's declared range (none for a switch)."""
    if tech.low is None:
        return []
    below = [tech.low - 0.5] + ([tech.low] if tech.ends[0] == "(" else [])
    above = [] if tech.high == math.inf else [tech.high + 0.5] + ([tech.high] if tech.ends[1] == ")" else [])
    return below + above


def test_the_technique_table_is_each_fields_declaration_and_the_checks_follow_it():
    assert set(TECHNIQUES) >= {"augment_pair_order", "average_pair_orders", "focal_gamma", "fgm_epsilon",
                               "rdrop_alpha", "layerwise_lr_decay", "ema_decay", "label_smoothing"}
    shorts = [t.short for t in TECHNIQUES.values()]
    assert len(set(shorts)) == len(shorts)  # one column per technique in a table
    for name, tech in TECHNIQUES.items():
        assert FIELDS[name].default == tech.off, name  # off by default
        assert from_dict({name: tech.off}).to_dict()[name] == tech.off  # off is a valid value
        assert tech.short and tech.label and FIELDS[name].metadata["help"]
        for value in outside(tech):
            with pytest.raises(ConfigError, match=rf"command line: field '{name}' must be .*\({tech.off:g} = off\)"):
                load_config(None, {name: str(value)})


# --- real runs -----------------------------------------------------------------------------------

# Every technique's off value, from the one table (afqmc.config.TECHNIQUES: each field's declaration).
OFF = {name: tech.off for name, tech in TECHNIQUES.items()}

# The run before the techniques existed (commit 197d4f4, this machine's torch 2.13 CPU build), to the
# last digit: dropout, the batch order and the initialisation draw from the streams they drew from.
BEFORE = {"history": [
    {"train/loss": 0.6933802604675293, "val/loss": 0.6931270360946655, "val/f1_macro": 0.4388827001250782,
     "val/auc": 0.5213675213675214, "val/threshold": 0.49323156476020813, "train/lr": 0.0005555555555555556},
    {"train/loss": 0.6925564765930176, "val/loss": 0.6931610703468323, "val/f1_macro": 0.432208155307151,
     "val/auc": 0.4978632478632478, "val/threshold": 0.4910592883825302, "train/lr": 0.0}],
    "test_f1": 0.5423340961098397, "test_auc": 0.5598290598290598}


def off_cfg(tmp_path, **changes):
    values = dict(model_name_or_path="tiny", tiny_hidden_size=32, tiny_num_layers=2, tiny_num_heads=2,
                  train_file=str(DEMO_TRAIN), val_ratio=0.2, test_ratio=0.1, max_train_samples=400,
                  learning_rate=1e-3, per_device_batch_size=16, max_steps=10, eval_steps=5, class_weights="balanced",
                  gradient_accumulation_steps=2, mixed_precision="no", output_dir=str(tmp_path / "run"))
    return from_dict({**values, **changes}, source="test")


@pytest.mark.slow
def test_every_technique_off_reproduces_the_run_from_before_them_exactly(tmp_path):
    torch.set_num_threads(1)
    # Every technique in the table at its off value, set explicitly (so a new one is covered by its row).
    history = []
    summary = train(off_cfg(tmp_path, **OFF, gradient_checkpointing=False), report=lambda m, c: history.append(m),
                    progress=False)
    assert [{k: m[k] for k in BEFORE["history"][0]} for m in history] == BEFORE["history"]
    assert (summary["test"]["f1_macro"], summary["test"]["auc"]) == (BEFORE["test_f1"], BEFORE["test_auc"])


ALL_ON = dict(augment_pair_order=True, average_pair_orders=True, focal_gamma=1.0, fgm_epsilon=0.5, rdrop_alpha=1.0,
              layerwise_lr_decay=0.8, ema_decay=0.9, label_smoothing=0.1)


@pytest.mark.slow
def test_resume_with_every_technique_on_matches_an_uninterrupted_run(tmp_path):
    """EMA (its state in the checkpoint), the pair orders, FGM, R-Drop, focal and layer-wise rates."""
    common = dict(max_steps=12, eval_steps=4, group_by_length=True, **ALL_ON)
    full = []
    train(off_cfg(tmp_path, output_dir=str(tmp_path / "full"), **common), report=lambda m, c: full.append(m),
          progress=False)

    class Stop(Exception):
        pass

    def stop_at_8(m, ckpt):
        if m["step"] == 8:
            raise Stop

    cfg = off_cfg(tmp_path, output_dir=str(tmp_path / "cut"), **common)
    with pytest.raises(Stop):
        train(cfg, report=stop_at_8, progress=False)
    resumed = []
    train(cfg, report=lambda m, c: resumed.append(m), resume_from=str(tmp_path / "cut" / "checkpoint"), progress=False)
    assert [m["step"] for m in resumed] == [12]
    for key in ("train/loss", "val/loss", "val/f1_macro", "val/auc", "train/lr"):
        assert resumed[-1][key] == pytest.approx(full[-1][key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_the_techniques_change_the_run_and_the_saved_model_is_the_average(tmp_path):
    """Each technique on alone changes the training losses; EMA's saved model is the average's
    weights, and a model saved with average_pair_orders predicts the mean of both orders."""
    short = dict(max_steps=4, eval_steps=4)
    data = prepare_data(off_cfg(tmp_path))
    base = []
    train(off_cfg(tmp_path, output_dir=str(tmp_path / "base"), **short), report=lambda m, c: base.append(m), data=data,
          progress=False)
    for name, value in ALL_ON.items():
        if name == "average_pair_orders":
            continue
        seen = []
        train(off_cfg(tmp_path, output_dir=str(tmp_path / name), **short, **{name: value}),
              report=lambda m, c: seen.append(m), data=data, progress=False)
        changed = seen[-1]["val/loss"] != base[-1]["val/loss"] or seen[-1]["train/loss"] != base[-1]["train/loss"]
        assert changed, name
    from safetensors.torch import load_file

    ema = load_file(str(tmp_path / "ema_decay" / "best_model" / "model.safetensors"))
    plain = load_file(str(tmp_path / "base" / "best_model" / "model.safetensors"))
    assert not torch.equal(ema["classifier.weight"], plain["classifier.weight"])


@pytest.mark.slow
def test_bf16_and_gradient_checkpointing_with_the_techniques(tmp_path):
    """bf16 autocast (CPU) with every technique on trains; gradient checkpointing gives the same
    losses as without, to float tolerance (the dropout masks are replayed in the recomputation)."""
    runs = {}
    for name, changes in {"plain": {}, "checkpointed": {"gradient_checkpointing": True}}.items():
        seen = []
        train(off_cfg(tmp_path, output_dir=str(tmp_path / name), max_steps=6, eval_steps=3, **changes),
              report=lambda m, c: seen.append(m), progress=False)
        runs[name] = seen
    for a, b in zip(runs["plain"], runs["checkpointed"], strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)
        assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-5)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # Accelerate keeps one precision per process (tests/test_train.py)
    try:
        summary = train(off_cfg(tmp_path, output_dir=str(tmp_path / "bf16"), max_steps=6, eval_steps=3,
                                mixed_precision="bf16", **ALL_ON), progress=False)
    finally:
        AcceleratorState._reset_state(True)
    assert summary["precision"]["forward_dtype"] == "bfloat16"
    assert math.isfinite(summary["last"]["train/loss"]) and math.isfinite(summary["test"]["f1_macro"])


# --- in a search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "afqmc_cpu"])
def test_the_afqmc_spaces_search_every_technique_with_off_as_a_value(name):
    """Each technique is one choice whose first value (the baseline's) is off: TPE spends no trial
    on a parameter whose switch is off, and the baseline is the space without the techniques."""
    from conftest import ROOT
    from tune.folder import LABEL, SHORT
    from tune.space import load_space, trial_config

    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    for field, off in OFF.items():  # every technique of the table (afqmc.config.TECHNIQUES)
        assert field in space.params, f"{name}.yaml does not search the technique {field}"
        param = space.params[field]
        assert param.type == "choice" and param.values[0] == off == param.baseline, field
        assert len(param.values) >= 2
        assert (SHORT[field], LABEL[field]) == (TECHNIQUES[field].short, TECHNIQUES[field].label)
    baseline = trial_config(space.base, space.baseline())
    assert all(getattr(baseline, f) == v for f, v in OFF.items())
