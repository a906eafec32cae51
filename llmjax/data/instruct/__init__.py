"""Instruction data for supervised fine-tuning: conversations, chat templates, token ids with
a loss mask on the replies, packed rows in the `lm` objective's layout, and built-in tasks.

    conversations = load_jsonl("chats.jsonl")  # or [e.conversation() for e in make_tasks(...)]
    encoded, stats = encode_all(conversations, tokenizer, seq_len)
    source = InstructBatches(encoded, batch_size=8, seq_len=seq_len, seed=0)
    batch = source.batch(step)                         # inputs, targets, mask, segments, positions
"""

from llmjax.data.instruct.fewshot import (
    LAYOUTS,
    ChatFormat,
    PromptFormat,
    TextFormat,
    TextLayout,
    demonstration_pages,
    few_shot_ids,
)
from llmjax.data.instruct.jinja import HFChatTemplate, special_tokens_from_config
from llmjax.data.instruct.messages import (
    ROLES,
    Conversation,
    Message,
    conversation,
    load_jsonl,
    parse_record,
)
from llmjax.data.instruct.packing import FIELDS, build_rows, make_rows, pack_plan, row_stats
from llmjax.data.instruct.source import InstructBatches
from llmjax.data.instruct.tasks import (
    HELDOUT_TASKS,
    SPLITS,
    TASKS,
    Task,
    TaskExample,
    TaskInstance,
    exact_match,
    make_instances,
    make_tasks,
    split_cells,
    write_jsonl,
)
from llmjax.data.instruct.templates import (
    ChatTemplate,
    Piece,
    SimpleTemplate,
    render,
    split_by_prefix,
)
from llmjax.data.instruct.tokenize import (
    TRAIN_ON,
    ConversationEncoder,
    Encoded,
    EncodeStats,
    encode_all,
    truncate,
)
from llmjax.errors import ChatTemplateError, InstructDataError

__all__ = [
    "FIELDS",
    "HELDOUT_TASKS",
    "LAYOUTS",
    "ROLES",
    "SPLITS",
    "TASKS",
    "TRAIN_ON",
    "ChatFormat",
    "ChatTemplate",
    "ChatTemplateError",
    "Conversation",
    "ConversationEncoder",
    "EncodeStats",
    "Encoded",
    "HFChatTemplate",
    "InstructBatches",
    "InstructDataError",
    "Message",
    "Piece",
    "PromptFormat",
    "SimpleTemplate",
    "Task",
    "TaskExample",
    "TaskInstance",
    "TextFormat",
    "TextLayout",
    "build_rows",
    "conversation",
    "demonstration_pages",
    "encode_all",
    "exact_match",
    "few_shot_ids",
    "load_jsonl",
    "make_instances",
    "make_rows",
    "make_tasks",
    "pack_plan",
    "parse_record",
    "render",
    "row_stats",
    "special_tokens_from_config",
    "split_by_prefix",
    "split_cells",
    "truncate",
    "write_jsonl",
]
