"""A copying task that only induction solves: a random block of tokens, repeated.

A row is a block of k distinct random symbols repeated to fill the row (b_1 .. b_k b_1 .. b_k
b_1 ..), with the period k drawn from [min_block, max_block] per row. Every token from the
second copy's second on is predictable only by finding an earlier occurrence of the current
token and copying the one that followed it (an induction head, Olsson et al. 2022): k changes
from row to row, so no fixed offset finds it, and nothing in the first copy repeats. Only those
targets are scored; the first copy and the second copy's first token are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError


@dataclass(frozen=True)
class RepeatTask:
    """Token ids 0 .. n_symbols - 1; rows of seq_len inputs and targets."""

    seq_len: int = 64
    n_symbols: int = 32
    min_block: int = 4
    max_block: int = 16

    def __post_init__(self):
        if not 2 <= self.min_block <= self.max_block <= self.n_symbols:
            raise ConfigError(
                f"RepeatTask needs 2 <= min_block <= max_block <= n_symbols (a block's symbols "
                f"are distinct), got {self.min_block}, {self.max_block}, {self.n_symbols}"
            )
        if self.max_block + 1 > self.seq_len:
            raise ConfigError(
                f"RepeatTask: a row of seq_len={self.seq_len} scores nothing after a block of "
                f"max_block={self.max_block}; lower max_block below seq_len"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_symbols

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """{"inputs", "targets"} int32 [B, T]; "mask" float32, 1 at the targets an induction
        head can predict (target index >= k: the second copy from its second token on)."""
        T = self.seq_len
        k_B = rng.integers(self.min_block, self.max_block + 1, batch_size)
        distinct_BxV = np.argsort(rng.random((batch_size, self.n_symbols)), axis=1)
        rows = np.empty((batch_size, T + 1), np.int32)
        for b, k in enumerate(k_B):
            rows[b] = np.resize(distinct_BxV[b, :k], T + 1)
        mask = (np.arange(T)[None, :] >= k_B[:, None]).astype(np.float32)
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask}

    def batch_at(self, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The batch of a step: a pure function of (seed, step), so runs resume exactly."""
        return self.batch(np.random.default_rng([seed, step]), batch_size)
