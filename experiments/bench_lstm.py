"""LSTM (or GRU) throughput: llmjax's recurrent family against torch.nn.LSTM on the CPU.

    python -m experiments.bench_lstm                   # nano's width, layers, batch, context
    python -m experiments.bench_lstm --arch gru
    python -m experiments.bench_lstm --quick           # test-tiny, a few seconds

Both sides are the same model, float32: the preset's token embedding, `n_layers` cells of width
d_model stacked as llmjax stacks them (pre-norm residual by default), the final norm and the
tied head; torch's cells are torch.nn.LSTM / torch.nn.GRU layers loaded with llmjax's initial
params, and the logits of the two are compared before timing. Training is a whole step:
forward, backward, gradient clipping and AdamW with weight decay on the kernels only (llmjax's
train step through its Trainer, jitted; torch eager). Inference is the forward pass alone
(logits of every position). Random tokens of the char vocabulary (65 ids).

Runs alternate (llmjax, torch, llmjax, torch, ...) `--repeats` times, `--steps` steps each;
tokens/s are from the median step. The target: torch at most 2x llmjax's training tokens/s.
Prints one JSON object and writes results/bench_lstm/metrics.json.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
import torch

from llmjax.config import apply_overrides, get_preset
from llmjax.models import build_model
from llmjax.results import experiment_parser, write_results
from llmjax.train.bench import compile_step

TARGET_RATIO = 2.0
QUICK = {"preset": "test-tiny", "repeats": 2, "steps": 2}


def parse_args(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--arch", default="lstm", choices=["lstm", "gru"])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size (default: 65)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's intra-op threads (default: its own)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


class TorchRecurrent(torch.nn.Module):
    """The llmjax recurrent family's forward pass with torch.nn.LSTM / torch.nn.GRU cells."""

    def __init__(self, cfg, params):
        super().__init__()
        D, bias = cfg.d_model, cfg.use_bias
        cell = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cfg.arch]
        self.cfg = cfg
        self.embed = torch.nn.Embedding(cfg.padded_vocab_size, D)
        self.cells = torch.nn.ModuleList(
            cell(D, D, 1, bias=bias, batch_first=True) for _ in range(cfg.n_layers)
        )
        norm = {
            "layernorm": lambda: torch.nn.LayerNorm(D, eps=cfg.norm_eps, bias=bias),
            "rmsnorm": lambda: torch.nn.RMSNorm(D, eps=cfg.norm_eps),
        }[cfg.norm]
        self.norms = torch.nn.ModuleList(norm() for _ in range(cfg.n_layers + 1))
        self.load(params)

    @torch.no_grad()
    def load(self, params):
        """Copies llmjax params in: kernels [in, gates * D] are torch's weights transposed."""
        t = lambda x: torch.from_numpy(np.array(x, np.float32))  # noqa: E731
        self.embed.weight.copy_(t(params["embed"]["embedding"]))
        for i, (cell, norm) in enumerate(zip(self.cells, self.norms, strict=False)):
            p = params[f"blocks_{i}"]
            cell.weight_ih_l0.copy_(t(p["input_kernel"]).T)
            cell.weight_hh_l0.copy_(t(p["recurrent_kernel"]).T)
            if self.cfg.use_bias:
                cell.bias_ih_l0.copy_(t(p["input_bias"]))
                # An LSTM's one bias is torch's b_ih + b_hh; a GRU has both.
                cell.bias_hh_l0.copy_(t(p.get("recurrent_bias", np.zeros(cell.bias_hh_l0.shape))))
            self._load_norm(norm, params[f"blocks_{i}_norm"], t)
        self._load_norm(self.norms[-1], params["final_norm"], t)

    @staticmethod
    def _load_norm(norm, p, t):
        norm.weight.copy_(t(p["scale"]))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(t(p["bias"]))

    def forward(self, tokens_BxT):
        cfg = self.cfg
        x = self.embed(tokens_BxT)
        for cell, norm in zip(self.cells, self.norms, strict=False):
            if cfg.norm_position == "pre":
                y = cell(norm(x))[0]
                x = x + y if cfg.residual else y
            else:
                y = cell(x)[0]
                x = norm(x + y if cfg.residual else y)
        if cfg.norm_position == "pre":
            x = self.norms[-1](x)
        return x @ self.embed.weight.T


def torch_optimizer(model, optim):
    """AdamW as llmjax's: decoupled decay on matmul weights only (not embeddings or norms)."""
    decay = [p for n, p in model.named_parameters() if n.startswith("cells.") and "weight" in n]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    cfg = apply_overrides(
        get_preset(args.preset),
        [f"model.arch={args.arch}", f"model.vocab_size={args.vocab}", "model.position=none"],
    )
    B, T, V = cfg.data.batch_size, cfg.seq_len, cfg.model.padded_vocab_size
    step = compile_step(cfg)
    params = jax.device_get(step.state.params)
    model = build_model(cfg.model)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t).logits)
    tokens = step.batch["inputs"]

    torch_model = TorchRecurrent(cfg.model, params)
    opt = torch_optimizer(torch_model, cfg.optim)
    x = torch.from_numpy(np.asarray(tokens, np.int64))
    y = torch.from_numpy(np.asarray(step.batch["targets"], np.int64))
    with torch.no_grad():
        parity = float(np.abs(torch_model(x).numpy() - np.asarray(forward(params, tokens))).max())

    def torch_train():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(torch_model(x).reshape(-1, V), y.reshape(-1))
        loss.backward()
        if cfg.optim.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(torch_model.parameters(), cfg.optim.clip_norm)
        opt.step()

    @torch.no_grad()
    def torch_infer():
        torch_model(x)

    def jax_infer():
        forward(params, tokens).block_until_ready()

    def timed(fn):
        out = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    times = {k: [] for k in ("llmjax_train", "torch_train", "llmjax_infer", "torch_infer")}
    step.run(2)  # warm-up: compiled already, first runs allocate
    torch_train(), torch_train(), jax_infer(), torch_infer()
    step.clear()
    for _ in range(args.repeats):
        step.run(args.steps)
        times["torch_train"] += timed(torch_train)
        times["llmjax_infer"] += timed(jax_infer)
        times["torch_infer"] += timed(torch_infer)
    times["llmjax_train"] = list(step.times)
    median = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: B * T / s for k, s in median.items()}
    ratio = tps["torch_train"] / tps["llmjax_train"]
    metrics = {
        "preset": args.preset,
        "arch": args.arch,
        "batch_size": B,
        "seq_len": T,
        "d_model": cfg.model.d_model,
        "n_layers": cfg.model.n_layers,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "backend": jax.default_backend(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "llmjax_compile_s": round(step.compile_s, 2),
        "torch_vs_llmjax_logits_max_abs": parity,
        **{f"{k}_ms": round(s * 1e3, 2) for k, s in median.items()},
        **{f"{k}_tokens_per_s": round(v, 1) for k, v in tps.items()},
        "train_torch_over_llmjax": round(ratio, 3),
        "infer_torch_over_llmjax": round(tps["torch_infer"] / tps["llmjax_infer"], 3),
        "target_ratio_max": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "llmjax_loss_first_last": [
            round(step.metrics[0]["loss"], 4),
            round(step.metrics[-1]["loss"], 4),
        ],  # fmt: skip
    }
    write_results("bench_lstm", metrics, out_dir=args.out_dir, quick=args.quick)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
