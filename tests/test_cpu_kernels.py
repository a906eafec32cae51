"""Building llmjax's C++ CPU kernels (llmjax.cpu_kernels): every kernel compiles and registers,
a build is cached by its inputs, and a missing or failing compiler is named."""

import pytest

from llmjax import cpu_kernels
from tests.kernel_utils import needs_kernel


@needs_kernel
@pytest.mark.parametrize("name", sorted(cpu_kernels.TARGETS))
def test_every_kernel_builds_once_and_is_cached(name, tmp_path, monkeypatch):
    assert cpu_kernels.unavailable(name) is None  # built, loaded and registered with XLA
    path = cpu_kernels.library_path(name, tmp_path)
    assert path.parent == tmp_path / "kernels" and path.name.startswith(f"{name}-")
    stamp = path.stat().st_mtime_ns

    def no_compiling(command, **kw):
        if "-o" in command:
            raise AssertionError("a cached kernel was compiled again")
        return real_run(command, **kw)

    real_run = cpu_kernels.subprocess.run
    monkeypatch.setattr(cpu_kernels.subprocess, "run", no_compiling)
    assert cpu_kernels.library_path(name, tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "kernels").glob("*.tmp-*"))


def test_the_two_kernels_are_cached_apart_and_an_unknown_one_is_named():
    with pytest.raises(KeyError, match="no CPU kernel 'nope'; the kernels are causal_attention"):
        cpu_kernels.source("nope")
    assert cpu_kernels.source("grouped_matmul").name == "grouped_matmul.cc"


def test_a_missing_compiler_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(cpu_kernels.KernelUnavailable, match="does not run"):
        cpu_kernels.library_path("grouped_matmul", tmp_path)
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    with pytest.raises(cpu_kernels.KernelUnavailable, match="no C.. compiler found"):
        cpu_kernels.compiler()


def test_a_failed_compile_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    fake = tmp_path / "cxx"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo fake 1.0 && exit 0\n'
        "echo 'boom: no such flag' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(cpu_kernels.KernelUnavailable, match="boom: no such flag"):
        cpu_kernels.library_path("causal_attention", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "kernels").iterdir())


def test_switched_off_by_the_environment(monkeypatch):
    for value in ("off", "0", "none"):
        monkeypatch.setenv(cpu_kernels.KERNELS_ENV, value)
        assert not cpu_kernels.enabled()
        assert cpu_kernels.unavailable("grouped_matmul") == "$LLMJAX_CPU_KERNELS is off"
        with pytest.raises(cpu_kernels.KernelUnavailable, match="LLMJAX_CPU_KERNELS is off"):
            cpu_kernels.require("grouped_matmul")
