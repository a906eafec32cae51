"""llmjax's C++ kernels for XLA:CPU, run as XLA FFI custom calls, and how they are built.

Each kernel is one C++ file here (`<name>.cc`, sharing `common.h`): `causal_attention` (fused
causal attention, called by llmjax.attention.cpu_fused) and `grouped_matmul` (a mixture of
experts' matmuls over tokens sorted by expert, called by llmjax.layers.grouped). A file is
compiled on first use with the system's C++ compiler (`$CXX`, else `c++`) for this CPU and
cached under <llmjax cache dir>/kernels, keyed by its source, the shared header, the compiler,
the flags, the jaxlib and the CPU: a few seconds, once per machine. Then its handlers are
registered with XLA, once per process.

Nothing requires them: without a compiler, or with $LLMJAX_CPU_KERNELS=off, nothing is built
and the callers run the same computation on XLA's own ops (`unavailable` says why).
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

from llmjax.runtime import OFF_VALUES

FOLDER = Path(__file__).parent
HEADER = FOLDER / "common.h"
KERNELS_ENV = "LLMJAX_CPU_KERNELS"
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-std=c++17",
         "-shared", "-fPIC")  # fmt: skip
# kernel -> {XLA custom-call target: the handler symbol its library exports}
TARGETS = {
    "causal_attention": {
        "llmjax_cpu_causal_attention_fwd": "LlmjaxCausalAttentionFwd",
        "llmjax_cpu_causal_attention_bwd": "LlmjaxCausalAttentionBwd",
    },
    "grouped_matmul": {
        "llmjax_cpu_grouped_matmul": "LlmjaxGroupedMatmul",
        "llmjax_cpu_grouped_matmul_tn": "LlmjaxGroupedMatmulTn",
    },
}
log = logging.getLogger("llmjax.cpu_kernels")


class KernelUnavailable(RuntimeError):
    """A kernel could not be built or loaded here (the message says why)."""


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


def compiler() -> str:
    found = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not found:
        raise KernelUnavailable("no C++ compiler found (set $CXX, or install g++)")
    return found


def source(name: str) -> Path:
    if name not in TARGETS:
        raise KeyError(f"no CPU kernel {name!r}; the kernels are {', '.join(TARGETS)}")
    return FOLDER / f"{name}.cc"


def library_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Kernel `name`'s compiled library, building it first if it is not cached
    (KernelUnavailable when it cannot be built)."""
    from llmjax.data.cache import resolve_cache_dir

    src, cxx = source(name), compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"the C++ compiler {cxx!r} does not run: {e}") from None
    key = hashlib.sha256()
    for part in (src.read_bytes(), HEADER.read_bytes(), version.encode(), " ".join(FLAGS).encode(),
                 jax.lib.__version__.encode(), _cpu_signature().encode()):  # fmt: skip
        key.update(part)
        key.update(b"\0")
    folder = resolve_cache_dir(cache_dir) / "kernels"
    path = folder / f"{name}-{key.hexdigest()[:20]}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    command = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(src), "-o", str(temp)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"compiling {src.name} failed: {e}") from None
    if done.returncode != 0:
        temp.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise KernelUnavailable(f"compiling {src.name} failed ({' '.join(command)}):\n{tail}")
    os.replace(temp, path)  # atomic: another process never loads a half-written library
    return path


def unavailable(name: str) -> str | None:
    """None when kernel `name` is switched on and ready (built and registered once per
    process), else why it is not (a phrase)."""
    return f"${KERNELS_ENV} is off" if not enabled() else _load(name)


@functools.cache
def _load(name: str) -> str | None:
    """Builds, loads and registers kernel `name`: None when it is ready, else why not (logged
    once as a warning)."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(library_path(name)))
        for target, symbol in TARGETS[name].items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")  # fmt: skip
    except (KernelUnavailable, OSError, AttributeError) as e:
        log.warning("the CPU kernel %s is unavailable, XLA's ops serve instead: %s", name, e)
        return f"it is unavailable ({str(e).splitlines()[0]})"
    return None


def unserved(name: str) -> str | None:
    """Why kernel `name` cannot serve this process (a phrase), or None when it can: it needs
    the CPU backend with one device (a custom call has no sharding rule), switched on and
    built."""
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}"
    if jax.device_count() > 1:
        return f"{jax.device_count()} devices (the custom call has no sharding rule)"
    return unavailable(name)


def require(name: str) -> None:
    """Builds and registers kernel `name` if needed; KernelUnavailable says why it cannot."""
    why = unavailable(name)
    if why is not None:
        raise KernelUnavailable(f"the CPU kernel {name} cannot run: {why}")
