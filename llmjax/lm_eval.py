"""An lm-evaluation-harness model backed by an llmjax run, and lm-eval's own command line with it
registered:

    python -m llmjax.lm_eval run --model llmjax --model_args run=runs/x --tasks hellaswag
    python -m llmjax.lm_eval run --model llmjax --model_args run=runs/x,step=400,batch_size=32 \
        --include_path my_tasks/ --tasks my_task

Every option is lm-eval's (`python -m llmjax.lm_eval --help`). lm-eval finds models only by a
registration made in its own process, so a bare `lm_eval --model llmjax` cannot see this one;
this module registers "llmjax" and then runs lm-eval's command line. From Python,
`lm_eval.simple_evaluate(model=LlmjaxLM(run=...), tasks=[...])` works after importing it.

Requests are served by llmjax.eval.EvalLM with the tokenization and windows of lm-eval's `hf`
model (the continuation's tokens are those of context + continuation after the context's,
rolling windows from lm-eval's own `get_rolling_token_windows`), so a run and its Hugging Face
export give the same numbers. Generation is greedy; a task that asks to sample is refused.
Needs the `lm-eval` extra: `pip install 'llmjax[lm-eval]'`.
"""

from __future__ import annotations

import sys
from typing import Any

from llmjax.errors import ConfigError

try:
    # lm-eval's own models first: it loads them only into an empty registry, so
    # registering ours alone would hide them.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "llmjax.lm_eval needs lm-evaluation-harness; install it with "
        "`pip install 'llmjax[lm-eval]'` (or `pip install lm-eval`)"
    ) from e

from llmjax.eval.lm import EvalLM


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "auto":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a whole number") from None


@register_model("llmjax")
class LlmjaxLM(LM):
    """model_args: run=DIR (required), step=N (default: the newest checkpoint), batch_size,
    max_length (default: the model's context)."""

    def __init__(
        self,
        run: str | None = None,
        step: Any = None,
        batch_size: Any = 16,
        max_length: Any = None,
        **_ignored: Any,  # lm-eval's device, max_batch_size ...: no meaning here
    ):
        super().__init__()
        if not run:
            raise ConfigError("the llmjax model needs a run: --model_args run=DIR")
        self.lm = EvalLM.from_run(
            str(run),
            step=_int(step, "step"),
            batch_size=_int(batch_size, "batch_size") or 16,
            max_length=_int(max_length, "max_length"),
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scored = self.lm.loglikelihood([r.args for r in requests])
        return [(s.logprob, s.greedy) for s in scored]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.lm.encode(text).tolist(),
                    prefix_token=self.lm.prefix_id,
                    max_seq_len=self.lm.max_length,
                    context_len=1,
                )
            ]
            out.append(sum(s.logprob for s in self.lm.scorer.score(windows, where="window")))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            _, kwargs = r.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ConfigError(
                    "the llmjax lm-eval model generates greedily; this task asks to sample "
                    "(do_sample/temperature); use a greedy task configuration"
                )
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            key = (until, int(kwargs.get("max_gen_toks", 256)))
            groups.setdefault(key, []).append(i)
        out = [""] * len(requests)
        for (until, max_new), rows in groups.items():
            texts = self.lm.generate_until(
                [requests[i].args[0] for i in rows], until=until, max_new_tokens=max_new
            )
            for i, text in zip(rows, texts, strict=True):
                out[i] = text
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with the llmjax model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    from llmjax.runs import CheckpointError

    try:
        cli_evaluate()
    except (ValueError, CheckpointError, OSError) as e:  # a run, task or option to fix
        print(f"llmjax lm-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
