"""Prompts for RL: dataset adapters, streaming readers, the arithmetic task, the sampler.

Design: :func:`load_dataset` turns one ``DatasetConfig`` into a list of
:class:`Prompt` -- generated (``adapter="arithmetic"`` without a path) or read
from a Parquet/JSONL file through a reader (``readers.READERS``, by suffix) and
an adapter (``adapters.ADAPTERS``, by name).  A malformed row becomes a
:class:`DataError` naming file, row and field; ``on_bad_row="skip"`` logs it
and goes on, ``"fail"`` raises it.  Only the prompt list crosses into the rest
of the system; chat templating is applied late, by :func:`format_prompt`, so
the same prompts serve the rollout engine and the evaluator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rlvr.config import DatasetConfig
from rlvr.data.adapters import (
    ADAPTERS,
    DataError,
    FieldError,
    Prompt,
    arithmetic_to_row,
    get_adapter,
)
from rlvr.data.arithmetic import GENERATOR_VERSION, generate_arithmetic, is_heldout
from rlvr.data.readers import READERS, Unparsable, reader_for
from rlvr.data.sampler import PromptSampler

__all__ = [
    "ADAPTERS",
    "GENERATOR_VERSION",
    "READERS",
    "DataError",
    "Prompt",
    "PromptSampler",
    "arithmetic_to_row",
    "format_prompt",
    "generate_arithmetic",
    "is_heldout",
    "load_dataset",
    "read_prompts",
]

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("skip", "fail")
MAX_ROW_WARNINGS = 20  # further skipped rows are only counted, so a broken file cannot flood the log


def load_dataset(cfg: DatasetConfig, on_bad_row: str = "skip") -> list[Prompt]:
    """The prompts of one dataset section: generated arithmetic, or rows of ``cfg.path``."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"unknown on_bad_row '{on_bad_row}'; valid choices: {', '.join(ON_BAD_ROW)}")
    if cfg.path is None:
        if cfg.adapter != "arithmetic":
            raise DataError(f"dataset adapter '{cfg.adapter}' needs a path (only 'arithmetic' is generated)")
        prompts = generate_arithmetic(
            cfg.synthetic_rows, cfg.synthetic_seed, cfg.max_operand, heldout=cfg.heldout
        )
        return prompts if cfg.limit is None else prompts[: cfg.limit]
    return read_prompts(Path(cfg.path).expanduser(), get_adapter(cfg.adapter), on_bad_row, cfg.limit)


def read_prompts(
    path: Path,
    adapter: Callable[[Mapping[str, Any]], Prompt],
    on_bad_row: str = "skip",
    limit: int | None = None,
) -> list[Prompt]:
    """Stream ``path`` through ``adapter``; stops reading once ``limit`` prompts are collected."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    prompts: list[Prompt] = []
    skipped = 0
    for row_number, row in _rows(path):
        if limit is not None and len(prompts) >= limit:
            break
        try:
            prompt = _adapt(adapter, row)
        except FieldError as exc:
            error = DataError(f"{path} row {row_number}: {exc}")
            if on_bad_row == "fail":
                raise error from None
            skipped += 1
            if skipped <= MAX_ROW_WARNINGS:
                logger.warning("%s (skipped)", error)
            continue
        prompt.meta.update(source=path.name, row=row_number)
        prompts.append(prompt)
    if skipped:
        logger.warning("%s: skipped %d malformed row(s), kept %d", path, skipped, len(prompts))
    if not prompts:
        raise DataError(f"{path}: no usable rows")
    return prompts


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    for batch in reader_for(path)(path):
        yield from batch


def _adapt(adapter: Callable[[Mapping[str, Any]], Prompt], row: Any) -> Prompt:
    if isinstance(row, Unparsable):
        raise FieldError(None, str(row))
    return adapter(row)


def format_prompt(tokenizer: Any, text: str, chat_template: bool) -> str:
    """The text the policy sees: ``text`` itself, or wrapped as one user turn of the chat template."""
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.chat_template is true but the tokenizer has no chat template")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
