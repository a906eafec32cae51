"""Chat templates: a conversation as text pieces, each marked as part of a reply or not.

A template turns a conversation into `Piece`s whose texts, joined, are the rendered chat; a piece
with `response=True` is text the model learns to write (an assistant reply). `prompt` renders
the text a model continues to write the next reply.

llmjax's own template (`SimpleTemplate`, for the byte, char and BPE tokenizers llmjax trains):

    <|system|>\\n{system}\\n<|user|>\\n{question}\\n<|assistant|>\\n{reply}<EOS><|user|>\\n...

A system or user turn is its marker, a newline, its content and a newline (prompt text). An
assistant turn is the marker and a newline (prompt text), then its content (the reply), then
the tokenizer's EOS id (added when tokenizing, trained on with the reply). A tokenizer with no
EOS id (char) ends a reply with the text `<|end|>` instead. The generation prompt is the
history followed by `<|assistant|>\\n`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from llmjax.data.instruct.messages import Message
from llmjax.errors import ChatTemplateError

RenderText = Callable[[Sequence[Message], bool], str]


@dataclass(frozen=True)
class Piece:
    """A run of rendered text; `response`: part of an assistant reply (the loss trains on it)."""

    text: str
    response: bool = False


@runtime_checkable
class ChatTemplate(Protocol):
    """What tokenization asks of a template."""

    # Whether tokenization puts an end-of-reply token after each reply (the template writes no
    # end marker of its own).
    appends_eos: bool

    def pieces(self, messages: Sequence[Message]) -> list[Piece]:
        """The rendered conversation, cut where replies start and end."""
        ...

    def prompt(self, messages: Sequence[Message]) -> str:
        """The text a model continues to write the next assistant reply."""
        ...


def render(template: ChatTemplate, messages: Sequence[Message]) -> str:
    """The whole rendered text of `messages`."""
    return "".join(p.text for p in template.pieces(messages))


@dataclass(frozen=True)
class SimpleTemplate:
    """llmjax's role-marker template (see the module docstring)."""

    appends_eos: ClassVar[bool] = True
    END_TEXT: ClassVar[str] = "<|end|>"  # ends a reply for tokenizers without an EOS id
    # Every character the template writes, for building a CharTokenizer that can encode it.
    MARKUP: ClassVar[str] = "<|system|>\n<|user|>\n<|assistant|>\n<|end|>"

    # The same template in Jinja, as transformers' apply_chat_template renders it (for a
    # Hugging Face export; the end of a reply is the tokenizer's EOS token).
    JINJA: ClassVar[str] = (
        "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
        "{% if message['role'] != 'assistant' %}{{ '\\n' }}{% elif eos_token %}{{ eos_token }}"
        "{% else %}<|end|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )

    @staticmethod
    def marker(role: str) -> str:
        return f"<|{role}|>\n"

    def pieces(self, messages: Sequence[Message]) -> list[Piece]:
        out = []
        for m in messages:
            if m.role == "assistant":
                out += [Piece(self.marker(m.role)), Piece(m.content, response=True)]
            else:
                out.append(Piece(f"{self.marker(m.role)}{m.content}\n"))
        return out

    def prompt(self, messages: Sequence[Message]) -> str:
        return render(self, messages) + self.marker("assistant")


def split_by_prefix(render_text: RenderText, messages: Sequence[Message]) -> list[Piece]:
    """Pieces of any template known only as `render_text(messages, add_generation_prompt)`.

    Message i's text is what rendering messages[:i+1] adds to rendering messages[:i] (the
    first message's text is all of messages[:1]: some templates cannot render no messages).
    For an assistant message that text is cut in two: what the generation prompt adds to
    messages[:i] (the reply's header, e.g. "<|im_start|>assistant\\n") is prompt, and the rest
    (the reply and what the template writes after it, e.g. "<|im_end|>\\n") is response. So the
    response pieces are exactly the text a model writes after the prompt it gets at inference.

    Raises:
        ChatTemplateError: a render does not start with the previous one (the template
            rewrites earlier turns once later ones exist), so replies cannot be located.
    """
    pieces: list[Piece] = []
    done = ""
    for i, m in enumerate(messages):
        if m.role == "assistant":
            header = render_text(messages[:i], True)
            _extend(pieces, done, header, False, i)
            done = header
        text = render_text(messages[: i + 1], False)
        _extend(pieces, done, text, m.role == "assistant", i)
        done = text
    return pieces


def _extend(pieces: list[Piece], shorter: str, longer: str, response: bool, i: int) -> None:
    if not longer.startswith(shorter):
        raise ChatTemplateError(
            f"the chat template renders the conversation's first {i} message(s) differently "
            f"once message {i} follows (first: {shorter[-60:]!r}..., then: {longer[:80]!r}...), "
            f"so the replies cannot be told apart from the prompt by rendering prefixes; use a "
            f"template whose rendering of earlier turns does not change"
        )
    if len(longer) > len(shorter):
        pieces.append(Piece(longer[len(shorter) :], response))
