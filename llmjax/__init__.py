"""llmjax: a JAX/Flax functional model zoo for language models."""

__version__ = "0.1.0"
