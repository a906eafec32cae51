"""Few-shot prompts: solved examples (conversations) before a question, as token ids, with what
ends the model's answer.

A prompt format writes k demonstrations and then the question, ready for the answer:

    plain text (`TextFormat`, a `TextLayout` such as "Q: {question}\\nA: {answer}\\n"): what a
        base model trained on raw text has seen; the answer ends at the layout's end text.
    a chat template (`ChatFormat`): each demonstration is an earlier user turn and its reply,
        the question the last user turn; the answer ends at the end-of-reply token, or where
        the model starts another turn.

    fmt = TextFormat(LAYOUTS["qa"], tokenizer)
    ids, used = few_shot_ids(fmt, demos, query, max_len=384)   # as many demos as fit
    # then llmjax.eval.score_answers(..., stop_ids=fmt.stop_ids, stop_texts=fmt.stop_texts)

`demonstration_pages` writes the plain layouts as raw pretraining text, for a base model that
has seen solved questions (and can learn from them in context) but never a chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from llmjax.data.instruct.messages import Conversation, Message
from llmjax.data.instruct.tasks import TaskInstance
from llmjax.data.instruct.templates import ChatTemplate, SimpleTemplate
from llmjax.data.instruct.tokenize import ConversationEncoder
from llmjax.data.tokenizers import Tokenizer


@runtime_checkable
class PromptFormat(Protocol):
    """What the few-shot builder and the answer evaluator ask of a prompt format."""

    name: str
    stop_ids: tuple[int, ...]  # token ids that end an answer (besides the tokenizer's EOS)
    stop_texts: tuple[str, ...]  # texts that end an answer (cut there)

    def ids(self, demos: Sequence[Conversation], query: Conversation) -> np.ndarray:
        """The demonstrations, then the query's question, ready for its answer."""
        ...


def _exchange(conversation: Conversation, what: str) -> tuple[str, str | None]:
    """(question, answer or None) of a one-question conversation."""
    roles = [m.role for m in conversation]
    if roles not in (["user"], ["user", "assistant"]):
        raise ValueError(
            f"a plain-text {what} must be one user message and (optionally) its reply, got "
            f"roles {roles}; use ChatFormat for system messages and multi-turn conversations"
        )
    return conversation[0].content, conversation[1].content if len(conversation) > 1 else None


@dataclass(frozen=True)
class TextLayout:
    """How a plain page writes a solved question: `question + q + answer + a + end`."""

    name: str
    question: str
    answer: str
    end: str = "\n"

    def __post_init__(self):
        if not self.end:
            raise ValueError(
                f"layout {self.name!r} needs a non-empty end text: it is where an answer stops"
            )

    def demo(self, question: str, answer: str) -> str:
        return f"{self.question}{question}{self.answer}{answer}{self.end}"

    def text(self, demos: Sequence[Conversation], query: Conversation) -> str:
        """The demonstrations and the query's question, up to where its answer starts."""
        _check_demos(demos)
        shown = [self.demo(*_exchange(d, "demonstration")) for d in demos]
        question, _ = _exchange(query, "query")
        return "".join(shown) + f"{self.question}{question}{self.answer}"


# Plain layouts of one question and its answer per line (or two lines).
LAYOUTS: dict[str, TextLayout] = {
    layout.name: layout
    for layout in (
        TextLayout("qa", "Q: ", "\nA: "),
        TextLayout("io", "Input: ", "\nOutput: "),
        TextLayout("arrow", "", " => "),
    )
}


@dataclass(frozen=True)
class TextFormat:
    """A `TextLayout` tokenized: the answer ends at the layout's end text."""

    layout: TextLayout
    tokenizer: Tokenizer
    stop_ids: tuple[int, ...] = field(init=False)
    stop_texts: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        end_ids = self.tokenizer.encode(self.layout.end)
        # A one-token end stops the row on the device; the text also catches it inside a token.
        object.__setattr__(self, "stop_ids", (int(end_ids[0]),) if len(end_ids) == 1 else ())
        object.__setattr__(self, "stop_texts", (self.layout.end,))

    @property
    def name(self) -> str:
        return self.layout.name

    def ids(self, demos: Sequence[Conversation], query: Conversation) -> np.ndarray:
        text = self.layout.text(demos, query)
        return np.concatenate([self.tokenizer.prompt_prefix, self.tokenizer.encode(text)]).astype(
            np.int32
        )


@dataclass(frozen=True)
class ChatFormat:
    """Demonstrations as earlier turns of a chat: user question, assistant reply (each reply
    followed by its end token, as fine-tuning trains it), then the query's user turn.

    With llmjax's template the answer ends at the tokenizer's EOS id (or `<|end|>`), or where
    the model opens another turn; other templates name their ends in `stop_ids`/`stop_texts`.
    """

    tokenizer: Tokenizer
    template: ChatTemplate | None = None
    name: str = "chat"
    stop_ids: tuple[int, ...] = ()
    stop_texts: tuple[str, ...] = ()

    def __post_init__(self):
        template = SimpleTemplate() if self.template is None else self.template
        object.__setattr__(self, "template", template)
        if isinstance(template, SimpleTemplate) and not self.stop_texts:
            texts = tuple(SimpleTemplate.marker(r).rstrip("\n") for r in ("user", "system"))
            if self.tokenizer.eos_id is None:
                texts = (SimpleTemplate.END_TEXT, *texts)
            object.__setattr__(self, "stop_texts", texts)
        object.__setattr__(self, "_encoder", ConversationEncoder(self.tokenizer, template))

    def ids(self, demos: Sequence[Conversation], query: Conversation) -> np.ndarray:
        _check_demos(demos)
        history = [m for d in demos for m in d]
        return self._encoder.prompt_ids((*history, *_question(query)))


def _check_demos(demos: Sequence[Conversation]) -> None:
    for i, d in enumerate(demos):
        if not d or d[-1].role != "assistant":
            raise ValueError(
                f"demonstration {i} does not end with an assistant reply; a demonstration is "
                f"a solved question: its user turn and the reply"
            )


def _question(query: Conversation) -> tuple[Message, ...]:
    """The query without its final reply (the answer the model is to write)."""
    messages = tuple(query)
    if messages and messages[-1].role == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1].role != "user":
        raise ValueError("a query must end with a user message (optionally followed by its answer)")
    return messages


def demonstration_pages(
    instances: Sequence[TaskInstance],
    *,
    seed: int,
    layouts: Sequence[TextLayout],
    phrasings: Sequence[int],
    max_per_page: int = 10,
    bare_share: float = 0.0,
) -> str:
    """Raw text for pretraining a base model that can learn from demonstrations: pages of
    1..max_per_page solved questions of one task, one phrasing and one layout, each page
    followed by a blank line. A `bare_share` of the pages show the inputs alone, without an
    instruction (`TaskInstance.bare`): there only the page's earlier examples tell the task,
    which rewards reading them. Every instance is used once (in a shuffled order)."""
    if not layouts or not phrasings or max_per_page < 1 or not 0 <= bare_share <= 1:
        raise ValueError(
            "demonstration_pages needs layouts, phrasings, max_per_page >= 1 and a bare_share "
            "in [0, 1]"
        )
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[TaskInstance]] = {}
    for i in rng.permutation(len(instances)):
        by_task.setdefault(instances[i].task, []).append(instances[i])
    pages = []
    for task_instances in by_task.values():
        at = 0
        while at < len(task_instances):
            n = int(rng.integers(1, max_per_page + 1))
            layout = layouts[int(rng.integers(len(layouts)))]
            phrasing = int(phrasings[int(rng.integers(len(phrasings)))])
            bare = rng.random() < bare_share
            shown = task_instances[at : at + n]
            pairs = [(x.bare if bare else x.phrased(phrasing).prompt, x.answer) for x in shown]
            pages.append("".join(layout.demo(q, a) for q, a in pairs) + "\n")
            at += n
    return "".join(pages[i] for i in rng.permutation(len(pages)))


def few_shot_ids(
    fmt: PromptFormat,
    demos: Sequence[Conversation],
    query: Conversation,
    *,
    max_len: int | None = None,
) -> tuple[np.ndarray, int]:
    """(prompt ids, demonstrations used): the first j demonstrations for the largest j whose
    prompt has at most `max_len` tokens (a model's context less the answer's budget), then
    the query's question (its answer, if given, is not shown)."""
    query = _question(query)
    for used in range(len(demos), -1, -1):
        ids = fmt.ids(demos[:used], query)
        if max_len is None or len(ids) <= max_len:
            return ids, used
    raise ValueError(
        f"the question alone takes {len(ids)} tokens in format {fmt.name!r}, more than "
        f"max_len={max_len}; raise max_len (a longer context) or shorten the question"
    )
