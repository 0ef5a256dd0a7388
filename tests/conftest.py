"""Shared fixtures: the tiny HF checkpoint the trainer and engine tests load."""

from __future__ import annotations

import pytest

from helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 2-layer Qwen2 HF directory (vocab 32, untied embeddings), built once per test module."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "model"))
