"""Order tasks: rows are input, SEP, then the input reversed or sorted, scored after SEP only,
and each step's batch is a pure function of (seed, step)."""

import numpy as np
import pytest

from llmjax.data.order_tasks import OrderTask
from llmjax.errors import ConfigError


@pytest.mark.parametrize("kind", ["reverse", "sort"])
def test_rows_hold_the_input_then_its_reversal_or_sort(kind):
    task = OrderTask(kind, length=5, n_symbols=7)
    b = task.batch_at(3, 4, seed=1)
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (4, 10)
    row = np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)  # the 2n + 1 tokens
    x, sep, y = row[:, :5], row[:, 5], row[:, 6:]
    assert (sep == task.n_symbols).all() and x.max() < 7
    np.testing.assert_array_equal(y, x[:, ::-1] if kind == "reverse" else np.sort(x, axis=1))
    # the scored targets are exactly the outputs
    np.testing.assert_array_equal(b["targets"][b["mask"] > 0].reshape(4, 5), y)
    np.testing.assert_array_equal(task.batch_at(3, 4, seed=1)["inputs"], b["inputs"])
    assert not np.array_equal(task.batch_at(4, 4, seed=1)["inputs"], b["inputs"])


def test_bad_kind_is_named():
    with pytest.raises(ConfigError, match="kind='rotate' is not known; valid: reverse, sort"):
        OrderTask("rotate")
