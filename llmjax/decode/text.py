"""Incremental detokenization: final text pieces for streaming, cut at stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llmjax.data import Tokenizer

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to, for now


class TextStream:
    """One row's growing token ids -> text that will not change, stopping at a stop string.

    Text is held back while it may still change: a trailing partial UTF-8 character, or a
    suffix that could be the start of a stop string. The stop string itself is never emitted.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.on_text = on_text
        self.text = ""  # emitted so far
        self.stopped = False
        self.kept_tokens: int | None = None  # tokens up to the one completing a stop string
        self._checked = 0  # token count already known to hold no stop string

    def _find_stop(self, text: str) -> int:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else -1

    def _emit(self, upto: str) -> None:
        piece = upto[len(self.text) :]
        if piece:
            self.text = upto
            if self.on_text is not None:
                self.on_text(piece)

    def update(self, ids: np.ndarray, *, final: bool = False) -> bool:
        """Feeds all of the row's generated ids so far; returns True once a stop string hit."""
        if self.stopped:
            return True
        full = self.tokenizer.decode(ids)
        at = self._find_stop(full)
        if at >= 0:
            for k in range(self._checked + 1, len(ids) + 1):
                if self._find_stop(self.tokenizer.decode(ids[:k])) >= 0:
                    self.kept_tokens = k
                    break
            self.stopped = True
            self._emit(full[:at])
            return True
        self._checked = len(ids)
        safe = len(full)
        if not final:
            while safe > 0 and full[safe - 1] == REPLACEMENT:
                safe -= 1
            for hold in range(min(max(map(len, self.stop), default=0) - 1, safe), 0, -1):
                if any(s.startswith(full[safe - hold : safe]) for s in self.stop):
                    safe -= hold
                    break
        if safe >= len(self.text) and full.startswith(self.text):
            self._emit(full[:safe])
        return False
