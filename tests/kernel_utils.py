"""What the tests of llmjax's C++ CPU kernels share."""

import pytest

from llmjax import cpu_kernels


def _no_compiler() -> bool:
    try:
        cpu_kernels.compiler()
    except cpu_kernels.KernelUnavailable:
        return True
    return False


# Where a C++ compiler exists the kernels must build; without one llmjax runs XLA's ops.
needs_kernel = pytest.mark.skipif(_no_compiler(), reason="no C++ compiler to build the kernels")
