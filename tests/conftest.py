"""Shared fixtures: the tiny random models of ``tiny_models.py``."""

import pytest
from tiny_models import tiny_gemma3, tiny_llama


@pytest.fixture(name="tiny_llama")
def _tiny_llama_fixture():
    """tiny_models.tiny_llama, the builder of small random Llamas."""
    return tiny_llama


@pytest.fixture(name="tiny_gemma3")
def _tiny_gemma3_fixture():
    """tiny_models.tiny_gemma3, the builder of small random Gemma 3 models."""
    return tiny_gemma3
