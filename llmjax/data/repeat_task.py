"""Copying tasks over random tokens: a block of distinct symbols seen again later in the row.

With `fill` (the default) a row is the block repeated to fill it (b_1 .. b_k b_1 .. b_k b_1 ..),
the period k drawn from [min_block, max_block] per row; every target from index k on is the
token that followed the current one a period earlier. Without `fill` a row is filler, then the
block twice at its end (f + 2k = seq_len + 1); the filler's symbols are drawn, with repeats,
from those not in the block. Scored targets are the second copy's from its second token on.

Either way the scored tokens are random, so only the context predicts them: an induction head
(Olsson et al. 2022) finds the earlier occurrence of the current token and copies the one that
followed it, at any distance. A head that looks a fixed distance d back also predicts a filled
row whose period divides d + 1, so filled rows can be (partly) learned that way; a row
without fill is predicted at distance d only when k = d + 1, so over rows of many k only
induction predicts them all (the probe that tells the two apart).
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
    fill: bool = True

    def __post_init__(self):
        if not 2 <= self.min_block <= self.max_block <= self.n_symbols - (not self.fill):
            raise ConfigError(
                f"RepeatTask needs 2 <= min_block <= max_block <= n_symbols (a block's symbols "
                f"are distinct; without fill one more is left for the filler), got "
                f"{self.min_block}, {self.max_block}, {self.n_symbols}"
            )
        longest = self.seq_len if self.fill else (self.seq_len + 1) // 2
        if self.max_block >= longest:
            raise ConfigError(
                f"RepeatTask: a row of seq_len={self.seq_len} has no scored target after a block "
                f"of max_block={self.max_block}{'' if self.fill else ' repeated once'}; lower "
                f"max_block below {longest}"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_symbols

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """{"inputs", "targets"} int32 [B, T]; "mask" float32, 1 at the targets an induction
        head predicts (the second copy from its second token on)."""
        T = self.seq_len
        k_B = rng.integers(self.min_block, self.max_block + 1, batch_size)
        symbols_BxV = np.argsort(rng.random((batch_size, self.n_symbols)), axis=1)
        rows = np.empty((batch_size, T + 1), np.int32)
        for b, k in enumerate(k_B):
            block, rest = symbols_BxV[b, :k], symbols_BxV[b, k:]
            if self.fill:
                rows[b] = np.resize(block, T + 1)
            else:
                filler = rng.choice(rest, T + 1 - 2 * k)
                rows[b] = np.concatenate([filler, block, block])
        first_scored = k_B if self.fill else T + 1 - k_B  # target index of the copy's 2nd token
        mask = (np.arange(T)[None, :] >= first_scored[:, None]).astype(np.float32)
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask}

    def periods(self, mask_BxT: np.ndarray) -> np.ndarray:
        """[B] int: each row's block length k, read off its mask."""
        scored = np.asarray(mask_BxT).sum(-1).astype(int)
        return self.seq_len - scored if self.fill else scored + 1

    def batch_at(self, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The batch of a step: a pure function of (seed, step), so runs resume exactly."""
        return self.batch(np.random.default_rng([seed, step]), batch_size)
