"""Conversations as token ids with a loss mask, truncated to a context length.

Each template piece is encoded on its own and the ids are concatenated, so every token belongs
to exactly one piece and the mask is exact. This equals encoding the whole rendered text when
the pieces start where the tokenizer would start a token anyway: always for the byte and char
tokenizers, and for byte-level BPE when pieces start after a special token or a newline (as in
ChatML, Llama 3 and llmjax's template). Text rendered by a Hugging Face template is encoded with
its special-token strings (<|im_start|>) read as their ids, as transformers does.

Truncation (`truncate`): a conversation longer than `seq_len + 1` tokens (a row holds
`seq_len` inputs, each predicting the next token) keeps its first `seq_len + 1` tokens; one
left with no trained target is dropped. Both are counted in `EncodeStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import tokenizers

from llmjax.data.instruct.messages import Conversation
from llmjax.data.instruct.templates import ChatTemplate, SimpleTemplate, render
from llmjax.data.tokenizers import BPETokenizer, Tokenizer
from llmjax.errors import ChatTemplateError, InstructDataError

TRAIN_ON = ("responses", "all")


@dataclass(frozen=True, eq=False)
class Encoded:
    """One conversation: int32 ids [N] and loss_mask [N] (1: a token the loss trains on)."""

    ids: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EncodeStats:
    """What encoding a data set did: kept, truncated and dropped conversations and tokens."""

    conversations: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped_tokens: int = 0
    dropped_conversations: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _markup_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    """Encodes template text with the tokenizer's special-token strings read as their ids."""
    if not isinstance(tokenizer, BPETokenizer):
        return tokenizer.encode
    hf = tokenizers.Tokenizer.from_str(tokenizer.hf.to_str())
    hf.no_truncation()
    hf.no_padding()
    hf.encode_special_tokens = False

    def encode(text: str) -> np.ndarray:
        return np.asarray(hf.encode(text, add_special_tokens=False).ids, np.int32)

    return encode


class ConversationEncoder:
    """Turns conversations into `Encoded` ids and loss masks for one tokenizer and template.

    `train_on="responses"` trains on the reply tokens (and the end-of-reply token after each);
    `"all"` on every token.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: ChatTemplate | None = None,
        *,
        train_on: str = "responses",
    ):
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAIN_ON)}")
        self.tokenizer = tokenizer
        self.template = SimpleTemplate() if template is None else template
        self.train_on = train_on
        simple = isinstance(self.template, SimpleTemplate)
        self._encode = tokenizer.encode if simple else _markup_encoder(tokenizer)
        if not self.template.appends_eos:
            self._end = np.zeros(0, np.int32)
        elif tokenizer.eos_id is not None:
            self._end = np.asarray([tokenizer.eos_id], np.int32)
        else:
            self._end = np.asarray(self._encode(SimpleTemplate.END_TEXT), np.int32)

    def encode(self, conversation: Conversation) -> Encoded:
        ids, mask = [], []
        for piece in self.template.pieces(conversation):
            piece_ids = np.asarray(self._encode(piece.text), np.int32)
            if piece.response:
                piece_ids = np.concatenate([piece_ids, self._end])
            ids.append(piece_ids)
            trained = piece.response or self.train_on == "all"
            mask.append(np.full(len(piece_ids), trained, np.int32))
        return Encoded(np.concatenate(ids), np.concatenate(mask))

    def prompt_ids(self, conversation: Conversation) -> np.ndarray:
        """The ids a model continues to write the next reply (for generation and scoring):
        the conversation's ids as `encode` gives them (so earlier replies end with the
        end-of-reply ids training put there), then the generation prompt's."""
        text = self.template.prompt(conversation)
        rendered = render(self.template, conversation) if conversation else ""
        if not conversation or not text.startswith(rendered):
            return self.encode_text(text)
        header = self.encode_text(text[len(rendered) :])
        return np.concatenate([self.encode(conversation).ids, header]).astype(np.int32)

    def encode_text(self, text: str) -> np.ndarray:
        """Template text as ids, read as the pieces are (special-token strings as their ids)."""
        return np.asarray(self._encode(text), np.int32)


def truncate(encoded: Encoded, seq_len: int) -> Encoded:
    """The first `seq_len + 1` tokens (a row's `seq_len` inputs and their targets)."""
    return Encoded(encoded.ids[: seq_len + 1], encoded.loss_mask[: seq_len + 1])


def encode_all(
    conversations: Iterable[Conversation],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    template: ChatTemplate | None = None,
    train_on: str = "responses",
) -> tuple[list[Encoded], EncodeStats]:
    """Every conversation encoded and truncated to `seq_len + 1` tokens, and what that did.

    A conversation whose targets (every token but the first) have no trained token after
    truncation is dropped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    encoder = ConversationEncoder(tokenizer, template, train_on=train_on)
    out, stats = [], EncodeStats()
    for number, conversation in enumerate(conversations, start=1):
        try:
            full = encoder.encode(conversation)
        except ChatTemplateError as e:
            where = f"conversation {number} ({_preview(conversation)})"
            raise ChatTemplateError(f"{where}: {e}") from None
        kept = truncate(full, seq_len)
        if len(kept) < len(full):
            stats.truncated += 1
            stats.dropped_tokens += len(full) - len(kept)
        if len(kept) < 2 or not kept.loss_mask[1:].any():
            stats.dropped_conversations += 1
            stats.dropped_tokens += len(kept)
            continue
        out.append(kept)
        stats.conversations += 1
        stats.tokens += len(kept)
        stats.trained_tokens += int(kept.loss_mask[1:].sum())
    if not out:
        raise InstructDataError(
            f"no conversation has a trained token within seq_len={seq_len} (of "
            f"{stats.dropped_conversations} given); raise seq_len or shorten the prompts"
        )
    return out, stats


def _preview(conversation: Conversation, width: int = 40) -> str:
    """The conversation's first turn, shortened, to name it in an error."""
    first = conversation[0]
    text = first.content if len(first.content) <= width else first.content[: width - 3] + "..."
    return f"{first.role}: {text!r}"
