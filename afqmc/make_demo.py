"""Generate the embedded demo data set: synthetic Chinese customer-service question pairs.

    python -m afqmc.make_demo [--out afqmc/demo_data] [--seed 0]

Two questions match (label 1) when they ask the same thing about the same product in different
words; hard negatives share the product or the intent but not both. About 30% positives, like
AFQMC. The files are committed; a test checks this generator still reproduces them exactly.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = ["花呗", "借呗", "余额宝", "网商贷", "信用卡", "备用金"]
INTENTS = {
    "repay": ["{p}怎么还款", "{p}在哪里还钱", "如何还{p}的钱", "{p}还款方式有哪些", "{p}的钱要怎么还"],
    "limit": ["{p}额度怎么提升", "怎样提高{p}的额度", "{p}额度能不能再高一点", "为什么我的{p}额度这么低", "{p}提额有什么办法"],
    "open": ["为什么开通不了{p}", "{p}无法开通怎么办", "我的{p}开不了", "{p}开通失败是什么原因", "怎么才能开通{p}"],
    "overdue": ["{p}逾期了会怎样", "{p}逾期有什么后果", "{p}晚还几天影响征信吗", "{p}没按时还款怎么办", "{p}逾期一天要罚多少"],
    "interest": ["{p}利息怎么算", "{p}的利率是多少", "用{p}要付多少利息", "{p}收不收利息", "{p}日息是多少"],
    "close": ["怎么关闭{p}", "{p}可以注销吗", "不想用{p}了怎么关掉", "{p}怎么取消", "如何停用{p}"],
    "bill": ["{p}账单日是哪天", "{p}每月几号出账单", "{p}什么时候出账", "{p}的账单在哪里看", "{p}本月账单怎么查"],
    "refund": ["退款会退到{p}吗", "用{p}买的东西退款退到哪里", "{p}付款的退货钱去哪了", "{p}退款多久到账", "{p}支付的订单退款怎么算"],
    "installment": ["{p}可以分期吗", "{p}怎么分期还款", "{p}分期手续费多少", "{p}能分几期", "{p}分期以后能提前还吗"],
    "frozen": ["{p}被冻结了怎么办", "为什么{p}突然不能用了", "{p}被关闭了还能恢复吗", "{p}显示暂停使用", "{p}用不了是怎么回事"],
}
PREFIXES = ["", "", "", "请问", "我想问一下", "你好，", "问下"]
SUFFIXES = ["", "", "？", "呢", "啊", "？？", "。"]
POSITIVE_RATE = 0.31


def _question(rng: random.Random, product: str, intent: str, avoid: str | None = None) -> str:
    templates = [t for t in INTENTS[intent] if t != avoid]
    template = rng.choice(templates)
    return template, rng.choice(PREFIXES) + template.format(p=product) + rng.choice(SUFFIXES)


def make_pair(rng: random.Random) -> dict:
    product = rng.choice(PRODUCTS)
    intent = rng.choice(sorted(INTENTS))
    template, text1 = _question(rng, product, intent)
    if rng.random() < POSITIVE_RATE:
        # Half the paraphrases reuse the wording with another greeting or ending, as in AFQMC.
        _, text2 = _question(rng, product, intent, avoid=None if rng.random() < 0.5 else template)
        return {"text1": text1, "text2": text2, "label": 1}
    kind = rng.random()
    if kind < 0.15:  # same product, other intent
        intent = rng.choice([i for i in sorted(INTENTS) if i != intent])
    elif kind < 0.3:  # same intent, other product
        product = rng.choice([p for p in PRODUCTS if p != product])
    else:
        product, intent = rng.choice(PRODUCTS), rng.choice([i for i in sorted(INTENTS) if i != intent])
    _, text2 = _question(rng, product, intent)
    return {"text1": text1, "text2": text2, "label": 0}


def generate(out: Path, seed: int = 0, n_train: int = 6000, n_test: int = 300) -> dict[str, Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "train.jsonl", "test": out / "test.jsonl"}
    train = [make_pair(rng) for _ in range(n_train)]
    test = [{k: v for k, v in make_pair(rng).items() if k != "label"} for _ in range(n_test)]
    for name, rows in (("train", train), ("test", test)):
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "demo_data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in generate(Path(args.out), args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
