"""The default labeler: a cross-encoder fine-tuned from all-MiniLM-L6-v2 on seed grades.

It reads "[CLS] query [SEP] product_text [SEP]" and classifies 0 / 1 / 2. A cross-encoder sees the
query and product words together (unlike the bi-encoders of Stage 2), which is what makes it a good
grader from a few thousand examples. The saved labeler is a plain Hugging Face
AutoModelForSequenceClassification directory plus `labeler.json` (max_length, version, training
summary), loadable by anyone with transformers.

With a shop vocabulary (`labeling/vocabulary.py`) the labeler reads, after the product text, the
shopper words for the product ("called: sneakers, trainers | for him | good for: gym wear"): a few
thousand seed grades cannot teach a small model that "chappals" are flip flops, but they teach it
well that a query matching the product's words is relevant. An LLM labeler knows such words itself;
this is how the offline one gets them. The vocabulary is saved in the labeler dir (`vocabulary.json`),
so grading reads the product exactly as training did.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import Grade, Pair
from ..grades import GRADE_VALUES

LABELER_FILE = "labeler.json"
VOCABULARY_FILE = "vocabulary.json"


def labeler_text(pair: Pair, vocabulary=None) -> str:
    """What the cross-encoder reads of a product: its text, then its shopper words when a vocabulary
    is given. One function for training and grading."""
    if vocabulary is None:
        return pair.product_text
    words = vocabulary.shopper_words(pair.product, list(pair.product))
    return f"{pair.product_text} | {words}" if words else pair.product_text


@dataclass
class CrossEncoderConfig:
    max_length: int = 64
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    class_weighting: bool = True   # grades are skewed (many 0s): weight classes by inverse frequency
    seed: int = 0
    # Precision of training and of grading (see dashclip.precision); "auto" is bf16 where native.
    amp: str | None = None


class CrossEncoderLabeler:
    name = "cross-encoder"

    def __init__(self, path, device: str = "cpu", batch_size: int = 64, num_threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / LABELER_FILE).exists():
            raise FileNotFoundError(f"{path}: not a cross-encoder labeler dir (no {LABELER_FILE}); "
                                    f"train one with `dashclip labels train`")
        self.meta = json.loads((path / LABELER_FILE).read_text())
        self.version = str(self.meta["version"])
        self.max_length = int(self.meta.get("max_length", 64))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.amp = (self.meta.get("config") or {}).get("amp")    # grade in the precision it trained in
        self.vocabulary = None
        if (path / VOCABULARY_FILE).exists():
            from ..vocabulary import Vocabulary

            self.vocabulary = Vocabulary.load(path / VOCABULARY_FILE)
        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch

    def probabilities(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """[N, 3] class probabilities. Pairs are batched by length (a batch pads to its longest pair:
        ~1.3x faster on the fashion pool), and returned in the order given."""
        from ...models.batching import length_batches
        from ...precision import autocast

        torch = self._torch
        out = np.zeros((len(queries), 3), dtype=np.float32)
        with torch.inference_mode(), autocast(self.device, self.amp):
            for rows in length_batches([len(q) + len(t) for q, t in zip(queries, texts)], self.batch_size):
                enc = _encode(self.tokenizer, [queries[j] for j in rows], [texts[j] for j in rows],
                              self.max_length).to(self.device)
                out[rows] = torch.softmax(self.model(**enc).logits.float(), -1).cpu().numpy()
        return out

    def grade(self, pairs: list[Pair]) -> list[Grade]:
        p = self.probabilities([x.query for x in pairs], [labeler_text(x, self.vocabulary) for x in pairs])
        return [Grade(int(r.argmax()), float(r.max())) for r in p]


def _encode(tokenizer, queries, texts, max_length):
    # Truncate the product side only: the query is short and every word of it matters.
    return tokenizer(list(queries), list(texts), padding=True, truncation="only_second",
                     max_length=max_length, return_tensors="pt")


def _version(config: CrossEncoderConfig, base: str, train_hash: str) -> str:
    h = hashlib.sha256(json.dumps([asdict(config), base, train_hash], sort_keys=True).encode())
    return h.hexdigest()[:12]


def train_cross_encoder(queries: list[str], texts: list[str], grades, out_dir, base: str | None = None,
                        config: CrossEncoderConfig | None = None,
                        progress: Callable[[int, int, float], None] | None = None, vocabulary=None) -> dict:
    """Fine-tune a 3-way cross-encoder on (query, product text, grade) and save it to `out_dir`.

    `texts` are what the labeler reads of each product (`labeler_text`); `vocabulary`, when the texts
    were made with one, is saved beside the weights so grading reads products the same way.
    `base`: a local dir or hub id of a BERT-like encoder (default: the installed all-MiniLM-L6-v2).
    `progress(step, total_steps, loss)` is called after every optimizer step. Returns the summary
    written into labeler.json."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ...io import atomic_dir, write_json
    from ...models.sentence import minilm_path
    from ...precision import autocast
    from ...optim import adamw, linear_schedule

    config = config or CrossEncoderConfig()
    grades = np.asarray(grades, dtype=np.int64)
    if not (len(queries) == len(texts) == len(grades)) or len(grades) == 0:
        raise ValueError(f"training needs equal, non-empty lists (queries {len(queries)}, texts {len(texts)}, "
                         f"grades {len(grades)})")
    if not np.isin(grades, GRADE_VALUES).all():
        raise ValueError("grades must be 0, 1 or 2")
    base = str(base or minilm_path())
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label={0: "0", 1: "1", 2: "2"}, label2id={"0": 0, "1": 1, "2": 2})
    model.train()
    counts = np.bincount(grades, minlength=3).astype(np.float64)
    weights = (counts.sum() / (3 * counts.clip(1))) if config.class_weighting else np.ones(3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    steps_per_epoch = -(-len(grades) // config.batch_size)
    total = steps_per_epoch * config.epochs
    optim = adamw(model.parameters(), "cpu", lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, linear_schedule(total, warmup))
    t0, step, losses = time.time(), 0, []
    for _ in range(config.epochs):
        order = rng.permutation(len(grades))
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            enc = _encode(tokenizer, [queries[j] for j in idx], [texts[j] for j in idx], config.max_length)
            with autocast("cpu", config.amp):
                logits = model(**enc).logits
            loss = loss_fn(logits.float(), torch.from_numpy(grades[idx]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            if progress is not None:
                progress(step, total, losses[-1])
    train_hash = hashlib.sha256(json.dumps([list(queries), list(texts), grades.tolist()]).encode()).hexdigest()
    summary = {"labeler": CrossEncoderLabeler.name, "version": _version(config, base, train_hash),
               "base": base, "max_length": config.max_length, "config": asdict(config),
               "train_pairs": int(len(grades)), "train_grade_counts": counts.astype(int).tolist(),
               "steps": step, "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
               "train_seconds": round(time.time() - t0, 1), "train_data_sha256": train_hash,
               "vocabulary": vocabulary.name if vocabulary is not None else None}
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / LABELER_FILE, summary)
        if vocabulary is not None:
            write_json(Path(tmp) / VOCABULARY_FILE, vocabulary.to_dict())
    return summary


def train_from_seed(seed, catalog, out_dir, vocabulary=None, extra=None, **kw) -> dict:
    """Train on the training split of seed grades (held-out queries never reach training).
    `vocabulary`: a shop vocabulary whose shopper words the labeler reads with each product.
    `extra`: more graded (query, product_id, grade) rows to train on, e.g. `consistency.reading_examples`."""
    import pandas as pd

    from ..grades import split_by_query
    from . import pairs_from

    train, _ = split_by_query(seed)
    if train.empty:
        raise ValueError("no training seed grades (every query is held out)")
    if extra is not None and len(extra):
        train = pd.concat([train[["query", "product_id", "grade"]], extra[["query", "product_id", "grade"]]],
                          ignore_index=True)
    pairs = pairs_from(catalog, train["query"].tolist(), train["product_id"].tolist())
    return train_cross_encoder([p.query for p in pairs], [labeler_text(p, vocabulary) for p in pairs],
                               train["grade"].to_numpy().astype(np.int64), out_dir, vocabulary=vocabulary, **kw)
