"""Preference data: {prompt, chosen, rejected} pairs rendered with a chat template, encoded
with a mask on each reply, in rows of one pair, as a resumable batch source; and built-in
pairs made by code and labelled by a hidden gold reward.

    data = PreferenceData.build(PreferenceDataConfig(data="pairs.jsonl"), tok, template, 128)
    source = data.source(batch_size=8, seed=0)
    batch = source.batch(step)          # chosen_inputs, ..., rejected_mask [B, T]
    gold = GoldReward()                 # the built-in pairs' reward, usable as an RL reward
"""

from llmjax.data.preference.builtin import (
    GoldReward,
    builtin_pairs,
    builtin_prompts,
    label_pairs,
    sample_reply,
)
from llmjax.data.preference.config import (
    BUILTIN,
    PREFERENCE_FILE,
    PreferenceDataConfig,
    PreferenceRecord,
    read_record,
)
from llmjax.data.preference.data import PreferenceData, describe, load_preference_pairs
from llmjax.data.preference.encode import (
    REF_FIELDS,
    ROW_FIELDS,
    EncodedPair,
    PairStats,
    encode_pairs,
    pair_rows,
    reward_ids,
)
from llmjax.data.preference.records import PreferencePair, load_pairs, parse_pair
from llmjax.data.preference.source import PreferenceBatches

__all__ = [
    "BUILTIN",
    "PREFERENCE_FILE",
    "REF_FIELDS",
    "ROW_FIELDS",
    "EncodedPair",
    "GoldReward",
    "PairStats",
    "PreferenceBatches",
    "PreferenceData",
    "PreferenceDataConfig",
    "PreferencePair",
    "PreferenceRecord",
    "builtin_pairs",
    "builtin_prompts",
    "describe",
    "encode_pairs",
    "label_pairs",
    "load_pairs",
    "load_preference_pairs",
    "pair_rows",
    "parse_pair",
    "read_record",
    "reward_ids",
    "sample_reply",
]
