"""Scoring sequences with a reward model: a run whose model has a value head
(`model.value_head`), read at each sequence's last real token.

    scores = llmjax.score("runs/reward", [("talk about rain", "fine yes"), ...])   # float32 [N]
    scores = score(run, token_ids)                                        # pre-tokenized

The score of a sequence is the head's output at its last token. The Bradley-Terry reward
objective trains it at a reply's last token before the end-of-reply token, so a conversation
rendered by a chat template is scored without that token (`llmjax.data.preference.reward_ids`
gives those ids of an encoded conversation; RL rollouts drop a completion's stop token; a
(prompt, reply) pair given to `score` is read so). Rows are right-padded into batches of
`batch_size`, to lengths rounded up to a multiple of `pad_multiple`, so that few programs are
compiled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.errors import ConfigError
from llmjax.typing import Array, Float, Int


def last_token_values(
    values_BxT: Float[Array, "B T"], lengths_B: Int[Array, " B"]
) -> Float[Array, " B"]:
    """values_BxT[b, lengths_B[b] - 1]: each row's value at its last real token."""
    index_B = jnp.clip(lengths_B - 1, 0, values_BxT.shape[1] - 1)
    return jnp.take_along_axis(values_BxT, index_B[:, None], axis=1)[:, 0]


def check_scorer(cfg: Any, where: str) -> None:
    """A reward model must have a value head (the run of `llmjax reward`)."""
    if not cfg.model.value_head:
        raise ConfigError(
            f"{where} has no value head (model.value_head=false), so it gives no scores; pass a "
            f"reward model (a run of `llmjax reward`)"
        )


@functools.partial(jax.jit, static_argnums=0)
def _scores(model: Any, variables: Any, tokens_BxT: jax.Array, lengths_B: jax.Array):
    out = model.apply(variables, tokens_BxT)
    return last_token_values(out.aux["value"], lengths_B)


def score_tokens(
    model: Any,
    variables: Any,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    pad_multiple: int = 16,
    pad_id: int = 0,
) -> np.ndarray:
    """The scores (float32 [N]) of token-id sequences under a value-head model; `variables`
    are {"params": ..., **model_state}."""
    cfg = model.cfg
    if not cfg.value_head:
        raise ConfigError("the model has no value head (model.value_head=false) to score with")
    lengths = np.asarray([len(s) for s in sequences], np.int32)
    if len(sequences) and lengths.min() < 1:
        raise ValueError(f"sequence {int(np.argmin(lengths))} is empty; nothing to score")
    if len(sequences) and lengths.max() > cfg.max_seq_len and cfg.position == "learned":
        raise ValueError(
            f"a sequence of {int(lengths.max())} tokens is longer than the reward model's "
            f"context (model.max_seq_len={cfg.max_seq_len}); shorten it"
        )
    out = np.zeros(len(sequences), np.float32)
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start : start + batch_size]
        n = len(rows)
        width = -(-int(lengths[start : start + n].max()) // pad_multiple) * pad_multiple
        tokens = np.full((batch_size, width), pad_id, np.int32)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        lens = np.ones(batch_size, np.int32)
        lens[:n] = lengths[start : start + n]
        out[start : start + n] = np.asarray(_scores(model, variables, tokens, lens))[:n]
    return out


def score(
    run: Any,
    texts: Sequence[Any],
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Scores under the reward model `run` (a run directory or a LoadedRun), float32 [N], of
    each item of `texts`: a (prompt, reply) pair of strings, rendered as one exchange with the
    run's chat template and read at the reply's last token, as training reads it; a string
    (plain text, tokenized as the run's tokenizer does prompts); or token ids."""
    from llmjax.runs import LoadedRun, load_run

    if isinstance(run, str | Path):
        run = load_run(run)
    if not isinstance(run, LoadedRun):
        raise TypeError(f"score takes a run directory or a LoadedRun, got {type(run).__name__}")
    check_scorer(run.config, str(run.run.path))
    run = run.merged()
    tok = run.tokenizer
    encoder = None
    sequences = []
    for item in texts:
        if isinstance(item, str):
            ids = np.concatenate([tok.prompt_prefix, tok.encode(item)])
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
            if encoder is None:
                encoder = _encoder(run)
            from llmjax.data.instruct import Message
            from llmjax.data.preference import reward_ids

            ids = reward_ids(
                encoder.encode((Message("user", item[0]), Message("assistant", item[1])))
            )
        else:
            ids = np.asarray(item)
        sequences.append(np.asarray(ids, np.int32))
    variables = {"params": run.params, **run.model_state}
    return score_tokens(run.model, variables, sequences, batch_size=batch_size)


def _encoder(run: Any) -> Any:
    """The conversation encoder of the run's chat template (llmjax's simple one if it records
    none)."""
    from llmjax.data.instruct import ConversationEncoder, SimpleTemplate
    from llmjax.runs.chat_template import run_template

    template = run_template(run.run.path, run.tokenizer) or SimpleTemplate()
    return ConversationEncoder(run.tokenizer, template)
