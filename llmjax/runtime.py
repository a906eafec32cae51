"""Process-wide JAX settings: the persistent compilation cache, and quick compiles for programs
that run once.

XLA compiles every jitted function on first use (seconds each on a CPU). With the cache on, a
second run of the same model and shapes loads the compiled code from disk instead. The command
line turns it on; from Python call `enable_compilation_cache()` once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmjax.data.cache import resolve_cache_dir

COMPILE_CACHE_ENV = "LLMJAX_COMPILE_CACHE"
# What an llmjax environment switch ($LLMJAX_COMPILE_CACHE, $LLMJAX_CPU_KERNELS ...) reads as off.
OFF_VALUES = ("0", "off", "false", "no", "none")
# XLA's backend (LLVM) optimizations cost seconds of compile on a CPU and save microseconds in a
# program that runs once: a nano model's initializer compiles in ~60% of the time without them.
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# XLA:CPU hands matmuls, and elementwise work around them, to YNNPACK "library fusions" by
# default. Without them the train step at nanoGPT's medium shape ran 3-21% faster in five of
# seven alternating pairs on a 2-core x86 CPU (a wash at the nano shape), to the same losses
# (README, "Engine speed"). Other jaxlibs, or XLA_FLAGS that set the option, keep XLA's
# choice; $LLMJAX_XLA_DEFAULTS=1 keeps it too.
CPU_STEP_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
XLA_DEFAULTS_ENV = "LLMJAX_XLA_DEFAULTS"


def step_compiler_options() -> dict[str, str]:
    """The compiler options for programs that run at every step (train and eval steps): the
    CPU options above where this jaxlib knows them and nothing overrides them, else none."""
    import jax

    defaults = os.environ.get(XLA_DEFAULTS_ENV, "")
    if jax.default_backend() != "cpu" or defaults not in ("", *OFF_VALUES):
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in CPU_STEP_COMPILER_OPTIONS.items() if k not in flags}
    return dict(options) if options and _compiler_accepts(tuple(options.items())) else {}


@functools.cache
def _compiler_accepts(options: tuple[tuple[str, str], ...]) -> bool:
    import jax

    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(0.0).compile()
    except Exception:  # a jaxlib without the option: "No such compile option"
        return False
    return True


def jit_step(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit` for programs that run at every step, with `step_compiler_options()`."""
    import jax

    return jax.jit(fn, compiler_options=step_compiler_options() or None, **kwargs)


def jit_once(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit` for programs that run once per process, such as initializers: compiled without
    the backend's optimizations. Initial params may differ from an optimized build's in the
    last bit (transcendental functions), so every initializer uses this one setting.

    Called inside another trace (jit, eval_shape), where jit takes no compiler options, `fn`
    is traced inline and the enclosing program's options apply.
    """
    import jax

    quick = jax.jit(fn, compiler_options=RUN_ONCE_COMPILER_OPTIONS, **kwargs)
    nested = jax.jit(fn, **kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kw: Any) -> Any:
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kw)))
        return (nested if traced else quick)(*args, **kw)

    return call


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Caches compiled XLA programs in `path` (default: $LLMJAX_COMPILE_CACHE, else
    <llmjax cache dir>/xla). $LLMJAX_COMPILE_CACHE=off disables it; returns the directory used."""
    import jax

    setting = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if path is None and setting.lower() in OFF_VALUES and setting:
        return None
    directory = Path(path or setting or resolve_cache_dir() / "xla").expanduser()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Only programs that took a while to compile are worth a disk read.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def describe_devices() -> str:
    """One line saying which accelerator JAX found (and what to do when it found none)."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    line = (f"jax {jax.__version__}: {len(devices)} {jax.default_backend()} device(s), "
            f"{', '.join(kinds)}")  # fmt: skip
    if jax.default_backend() == "cpu":
        line += (" (no GPU or TPU found: this runs on the CPU; in Colab choose Runtime > Change "
                 "runtime type > a GPU or TPU, then run the notebook again)")  # fmt: skip
    return line
