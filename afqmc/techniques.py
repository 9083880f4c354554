"""Fine-tuning techniques beyond the plain loop, each off by default (afqmc/config.py says how to
turn each on): the loss (class-weighted cross-entropy, or focal; label smoothing), R-Drop, FGM adversarial training,
layer-wise learning-rate decay, an EMA of the weights, and pair-order augmentation.

The training step in `afqmc/train.py` calls these; each is a small function or class that computes
one thing. With every technique off, the step computes exactly what it did before they existed (the
same kernels in the same order, no extra random draws: tests/test_techniques.py checks it bit for bit).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from afqmc.data import Encoded, PairDataset

# --- the loss ------------------------------------------------------------------------------------


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                        gamma: float = 0.0, smoothing: float = 0.0) -> torch.Tensor:
    """The class-weighted cross-entropy (gamma 0) or the focal loss (Lin et al., 2017), averaged
    the way `torch.nn.CrossEntropyLoss(weight)` averages: sum_i w_yi (1 - p_i)^gamma (-log p_i) /
    sum_i w_yi, where p_i is the predicted probability of the true class and the class weights w act
    as focal's alpha. Gamma 0 is exactly the weighted cross-entropy (the same kernel is called).

    With label smoothing eps > 0 (Szegedy et al., 2016), pair i's target over the C classes is
    q_ic = (1 - eps) [c = y_i] + eps / C, and the loss is

        sum_i w_yi sum_c q_ic (1 - p_ic)^gamma (-log p_ic) / sum_i w_yi

    the pair still weighted by its own label's class weight, and focal's factor on each class's term.
    This is not `F.cross_entropy(weight=w, label_smoothing=eps)`: that weighs the smoothed part of a
    pair's target by the weights of the other classes, so a pair's weight would depend on more than its
    label (the two agree without class weights). eps 0 is exactly the loss without smoothing."""
    if smoothing == 0:
        if gamma == 0:
            return F.cross_entropy(logits, labels, weight=weights)
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        focal = (1.0 - log_p.exp()).pow(gamma) * -log_p
        w = torch.ones_like(focal) if weights is None else weights[labels]
        return (w * focal).sum() / w.sum()
    log_p = F.log_softmax(logits, dim=-1)
    classes = log_p.shape[-1]
    target = torch.full_like(log_p, smoothing / classes)
    target.scatter_(1, labels[:, None], 1.0 - smoothing + smoothing / classes)
    terms = -log_p if gamma == 0 else (1.0 - log_p.exp()).pow(gamma) * -log_p
    per_pair = (target * terms).sum(-1)
    w = torch.ones_like(per_pair) if weights is None else weights[labels]
    return (w * per_pair).sum() / w.sum()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """(KL(p_a || p_b) + KL(p_b || p_a)) / 2 between the two predicted distributions, averaged over
    the batch: R-Drop's consistency term."""
    log_a, log_b = F.log_softmax(logits_a, dim=-1), F.log_softmax(logits_b, dim=-1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    return (kl_ab + kl_ba) / 2


def rdrop_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
               alpha: float, gamma: float = 0.0, smoothing: float = 0.0) -> torch.Tensor:
    """R-Drop (Liang et al., 2021): the classification loss of two forward passes of the same batch
    with different dropout masks, averaged, plus alpha times their symmetric KL divergence."""
    task = (classification_loss(logits_a, labels, weights, gamma, smoothing)
            + classification_loss(logits_b, labels, weights, gamma, smoothing))
    return task / 2 + alpha * symmetric_kl(logits_a, logits_b)


def make_objective(gamma: float, alpha: float, weights: torch.Tensor | None,
                   smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """`objective(model, batch, labels)`: the training loss of one micro-batch, focal with `gamma`
    (0: the weighted cross-entropy), label smoothing `smoothing` (0: off) and R-Drop with `alpha` (0: off).

    R-Drop runs the batch twice in one forward pass (the batch stacked on itself: each copy gets its
    own dropout masks, and one pass of 2B pairs is faster than two of B)."""

    def objective(model, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if alpha == 0:
            return classification_loss(model(**batch).logits.float(), labels, weights, gamma, smoothing)
        doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
        logits_a, logits_b = model(**doubled).logits.float().chunk(2)
        return rdrop_loss(logits_a, logits_b, labels, weights, alpha, gamma, smoothing)

    return objective


# --- FGM -----------------------------------------------------------------------------------------


class FGM:
    """Fast gradient method on the word embeddings (Miyato et al., 2017), one adversarial pass per
    micro-batch: after the normal backward, add r = epsilon * g / ||g|| to the embedding matrix,
    where g is the gradient of this micro-batch's loss with respect to it, backward the loss on the
    perturbed input (its gradient adds to the normal one), then restore the matrix bit for bit.

    g is caught by a hook on the embedding weight as autograd delivers it, before it is added to
    `.grad`: it is this micro-batch's own gradient under accumulation (not the sum so far) and the
    process's own under DDP (whose all-reduce comes after). Normalising removes the fp16 loss scale
    and the accumulation divisor, so the direction depends on neither. A zero or non-finite g (an fp16
    overflow) skips the pass: r is 0 and the adversarial loss is weighted 0. The pass still runs, so
    that the decision stays on the device (no host sync per micro-batch) and, with several processes,
    every one takes part in the all-reduce of the adversarial backward whatever the others decided."""

    def __init__(self, embedding: torch.nn.Parameter, epsilon: float):
        self.embedding, self.epsilon = embedding, epsilon
        self._grad: torch.Tensor | None = None
        self._armed = False  # the next backward's embedding gradient is the direction
        self._skipped = torch.zeros((), dtype=torch.long, device=embedding.device)
        embedding.register_hook(self._catch)

    @property
    def skipped(self) -> int:
        """Adversarial passes skipped (zero or non-finite gradient); reading it is a host sync."""
        return int(self._skipped)

    def _catch(self, grad: torch.Tensor) -> None:
        if self._armed:
            self._grad = grad.detach().clone()

    def catch_next_backward(self) -> None:
        """Call before the normal backward: its embedding gradient is the direction."""
        self._armed, self._grad = True, None

    def perturbation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """r = epsilon * g / ||g|| for the gradient caught and the adversarial loss's weight, 1.0; or
        r = 0 and weight 0.0 when g is zero or not finite (the pass is skipped). Both on the device."""
        self._armed = False
        g = self._grad if self._grad is not None else torch.zeros_like(self.embedding)
        self._grad = None
        norm = torch.linalg.vector_norm(g.float())
        ok = torch.isfinite(norm) & (norm > 0)
        self._skipped += (~ok).long()
        r = torch.where(ok, self.epsilon * g / norm, torch.zeros_like(g))
        return r.to(self.embedding.dtype), ok.float()

    def attack(self, adversarial_backward: Callable[[torch.Tensor], None]) -> None:
        """Perturb, run `adversarial_backward(weight)` (forward, and backward of weight times the loss on
        the perturbed model; weight 0 when the pass is skipped), restore the embeddings bit for bit."""
        r, weight = self.perturbation()
        backup = self.embedding.data.clone()
        self.embedding.data.add_(r)
        try:
            adversarial_backward(weight)
        finally:
            self.embedding.data.copy_(backup)


# --- layer-wise learning-rate decay --------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """Where a parameter sits, from the embeddings (0) through encoder layers 1..num_layers to the
    head (num_layers + 1: pooler and classifier, anything after the encoder)."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embeddings" in name:
        return 0
    return num_layers + 1


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW's parameter groups: no weight decay on biases and LayerNorm weights (the BERT recipe);
    with layer-wise decay < 1 (Howard & Ruder, 2018; Clark et al., 2020), the head at `lr`, each
    encoder layer below at `decay` times the rate of the one above, the embeddings lowest
    (lr * decay ** (num_layers + 1)), and the weight-decay split kept within each depth."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay == 1.0:  # the plain recipe: two groups, in this order (the run without the technique)
        groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        return groups
    num_layers = 1 + max((int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))), default=-1)
    by_key: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in named:
        by_key.setdefault((layer_depth(name, num_layers), param.ndim >= 2), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
             "lr": lr * decay ** (num_layers + 1 - depth), "depth": depth}
            for (depth, decayed), params in sorted(by_key.items(), reverse=True)]


# --- EMA of the weights --------------------------------------------------------------------------


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """PyTorch's own exponential moving average of the weights (`AveragedModel` with its EMA rule):
    after k updates of `update_parameters`, ema = decay * ema + (1 - decay) * weights, starting from
    the weights at the first update. Buffers are not averaged but copied from the model at every
    update (BERT's are constant ids), so the average is a whole model to evaluate and save."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


# --- pair order ----------------------------------------------------------------------------------


def swap_pair(input_ids: Sequence[int], sep_id: int) -> tuple[list[int], list[int]]:
    """`[CLS] a [SEP] b [SEP]` -> `[CLS] b [SEP] a [SEP]` with its token types, from the ids alone:
    no second tokenization, and the same tokens as the original after its truncation."""
    first = list(input_ids).index(sep_id)
    a, b = list(input_ids[1:first]), list(input_ids[first + 1:-1])
    ids = [input_ids[0], *b, sep_id, *a, input_ids[-1]]
    return ids, [0] * (len(b) + 2) + [1] * (len(a) + 1)


def swapped(encoded: Encoded, sep_id: int) -> Encoded:
    """The data set with every pair in the other order (`swap_pair`)."""
    pairs = [swap_pair(ids, sep_id) for ids in encoded.input_ids]
    return Encoded([p[0] for p in pairs], [p[1] for p in pairs], encoded.labels)


class PairOrderDataset(PairDataset):
    """Training pairs, each in a random order per epoch (`augment_pair_order`): AFQMC's relation is
    symmetric, so (b, a) is as true a pair as (a, b). Both orders are tokenized once; which one a
    pair shows in an epoch comes from a generator of its own seeded with seed and epoch, so the
    other random streams do not shift, a resumed run sees the same orders, and every process agrees."""

    def __init__(self, encoded: Encoded, sep_id: int, seed: int):
        super().__init__(encoded)
        self.other = swapped(encoded, sep_id)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        g = torch.Generator().manual_seed(1_000_003 * (self.seed + 1) + epoch)
        self.swap = torch.randint(0, 2, (len(self.encoded),), generator=g).bool().tolist()

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if self.swap[i]:
            item["input_ids"], item["token_type_ids"] = self.other.input_ids[i], self.other.token_type_ids[i]
        return item
