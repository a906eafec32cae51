"""Synthetic tasks that need (or do not need) token order: reverse a sequence, or sort it.

A row is `x_1 .. x_n SEP y_1 .. y_n`, symbols drawn from `n_symbols`; the targets after SEP are
the input reversed ("reverse") or sorted ("sort"), and only they are scored. Reversal needs to
know where each input token sits; sorting only which symbols occur (a multiset) and how far the
output has come: a contrast for models with and without position information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import ConfigError

KINDS = ("reverse", "sort")


@dataclass(frozen=True)
class OrderTask:
    """Token ids 0 .. n_symbols - 1 are symbols, n_symbols is SEP; rows are 2n + 1 tokens."""

    kind: str
    length: int = 8
    n_symbols: int = 16

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(
                f"OrderTask kind={self.kind!r} is not known; valid: {', '.join(KINDS)}"
            )
        if self.length < 2 or self.n_symbols < 2:
            raise ConfigError("OrderTask needs length >= 2 and n_symbols >= 2")

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def seq_len(self) -> int:
        """Input (and target) tokens of a row."""
        return 2 * self.length

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """{"inputs", "targets"} int32 [B, 2n]; "mask" float32, 1 where the target is output."""
        x = rng.integers(0, self.n_symbols, (batch_size, self.length))
        y = x[:, ::-1] if self.kind == "reverse" else np.sort(x, axis=1)
        sep = np.full((batch_size, 1), self.n_symbols)
        row = np.concatenate([x, sep, y], axis=1).astype(np.int32)
        mask = np.zeros((batch_size, self.seq_len), np.float32)
        mask[:, self.length :] = 1.0  # targets after SEP: the n outputs
        return {"inputs": row[:, :-1], "targets": row[:, 1:], "mask": mask}

    def batch_at(self, step: int, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The batch of a step: a pure function of (seed, step), so runs resume exactly."""
        return self.batch(np.random.default_rng([seed, step]), batch_size)
