"""Fused causal attention for XLA:CPU: `cpu_causal.cc` run as an XLA FFI custom call.

XLA:CPU computes attention as batched matmuls around a [B, N, T, T] logits array, which it
writes, copies into the layout the next matmul wants, and reads back, forward and backward;
at T = 256 that traffic, not the arithmetic, is most of a training step's time. The kernel here
never writes the logits: it runs over blocks of 64 queries and 64 keys, skips the blocks above
the diagonal, keeps a running softmax (FlashAttention's), and recomputes the probabilities in
the backward pass from the saved log-sum-exp. It serves the plain causal mask (queries and keys
at positions 0..T-1, no padding, segments or window), with grouped-query heads, head sizes
32, 64 and 128, float32 (other dtypes are computed in float32 and cast back), on one CPU device
(the custom call has no sharding rule). `auto` attention uses it there (llmjax.attention.auto);
everything else falls back to XLA, exactly.

The C++ file is compiled on first use with the system's C++ compiler (`$CXX`, else `c++`) for
this CPU and cached under <llmjax cache dir>/kernels, keyed by the source, the compiler, the
jaxlib and the CPU; a few seconds, once per machine. Without a compiler, or with
$LLMJAX_CPU_KERNELS=off, nothing is built and attention runs on XLA as before.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.attention.masks import Mask
from llmjax.attention.support import declined, report
from llmjax.runtime import OFF_VALUES

SOURCE = Path(__file__).with_name("cpu_causal.cc")
KERNELS_ENV = "LLMJAX_CPU_KERNELS"
HEAD_DIMS = (32, 64, 128)
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-std=c++17",
         "-shared", "-fPIC")  # fmt: skip
_FORWARD, _BACKWARD = "llmjax_cpu_causal_attention_fwd", "llmjax_cpu_causal_attention_bwd"
log = logging.getLogger("llmjax.attention")


class KernelUnavailable(RuntimeError):
    """The kernel could not be built or loaded here (the message says why)."""


def enabled() -> bool:
    return os.environ.get(KERNELS_ENV, "").strip().lower() not in OFF_VALUES


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's model and instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(wanted) or platform.processor()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise KernelUnavailable("no C++ compiler found (set $CXX, or install g++)")
    return compiler


def library_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The compiled kernel's path, building it first if it is not cached (KernelUnavailable
    when it cannot be built)."""
    from llmjax.data.cache import resolve_cache_dir

    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"the C++ compiler {compiler!r} does not run: {e}") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(),
                 jax.lib.__version__.encode(), _cpu_signature().encode()):  # fmt: skip
        key.update(part)
        key.update(b"\0")
    folder = resolve_cache_dir(cache_dir) / "kernels"
    path = folder / f"cpu_causal-{key.hexdigest()[:20]}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    command = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(temp)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"compiling {SOURCE.name} failed: {e}") from None
    if done.returncode != 0:
        temp.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise KernelUnavailable(f"compiling {SOURCE.name} failed ({' '.join(command)}):\n{tail}")
    os.replace(temp, path)  # atomic: another process never loads a half-written library
    return path


def _registered() -> str | None:
    """None when the kernel is switched on and ready (built and registered once per process),
    else why it is not."""
    return f"${KERNELS_ENV} is off" if not enabled() else _load()


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernel: None when it is ready, else why not (logged
    once as a warning)."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(library_path()))
        for name, symbol in ((_FORWARD, "LlmjaxCausalAttentionFwd"),
                             (_BACKWARD, "LlmjaxCausalAttentionBwd")):  # fmt: skip
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")  # fmt: skip
    except (KernelUnavailable, OSError, AttributeError) as e:
        log.warning("the fused CPU attention kernel is unavailable, attention runs on XLA: %s", e)
        return f"it is unavailable ({str(e).splitlines()[0]})"
    return None


def why_not(q_BxTxNxH, k_BxSxKxH, mask: Mask, alibi_slopes, logit_softcap) -> str | None:
    """Why the kernel cannot serve this call (a phrase), or None when it can."""
    B, T, N, H = q_BxTxNxH.shape
    S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
    if not (mask.plain and mask.causal and mask.window is None and mask.extra is None):
        return "a mask other than the plain causal one"
    if alibi_slopes is not None or logit_softcap is not None:
        return "ALiBi or a logit soft cap"
    if T != S or N % K:
        return f"{T} queries over {S} keys, {N} heads over {K} kv heads"
    if H not in HEAD_DIMS:
        return f"head size {H} (it takes {', '.join(map(str, HEAD_DIMS))})"
    if jax.device_count() > 1:
        return f"{jax.device_count()} devices (the custom call has no sharding rule)"
    return _registered()


def require() -> None:
    """Builds and registers the kernel if needed; KernelUnavailable says why it cannot be."""
    why = _registered()
    if why is not None:
        raise KernelUnavailable(f"the fused CPU attention kernel cannot run: {why}")


def _forward(q, k, v, scale):
    require()
    B, T, N, _ = q.shape
    outputs = (jax.ShapeDtypeStruct(q.shape, jnp.float32),
               jax.ShapeDtypeStruct((B, N, T), jnp.float32))  # fmt: skip
    call = jax.ffi.ffi_call(_FORWARD, outputs, vmap_method="sequential")
    return call(q, k, v, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale: float):
    """softmax(q k^T * scale + causal mask) v, float32 [B, T, N, H] (see the module)."""
    return _forward(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)[0]


def _causal_fwd(q, k, v, scale):
    out, lse = _forward(q, k, v, scale)
    return out, (q, k, v, out, lse)


def _causal_bwd(scale, residuals, d_out):
    require()
    q, k, v, out, lse = residuals
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    call = jax.ffi.ffi_call(_BACKWARD, shapes, vmap_method="sequential")
    return tuple(call(q, k, v, out, lse, d_out.astype(jnp.float32), scale=np.float32(scale)))


causal_attention.defvjp(_causal_fwd, _causal_bwd)


def fused_cpu_attention(q, k, v, mask: Mask, alibi_slopes, scale, logit_softcap=None):
    """`auto`'s CPU kernel: the output in q's dtype, or None (with the reason logged) when the
    kernel does not serve the call."""
    why = why_not(q, k, mask, alibi_slopes, logit_softcap)
    if why is not None:
        return declined("the fused CPU kernel", f"it cannot serve {why}", q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    out = causal_attention(*f32, scale).astype(q.dtype)
    report("cpu_fused", "plain causal", q, k)
    return out
