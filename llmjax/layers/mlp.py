"""Position-wise feed-forward blocks, registered by name: gelu (GPT-2), swiglu (Llama), geglu
(Gemma), gelu_exact (GPT-NeoX)."""

import flax.linen as nn
import jax

from llmjax.layers.common import constrain, dtype_of, normal, out_std, param
from llmjax.layers.lora import project
from llmjax.registry import Registry

MLPS: Registry = Registry("mlp")


class Linear(nn.Module):
    """x @ kernel (+ bias when cfg.has_mlp_bias) over the last axis, with logical axis names."""

    features: int
    axes: tuple[str, str]
    std: float
    cfg: object

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = dtype_of(cfg.dtype)
        kernel = param(
            self,
            "kernel",
            (x.shape[-1], self.features),
            self.axes,
            normal(self.std),
            cfg.param_dtype,
        )
        y = project(
            self, "kernel", x.astype(dtype), kernel.astype(dtype), dims=1, axes=self.axes, cfg=cfg
        )
        if cfg.has_mlp_bias:
            bias = param(
                self,
                "bias",
                (self.features,),
                self.axes[1:],
                nn.initializers.zeros,
                cfg.param_dtype,
            )
            y = y + bias.astype(dtype)
        return y


@MLPS.register("gelu")
class GeluMLP(nn.Module):
    """D -> F -> D with a tanh-approximated GELU (GPT-2's `gelu_new`)."""

    cfg: object
    approximate = True

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        h_BxTxF = Linear(cfg.ffn_dim, ("embed", "mlp"), cfg.init_std, cfg, name="fc_in")(x_BxTxD)
        h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=self.approximate)
        h_BxTxF = constrain(h_BxTxF, ("batch", "length", "mlp"))
        return Linear(cfg.d_model, ("mlp", "embed"), out_std(cfg), cfg, name="fc_out")(h_BxTxF)


@MLPS.register("gelu_exact")
class ExactGeluMLP(GeluMLP):
    """D -> F -> D with the exact (erf) GELU (GPT-NeoX / Pythia's `gelu`)."""

    approximate = False


class GatedMLP(nn.Module):
    """D -> (act(gate) * up) -> D; subclasses name the activation."""

    cfg: object

    @staticmethod
    def activation(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        gate = Linear(cfg.ffn_dim, ("embed", "mlp"), cfg.init_std, cfg, name="gate")(x_BxTxD)
        up = Linear(cfg.ffn_dim, ("embed", "mlp"), cfg.init_std, cfg, name="up")(x_BxTxD)
        h_BxTxF = constrain(self.activation(gate) * up, ("batch", "length", "mlp"))
        return Linear(cfg.d_model, ("mlp", "embed"), out_std(cfg), cfg, name="down")(h_BxTxF)


@MLPS.register("swiglu")
class SwiGLUMLP(GatedMLP):
    """D -> (silu(gate) * up) -> D, as in Llama."""

    activation = staticmethod(jax.nn.silu)


@MLPS.register("geglu")
class GeGLUMLP(GatedMLP):
    """D -> (gelu_tanh(gate) * up) -> D, as in Gemma (`gelu_pytorch_tanh`)."""

    @staticmethod
    def activation(x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=True)
