"""A smoothed n-gram language model over token ids: interpolated Kneser-Ney, the traditional
baseline a transformer is measured against (Chen & Goodman 1999).

    lm = KneserNey.fit(train_ids, order=3, vocab_size=tokenizer.vocab_size)
    lp_N = lm.log_probs(val_ids)          # log p(token_t | the n-1 tokens before it), nats
    print(lm.evaluate(val_ids, token_bytes=tokenizer.token_byte_lengths()))

For a context h of the n-1 previous tokens and a next token w,

    p_n(w | h) = max(c(h, w) - D_n, 0) / c(h) + D_n * N(h) / c(h) * p_{n-1}(w | h')

where h' drops h's oldest token, c counts n-grams, N(h) is the number of distinct tokens seen
after h, and D_n = n1 / (n1 + 2 n2) from the numbers of n-grams seen once (n1) and twice (n2).
Lower orders use continuation counts instead of counts (how many distinct tokens precede the
k-gram), and the unigrams are interpolated with the uniform distribution over the vocabulary,
so every token has a probability above zero and each distribution sums to 1. A context never
seen backs off to the next lower order whole.

Counting and scoring are vectorized: each k-gram is one int64 key in base vocab_size, counted
with np.unique and looked up with np.searchsorted, so a million-token corpus fits in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError


@dataclass(frozen=True)
class _Order:
    """The statistics of one order k: (k-gram key -> count a) and (context key -> A, N)."""

    gram_keys: np.ndarray  # sorted unique k-gram keys
    gram_counts: np.ndarray  # a(h, w): counts (k = n) or continuation counts (k < n)
    context_keys: np.ndarray  # sorted unique (k-1)-gram context keys
    context_totals: np.ndarray  # A(h) = sum_w a(h, w)
    context_types: np.ndarray  # N(h) = #{w : a(h, w) > 0}
    discount: float


def _keys(tokens: np.ndarray, k: int, base: int) -> np.ndarray:
    """Key of every k-gram of `tokens` (oldest token most significant), int64 [len - k + 1]."""
    n = len(tokens) - k + 1
    keys = np.zeros(max(n, 0), np.int64)
    for j in range(k):
        keys = keys * base + tokens[j : j + n]
    return keys


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), values.dtype)
    at = np.clip(np.searchsorted(sorted_keys, queries), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == queries, values[at], 0)


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    if n1 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


@dataclass(frozen=True)
class KneserNey:
    """An interpolated Kneser-Ney model of `order` over ids in [0, vocab_size)."""

    order: int
    vocab_size: int
    orders: tuple[_Order, ...]  # orders[k - 1] holds order k

    @classmethod
    def fit(cls, tokens: np.ndarray, *, order: int, vocab_size: int) -> KneserNey:
        """Counts the k-grams (k = 1..order) of a token stream."""
        tokens = np.asarray(tokens, np.int64).ravel()
        if not isinstance(order, int) or order < 1:
            raise ConfigError(f"the n-gram order must be an integer >= 1, got {order!r}")
        if vocab_size < 1 or order * math.log2(vocab_size) >= 63:
            raise ConfigError(
                f"an order-{order} model over {vocab_size} ids needs keys of "
                f"{order * math.log2(max(vocab_size, 2)):.0f} bits, more than int64 holds; "
                f"lower the order"
            )
        if len(tokens) < order:
            raise ConfigError(
                f"the training text has {len(tokens)} tokens, fewer than the order {order}"
            )
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ConfigError(f"token ids must lie in [0, {vocab_size}); got {tokens.max()}")
        orders = []
        for k in range(1, order + 1):
            if k == order:  # the highest order counts occurrences
                keys, counts = np.unique(_keys(tokens, k, vocab_size), return_counts=True)
            else:  # lower orders count distinct left neighbours of each k-gram
                longer = np.unique(_keys(tokens, k + 1, vocab_size))
                keys, counts = np.unique(longer % vocab_size**k, return_counts=True)
            contexts = keys // vocab_size
            context_keys, inverse = np.unique(contexts, return_inverse=True)
            totals = np.bincount(inverse, weights=counts).astype(np.int64)
            types = np.bincount(inverse).astype(np.int64)
            orders.append(_Order(keys, counts, context_keys, totals, types, _discount(counts)))
        return cls(order, vocab_size, tuple(orders))

    def _probs(self, history: np.ndarray, targets: np.ndarray, known: np.ndarray) -> np.ndarray:
        """p(targets[i] | history[i]) where history[i] holds the order - 1 previous tokens
        (oldest first) and known[i] how many of them exist (the rest are ignored)."""
        V = self.vocab_size
        uni = self.orders[0]
        total = float(uni.context_totals[0])
        seen = _lookup(uni.gram_keys, uni.gram_counts, targets).astype(np.float64)
        p = (np.maximum(seen - uni.discount, 0.0) + uni.discount * len(uni.gram_keys) / V) / total
        context = np.zeros(len(targets), np.int64)
        for k in range(2, self.order + 1):
            stats = self.orders[k - 1]
            # the k-1 most recent tokens of the history, oldest first
            context = context + history[:, self.order - k] * V ** (k - 2)
            usable = known >= k - 1
            a = _lookup(stats.gram_keys, stats.gram_counts, context * V + targets)
            totals = _lookup(stats.context_keys, stats.context_totals, context)
            types = _lookup(stats.context_keys, stats.context_types, context)
            ok = usable & (totals > 0)
            safe = np.maximum(totals, 1).astype(np.float64)
            higher = (np.maximum(a - stats.discount, 0.0) + stats.discount * types * p) / safe
            p = np.where(ok, higher, p)
        return p

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """log p(tokens[t] | tokens[t-n+1 : t]) for every t (the first tokens with the context
        there is), float64 nats."""
        tokens = np.asarray(tokens, np.int64).ravel()
        n = self.order - 1
        padded = np.concatenate([np.zeros(n, np.int64), tokens])
        history = np.stack([padded[j : j + len(tokens)] for j in range(n)], axis=1) if n else None
        history = np.zeros((len(tokens), 0), np.int64) if history is None else history
        known = np.minimum(np.arange(len(tokens)), n)
        return np.log(self._probs(history, tokens, known))

    def argmax(self, tokens: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """The most probable id at every position t of `tokens` given the tokens before it
        (as log_probs conditions), int64 [len(tokens)]: all ids scored, `chunk` positions at
        a time."""
        tokens = np.asarray(tokens, np.int64).ravel()
        n, V = self.order - 1, self.vocab_size
        padded = np.concatenate([np.zeros(n, np.int64), tokens])
        out = np.zeros(len(tokens), np.int64)
        ids = np.arange(V, dtype=np.int64)
        for a in range(0, len(tokens), chunk):
            t = np.arange(a, min(a + chunk, len(tokens)))
            history = np.stack([padded[t + j] for j in range(n)], axis=1) if n else None
            history = np.zeros((len(t), 0), np.int64) if history is None else history
            known = np.minimum(t, n)
            p = self._probs(np.repeat(history, V, axis=0), np.tile(ids, len(t)),
                            np.repeat(known, V))  # fmt: skip
            out[t] = p.reshape(len(t), V).argmax(1)
        return out

    def distribution(self, context: np.ndarray) -> np.ndarray:
        """p(w | context) for every id w, float64 [vocab_size] (the last order - 1 tokens of
        `context` are used)."""
        n = self.order - 1
        context = np.asarray(context, np.int64).ravel()
        context = context[max(len(context) - n, 0) :] if n else context[:0]
        history = np.zeros(n, np.int64)
        if len(context):
            history[n - len(context) :] = context
        targets = np.arange(self.vocab_size, dtype=np.int64)
        rows = np.broadcast_to(history, (self.vocab_size, n))
        return self._probs(rows, targets, np.full(self.vocab_size, len(context)))

    def evaluate(
        self, tokens: np.ndarray, *, token_bytes: np.ndarray | None = None
    ) -> dict[str, float]:
        """Loss (mean NLL, nats/token), perplexity and, with `token_bytes` (the bytes each id
        decodes to), bits per byte of a token stream: the numbers `llmjax eval` reports."""
        from llmjax.objectives import bits_per_byte, perplexity

        lp = self.log_probs(tokens)
        loss = float(-lp.mean())
        out = {"loss": loss, "perplexity": perplexity(loss), "tokens": float(len(lp))}
        if token_bytes is not None:
            n_bytes = float(np.asarray(token_bytes)[np.asarray(tokens)].sum())
            out["bits_per_byte"] = bits_per_byte(float(-lp.sum()), n_bytes)
        return out


class NgramScorer:
    """A KneserNey model behind the harness's scorer interface (`TokenScorer.score`), so the
    same tasks and texts score it: `EvalLM.from_scorer(NgramScorer(lm), tokenizer)`. A
    target token's context is the n - 1 tokens before it; greedy means it is the most probable
    id there."""

    def __init__(self, lm: KneserNey, max_length: int = 1 << 30):
        self.lm, self.max_length = lm, max_length

    def score(self, requests, *, where: str = "request"):
        from llmjax.eval.loglik import Scored

        out = []
        for i, (context, target) in enumerate(requests):
            context = np.asarray(context, np.int64)
            target = np.asarray(target, np.int64)
            if len(target) == 0 or len(context) == 0:
                raise ConfigError(f"{where} {i} needs a non-empty context and continuation")
            ids = np.concatenate([context, target])
            logp = self.lm.log_probs(ids)[len(context) :]
            greedy = self.lm.argmax(ids)[len(context) :] == target
            out.append(Scored(logp, greedy))
        return out
