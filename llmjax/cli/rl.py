"""`llmjax ppo` and `llmjax grpo`: a policy trained from a reward on its own completions
(llmjax.align.rl)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from llmjax.cli.errors import check_writable_dir, explain_out_of_memory, train_memory
from llmjax.cli.options import add_run_options
from llmjax.cli.sft import adapter_overrides, add_adapter_options
from llmjax.config import ConfigError

DESCRIPTION = """\
Train a policy from a reward with {name}. A new run starts from --init-from's newest params
and tokenizer; it alternates rollouts (rl.prompts_per_rollout prompts, rl.group_size
completions each, sampled with the KV-cached decoder) and rl.ppo_epochs passes of
rl.minibatches optimizer steps over each rollout.{extra}

--steps N counts optimizer steps (train.steps), a multiple of ppo_epochs * minibatches; a
rollout is made every ppo_epochs * minibatches steps. data.batch_size is set to the rows of
one minibatch (rollout rows / minibatches).

--reward: arith (1 when the completion is the answer of "What is 17 + 25?"), gold (the hidden
reward of the built-in preference data, llmjax.data.preference.GoldReward), count:<char>
(the share of <char> in the completion), run:<DIR> (a reward model: a run with a value head),
or module:function (fn(prompts, completions) -> floats, imported).
--prompts: arith (built-in arithmetic questions), builtin (the built-in preference data's
requests) or a JSONL file of {{"prompt": "..."}} lines,
rendered with the run's chat template (--set rl.prompt_format=plain: the text as it is).

The run records its reward and prompts in config.json (rl.reward, rl.prompts), so that
`llmjax {name} --resume --out OUT` continues where it stopped.
"""
EXTRA = {
    "ppo": "\nThe value head (model.value_head) is added to the policy; advantages are GAE over\n"
    "the KL-penalised per-token reward.",
    "grpo": "\nAdvantages are the rewards normalised within each prompt's group; the k3 KL to\n"
    "the reference is in the loss; no value head.",
}
# Options that stand for --set rl.<field>=VALUE.
RL_OPTIONS = {
    "kl_coef": "kl_coef",
    "kl_target": "kl_target",
    "group_size": "group_size",
    "max_new_tokens": "max_new_tokens",
    "prompts_per_rollout": "prompts_per_rollout",
}


def add(sub: argparse._SubParsersAction) -> None:
    for name in ("ppo", "grpo"):
        _add(sub, name)


def _add(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help=f"train a policy from a reward with {name.upper()}",
        description=DESCRIPTION.format(name=name, extra=EXTRA[name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--init-from", default=None, metavar="RUN", help="the run to start from")
    p.add_argument(
        "--reward",
        default=None,
        metavar="SPEC",
        help="arith, gold, count:<char>, run:DIR or mod:fn",
    )
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE|arith|builtin",
        help="JSONL (or .parquet) prompts, arith or builtin",
    )
    p.add_argument("--kl-coef", type=float, default=None, help="KL penalty coefficient")
    p.add_argument(
        "--kl-target", type=float, default=None, help="adaptive KL: the per-sequence KL target"
    )
    p.add_argument("--group-size", type=int, default=None, help="completions per prompt")
    p.add_argument("--prompts-per-rollout", type=int, default=None, help="prompts per rollout")
    p.add_argument("--max-new-tokens", type=int, default=None, help="completion length bound")
    add_run_options(
        p,
        steps_help="optimizer steps (train.steps), a multiple of ppo_epochs * minibatches",
        set_example="rl.clip=0.1",
        resume_help="continue the run in --out from its checkpoint (its reward, prompts and "
        "config are the recorded ones)",
    )
    add_adapter_options(p)
    p.set_defaults(func=run, kind=name)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = [*adapter_overrides(args)]
    for option, name in RL_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            out.append(f"rl.{name}={value}")
    if args.reward is not None:
        out.append(f"rl.reward={args.reward}")
    if args.prompts is not None:
        prompts = args.prompts
        if prompts not in ("arith", "builtin"):
            prompts = str(Path(prompts).expanduser().absolute())
        out.append(f"rl.prompts={prompts}")
    out += args.overrides
    if args.steps is not None:
        out.append(f"train.steps={args.steps}")
    return out


def run(args: argparse.Namespace) -> int:
    from llmjax.align.rl import fit_rl, rl_config
    from llmjax.train.hooks import TrainingDiverged, TrainingInterrupted

    kind = args.kind
    if args.out is None:
        raise ConfigError(f"{kind} needs --out DIR, the run directory to create or continue")
    if args.resume:
        given = [
            f"--{n.replace('_', '-')}"
            for n in ("init_from", "reward", "prompts", "lora_rank")
            if getattr(args, n) is not None
        ]
        if given:
            raise ConfigError(
                f"--resume continues {args.out} with the reward, prompts and params it recorded; "
                f"drop {', '.join(given)}"
            )
    elif args.reward is None or args.prompts is None:
        raise ConfigError(f"{kind} needs --reward SPEC and --prompts FILE|arith|builtin")
    cfg = rl_config(
        kind,
        init_from=None if args.resume else args.init_from,
        resume=args.out if args.resume else None,
        overrides=_overrides(args),
    )
    check_writable_dir(args.out, "--out")
    try:
        with explain_out_of_memory(lambda: train_memory(cfg)):
            result = fit_rl(
                cfg,
                args.out,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except TrainingInterrupted as e:
        print(f"llmjax {kind}: {_hint(str(e), kind)}", file=sys.stderr)
        return 128 + int(signal.Signals[e.signal_name])
    except TrainingDiverged as e:
        raise TrainingDiverged(_hint(str(e), kind)) from None
    rl = [r for r in result.history if r.get("split") == "rl"]
    last = rl[-1] if rl else {}
    record = {
        "run": str(result.run.path),
        "steps": int(result.state.step),
        "wall_s": round(result.wall_s, 2),
        **{k: last[k] for k in ("reward", "kl", "kl_coef") if k in last},
        "first_reward": rl[0]["reward"] if rl else None,
    }
    print(json.dumps(record))
    return 0


def _hint(message: str, kind: str) -> str:
    return message.replace("llmjax train --resume", f"llmjax {kind} --resume")
