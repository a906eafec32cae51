"""Synthetic long-range tasks: recall a fact seen `distance` tokens earlier.

A sequence is random filler with a few facts "(k, v)" (one token each, encoding key k and value
v) and, later, a query token for k that must be followed by the value token v. Only those
answers are scored, so accuracy against distance shows how far back a model can look: one
attention hop from the query to the fact, so a sliding window can answer only within its reach
(window x layers) and full attention at any distance.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RecallTask:
    """Token ids: filler, then query tokens (one per key), value tokens, and fact tokens (one per
    key-value pair). Distance is the gap between a fact and its query."""

    seq_len: int
    n_filler: int = 16
    n_keys: int = 8
    n_values: int = 8
    pairs: int = 4
    min_distance: int = 1
    max_distance: int | None = None  # None: as far as the sequence allows (seq_len - 1)

    def __post_init__(self):
        if not 1 <= self.min_distance <= self.longest <= self.seq_len - 1:
            raise ValueError(
                f"RecallTask: need 1 <= min_distance ({self.min_distance}) <= max_distance "
                f"({self.longest}) <= seq_len - 1 ({self.seq_len - 1})"
            )
        if self.pairs > self.n_keys:
            raise ValueError(f"RecallTask.pairs={self.pairs} needs as many keys (n_keys)")
        if 3 * self.pairs > self.seq_len:
            raise ValueError(f"RecallTask: {self.pairs} facts do not fit in {self.seq_len} tokens")

    @property
    def longest(self) -> int:
        return self.seq_len - 1 if self.max_distance is None else self.max_distance

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_keys + self.n_values + self.n_keys * self.n_values

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """{"inputs", "targets"} int32 [B, T]; "mask" float32 (1 at answers); "distance" int32."""
        query0 = self.n_filler
        value0 = query0 + self.n_keys
        fact0 = value0 + self.n_values
        length = self.seq_len + 1
        seq = rng.integers(0, self.n_filler, size=(batch_size, length))
        mask = np.zeros((batch_size, self.seq_len), np.float32)
        distance = np.zeros((batch_size, self.seq_len), np.int32)
        for b in range(batch_size):
            used = np.zeros(length, bool)
            keys = rng.choice(self.n_keys, size=self.pairs, replace=False)
            values = rng.integers(0, self.n_values, size=self.pairs)
            for key, value in zip(keys, values, strict=True):
                for _ in range(100):  # rejection sampling; a free spot exists almost always
                    d = int(rng.integers(self.min_distance, self.longest + 1))
                    p = int(rng.integers(0, length - d - 1))
                    spots = [p, p + d, p + d + 1]  # fact, query, answer
                    if not used[spots].any():
                        break
                else:
                    continue
                used[spots] = True
                seq[b, spots] = fact0 + key * self.n_values + value, query0 + key, value0 + value
                mask[b, p + d] = 1.0  # the target after the query is the value
                distance[b, p + d] = d
        seq = seq.astype(np.int32)
        return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "mask": mask, "distance": distance}
