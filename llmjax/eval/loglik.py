"""Log-likelihood of token continuations under a model, batched: the primitive every
likelihood-based evaluation is built on (multiple choice, continuation scoring, rolling
perplexity, the lm-evaluation-harness adapter).

    scorer = TokenScorer(model, variables, max_length=cfg.max_seq_len)
    scored = scorer.score([(context_ids, target_ids), ...])
    scored[0].logprob, scored[0].greedy, scored[0].logprobs   # sum, all-argmax, per token

A request (context, target) is scored with one forward pass over (context + target)[:-1]: the
log-probability of each target token given every token before it. A request longer than the
model's context keeps its last `max_length` input tokens (the context is cut from the left; a
target longer than the context window is an error). Requests are packed, longest first, into
rows of `max_length` tokens, each request its own segment with positions from 0 (attention
stays within a segment, so a packed request scores as it would alone, to float rounding); rows
go in batches of `batch_size`, right-padded to a multiple of `pad_multiple` tokens, so a whole
evaluation compiles a handful of programs. `pack=False` gives each request its own row.

Requests with the same context (the choices of a multiple-choice item) share one copy of it
(`share_contexts`, with packing): the context is packed once and each continuation after it,
positioned as if it followed the context alone and seeing only the context and itself (a tree
mask, `llmjax.attention.Mask`'s parents). A four-choice item then costs its context once
instead of four times, and scores as four separate requests would, to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.data.instruct.packing import first_fit
from llmjax.errors import ConfigError
from llmjax.objectives.losses import token_log_probs


@dataclass(frozen=True)
class Scored:
    """One request's target tokens: log p of each (nats), and whether each was the argmax."""

    logprobs: np.ndarray  # float64 [n_target]
    greedy_tokens: np.ndarray  # bool [n_target]

    @property
    def logprob(self) -> float:
        return float(self.logprobs.sum())

    @property
    def greedy(self) -> bool:
        """Greedy decoding from the context would have produced the whole target."""
        return bool(self.greedy_tokens.all())

    @property
    def tokens(self) -> int:
        return len(self.logprobs)


@functools.partial(jax.jit, static_argnums=0)
def _target_log_probs(model: Any, variables: Any, inputs_BxT, positions_BxT, segments_BxT,
                      parents_BxT, at_BxK, targets_BxK):  # fmt: skip
    """Log-probs of targets_BxK, and whether each is the argmax, at the positions at_BxK (the
    LM head runs at those positions only)."""
    out = model.apply(variables, inputs_BxT, positions_BxT, segments_BxT, logits_at=at_BxK,
                      parents_BxT=parents_BxT)  # fmt: skip
    logp_BxK = token_log_probs(out.logits, targets_BxK)
    greedy_BxK = jnp.argmax(out.logits, axis=-1) == targets_BxK
    return logp_BxK, greedy_BxK


class TokenScorer:
    """Batched log-likelihood of target token ids given context token ids (module docstring).

    `variables`: {"params": ..., **model_state}, or the params tree alone.
    """

    def __init__(
        self,
        model: Any,
        variables: Any,
        *,
        max_length: int | None = None,
        batch_size: int = 16,
        pad_multiple: int = 16,
        pad_id: int = 0,
        pack: bool = True,
        share_contexts: bool = True,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} is out of range; valid: >= 1")
        if pad_multiple < 1:
            raise ConfigError(f"pad_multiple={pad_multiple} is out of range; valid: >= 1")
        self.model = model
        self.variables = variables if "params" in variables else {"params": variables}
        self.max_length = int(max_length or model.cfg.max_seq_len)
        self.batch_size, self.pad_multiple, self.pad_id = batch_size, pad_multiple, pad_id
        self.pack, self.share_contexts = pack, share_contexts
        # a family that cannot pack a tree (a recurrence) gets each request in one segment
        self.tree = bool(getattr(type(model), "tree_packing", False))

    def _inputs(self, context: np.ndarray, target: np.ndarray, where: str) -> np.ndarray:
        """(context + target) cut to the last max_length + 1 tokens."""
        if len(target) == 0:
            raise ConfigError(f"{where} has an empty continuation; there is nothing to score")
        if len(target) > self.max_length:
            raise ConfigError(
                f"{where}: its continuation is {len(target)} tokens, longer than the model's "
                f"context of {self.max_length} tokens, so it cannot be scored in one pass; "
                f"shorten the continuation (or score the text with rolling windows)"
            )
        if len(context) == 0:
            raise ConfigError(
                f"{where} has an empty context: the first target token has nothing to be "
                f"predicted from; start it with a BOS/EOS token"
            )
        whole = np.concatenate([context, target]).astype(np.int32)
        return whole[-(self.max_length + 1) :]

    def score(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, where: str = "request"
    ) -> list[Scored]:
        """Scored results in request order; `where` names the requests in errors."""
        items = self._items(requests, where)
        order = np.argsort([-item.size for item in items], kind="stable")  # largest first
        if self.pack:
            sizes = [items[i].size for i in order]
            rows = [[int(order[k]) for k in row] for row in first_fit(sizes, self.max_length)]
        else:
            rows = [[int(i)] for i in order]
        out: list[Scored | None] = [None] * len(requests)
        for start in range(0, len(rows), self.batch_size):
            self._score_batch(
                [[items[i] for i in row] for row in rows[start : start + self.batch_size]], out
            )
        return out  # type: ignore[return-value]

    def _items(self, requests, where: str) -> list[_Item]:
        """Requests as packing units: one per distinct context (its continuations share it, as
        many as fit in a row together), one per request whose input had to be cut."""
        items: list[_Item] = []
        shared: dict[bytes, _Item] = {}
        share = self.pack and self.share_contexts and self.tree
        for i, (context, target) in enumerate(requests):
            c, t = np.asarray(context, np.int32), np.asarray(target, np.int32)
            whole = self._inputs(c, t, f"{where} {i}")
            prefix, target = whole[: -len(t)], whole[-len(t) :]
            whole_context = share and len(whole) == len(c) + len(t)  # not cut
            if whole_context:
                item = shared.get(prefix.tobytes())
                if item is not None and item.size + len(t) - 1 <= self.max_length:
                    item.targets.append((i, target))
                    continue
            item = _Item(prefix, [(i, target)])
            items.append(item)
            if whole_context:  # later requests with this context join it
                shared[prefix.tobytes()] = item
        return items

    def _score_batch(self, batch: list[list[_Item]], out: list[Scored | None]) -> None:
        """One forward pass over rows of packed items; fills `out` at the items' requests."""
        fill = max(sum(item.size for item in row) for row in batch)
        width = min(-(-fill // self.pad_multiple) * self.pad_multiple, self.max_length)
        shape = (self.batch_size, width)
        inputs = np.full(shape, self.pad_id, np.int32)
        positions, segments = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        parents = np.zeros(shape, np.int32) if self.tree else None
        # the target positions of each row, gathered: only they need the LM head
        most = max(sum(len(t) for item in row for _, t in item.targets) for row in batch)
        k_width = min(-(-most // self.pad_multiple) * self.pad_multiple, width)
        at_BxK = np.zeros((self.batch_size, k_width), np.int32)
        targets_BxK = np.zeros((self.batch_size, k_width), np.int32)
        spans = []
        for r, row in enumerate(batch):
            at = k = 0
            segment = 0
            for item in row:
                # the context: a segment of its own, its own parent
                n = len(item.context)
                segment += 1
                prefix_segment, last = segment, at + n - 1
                inputs[r, at : at + n] = item.context
                positions[r, at : at + n] = np.arange(n)
                segments[r, at : at + n] = prefix_segment
                if parents is not None:
                    parents[r, at : at + n] = prefix_segment
                at += n
                # each continuation: its tokens but the last, right after the context (in the
                # context's segment when there is no tree: then it is the only one)
                for i, target in item.targets:
                    m = len(target)
                    if parents is not None:
                        segment += 1
                        parents[r, at : at + m - 1] = prefix_segment
                    inputs[r, at : at + m - 1] = target[:-1]
                    positions[r, at : at + m - 1] = np.arange(n, n + m - 1)
                    segments[r, at : at + m - 1] = segment
                    at_BxK[r, k] = last  # the first target token is predicted by the context
                    at_BxK[r, k + 1 : k + m] = np.arange(at, at + m - 1)
                    targets_BxK[r, k : k + m] = target
                    spans.append((i, r, k, k + m))
                    at, k = at + m - 1, k + m
        logp, greedy = jax.device_get(
            _target_log_probs(
                self.model, self.variables, inputs, positions, segments, parents, at_BxK,
                targets_BxK,
            )
        )  # fmt: skip
        for i, r, begin, end in spans:
            out[i] = Scored(logp[r, begin:end].astype(np.float64), np.asarray(greedy[r, begin:end]))


@dataclass
class _Item:
    """A packing unit: one context and the continuations scored after it."""

    context: np.ndarray  # int32 [n]
    targets: list[tuple[int, np.ndarray]]  # (request index, target ids)

    @property
    def size(self) -> int:
        """Input tokens in a row: the context once, each continuation but its last token."""
        return len(self.context) + sum(len(t) - 1 for _, t in self.targets)


def rolling_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows that score tokens 1..n-1 of an n-token sequence, each with up to `window`
    tokens of input: (start, first, end) means input tokens [start, end - 1) predict targets
    [first, end). The first window scores targets 1..window; each next one moves `stride`
    tokens on and scores only the targets not yet scored, so every target after the first
    window is predicted from at least window - stride tokens. stride == window scores
    independent chunks that share one token; window >= n - 1 is a single pass."""
    if window < 1:
        raise ConfigError(f"window={window} is out of range; valid: >= 1")
    if not 1 <= stride <= window:
        raise ConfigError(f"stride={stride} is out of range; valid: 1 <= stride <= window")
    out, scored, start = [], 1, 0
    while scored < n:
        end = min(start + window + 1, n)
        if end > scored:
            out.append((start, scored, end))
            scored = end
        start += stride
    return out


def rolling_log_probs(
    scorer: TokenScorer, ids: Sequence[int], *, window: int | None = None, stride: int | None = None
) -> np.ndarray:
    """log p(ids[t] | up to `window` tokens before it) for t = 1..len(ids)-1 (float64),
    through `rolling_windows`; window defaults to the model's context, stride to window."""
    window = scorer.max_length if window is None else window
    stride = window if stride is None else stride
    if window > scorer.max_length:
        raise ConfigError(
            f"window={window} is longer than the model's context of {scorer.max_length} "
            f"tokens; use a window <= {scorer.max_length}"
        )
    ids = np.asarray(ids, np.int32)
    spans = rolling_windows(len(ids), window, stride)
    scored = scorer.score([(ids[a:f], ids[f:e]) for a, f, e in spans], where="window")
    if not scored:
        return np.zeros(0, np.float64)
    return np.concatenate([s.logprobs for s in scored])
