"""The recall task: every scored target is the value of the fact its query names, the fact sits
`distance` tokens before the query, and only the answers are scored."""

import numpy as np
import pytest

from llmjax.data.synthetic import RecallTask


@pytest.mark.parametrize("pairs, n_keys", [(1, 1), (3, 8)])
def test_each_answer_is_the_value_of_the_fact_its_query_names(pairs, n_keys):
    task = RecallTask(seq_len=40, n_keys=n_keys, pairs=pairs, min_distance=2, max_distance=30)
    b = task.batch(np.random.default_rng(0), 16)
    inputs, targets, mask, distance = b["inputs"], b["targets"], b["mask"], b["distance"]
    assert inputs.shape == targets.shape == mask.shape == distance.shape == (16, 40)
    query0 = task.n_filler
    value0, fact0 = query0 + task.n_keys, query0 + task.n_keys + task.n_values
    rows, cols = np.nonzero(mask)
    assert len(rows) >= 16 * pairs - 1  # rejection sampling may drop a fact, very rarely
    for r, c in zip(rows, cols, strict=True):
        d = distance[r, c]
        assert 2 <= d <= 30
        key = inputs[r, c] - query0
        assert 0 <= key < task.n_keys
        fact = inputs[r, c - d] - fact0
        assert fact // task.n_values == key
        assert targets[r, c] == value0 + fact % task.n_values
    assert (distance[mask == 0] == 0).all()
    # outside the facts, queries and answers: filler only
    special = np.zeros_like(mask, bool)
    special[rows, cols] = True
    special[rows, cols - distance[rows, cols]] = True
    special[rows[cols + 1 < 40], cols[cols + 1 < 40] + 1] = True  # the answer, as next input
    assert (inputs[~special] < task.n_filler).all()


def test_one_key_task_has_one_answer_per_row_at_every_distance():
    task = RecallTask(seq_len=16, n_keys=1, pairs=1)
    b = task.batch(np.random.default_rng(1), 256)
    assert (b["mask"].sum(1) == 1).all()
    assert set(b["distance"][b["mask"] > 0]) == set(range(1, 16))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"max_distance \(20\) <= seq_len - 1 \(15\)"):
        RecallTask(seq_len=16, max_distance=20)
    with pytest.raises(ValueError, match="pairs=3 needs as many keys"):
        RecallTask(seq_len=16, n_keys=2, pairs=3)
