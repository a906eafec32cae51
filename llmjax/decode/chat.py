"""Chatting with a fine-tuned run: a conversation rendered by the run's chat template, replies
generated with the KV-cached decoder until the template's end of reply.

    session = ChatSession(load_run("runs/chat"), run_template("runs/chat"), temperature=0)
    reply = session.send("What is 2 plus 3?")          # reply.text; session.history grows
    session.reset()

The conversation so far, plus the template's generation prompt, is the prompt of each reply.
When it and the reply's token budget no longer fit the model's context (model.max_seq_len),
the oldest exchanges (a user turn and the reply to it) are dropped first; the system message
stays. A reply ends at the tokenizer's EOS id, or at the text the template writes after each
reply (llmjax's template: `<|end|>` for tokenizers without EOS; Hugging Face templates: their
end-of-turn marker, e.g. <|im_end|>), or where the model starts a new turn of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np

from llmjax.data.instruct import ChatTemplate, ConversationEncoder, Message, SimpleTemplate
from llmjax.decode.generate import Completion, generate
from llmjax.runs import LoadedRun

_PROBE = "llmjax reply"  # a reply whose rendering shows what the template writes after one


def reply_end(template: ChatTemplate, encoder: ConversationEncoder) -> tuple[list[int], list[str]]:
    """(stop ids, stop texts) that end a reply under `template` (besides the EOS id)."""
    if isinstance(template, SimpleTemplate):
        # A reply the model goes on past stops where it opens another turn.
        texts = [SimpleTemplate.marker(role).rstrip("\n") for role in ("user", "system")]
        if encoder.tokenizer.eos_id is None:
            texts.insert(0, SimpleTemplate.END_TEXT)
        return [], texts
    probe = (Message("user", "hi"), Message("assistant", _PROBE))
    reply = next((p.text for p in template.pieces(probe) if p.response), "")
    at = reply.find(_PROBE)
    tail = "" if at < 0 else reply[at + len(_PROBE) :].strip()
    if not tail:  # the template writes nothing after a reply: only EOS ends one
        return [], []
    ids = encoder.encode_text(tail)
    # A special token (e.g. <|im_end|>) decodes to no text: only its id can stop the reply.
    return ([int(ids[0])] if len(ids) == 1 else []), [tail]


@dataclass
class ChatReply:
    """One reply: its text, the completion it came from, and how many exchanges of the
    history were dropped to make room for it."""

    text: str
    completion: Completion
    dropped: int = 0

    @property
    def finish_reason(self) -> str:
        return self.completion.finish_reason


@dataclass
class ChatSession:
    """A multi-turn conversation with a loaded run under a chat template."""

    run: LoadedRun
    template: ChatTemplate
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    chunk_size: int = 8  # tokens per streamed piece
    history: list[Message] = field(default_factory=list)
    replies: int = 0  # replies so far: reply n samples with fold_in(key(seed), n)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        self.encoder = ConversationEncoder(self.run.tokenizer, self.template)
        self.stop_ids, self.stop_texts = reply_end(self.template, self.encoder)

    @property
    def context(self) -> int:
        return self.run.config.model.max_seq_len

    def reset(self) -> None:
        """Forgets the conversation (the system message stays)."""
        self.history.clear()

    def messages(self, user: str | None = None) -> tuple[Message, ...]:
        system = [Message("system", self.system)] if self.system else []
        extra = [] if user is None else [Message("user", user)]
        return (*system, *self.history, *extra)

    def _prompt(self, user: str) -> tuple[np.ndarray, int]:
        """The prompt ids of the next reply and how many oldest exchanges were dropped so that
        it and the reply's budget fit the context."""
        dropped = 0
        while True:
            ids = self.encoder.prompt_ids(self.messages(user))
            if len(ids) + self.max_new_tokens <= self.context or not self.history:
                break
            self._drop_oldest()
            dropped += 1
        if len(ids) >= self.context:
            raise ValueError(
                f"the message does not fit the model's context: the prompt is {len(ids)} tokens "
                f"and model.max_seq_len={self.context}; send a shorter message"
                + (" or a shorter --system" if self.system else "")
            )
        return ids, dropped

    def _drop_oldest(self) -> None:
        """Drops the oldest exchange: the first user turn and everything up to the next one."""
        end = next(
            (i for i, m in enumerate(self.history) if i > 0 and m.role == "user"),
            len(self.history),
        )
        del self.history[:end]

    def send(
        self,
        user: str,
        stream: Callable[[str], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> ChatReply:
        """The model's reply to `user` after the history; both join the history.
        `stream(text)` receives the reply's text as it is generated; `on_dropped(n)` is told,
        before that, when the n oldest exchanges were dropped to make room."""
        ids, dropped = self._prompt(user)
        if dropped and on_dropped is not None:
            on_dropped(dropped)
        completion = generate(
            self.run,
            ids,
            max_new_tokens=min(self.max_new_tokens, self.context - len(ids)),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop_texts,
            stop_token_ids=self.stop_ids,
            key=jax.random.fold_in(jax.random.key(self.seed), self.replies),
            stream=None if stream is None else (lambda row, text: stream(text)),
            chunk_size=self.chunk_size,
        )
        self.replies += 1
        text = completion.text
        self.history += [Message("user", user), Message("assistant", text)]
        return ChatReply(text, completion, dropped)
