"""Prompts for RL: dataset adapters, streaming readers, the arithmetic task, the sampler.

Design: :func:`load_dataset` turns one ``DatasetConfig`` into a list of
:class:`Prompt` -- generated (``adapter="arithmetic"`` without a path) or read
from a Parquet/JSONL file through a reader (``readers.READERS``, by suffix) and
an adapter (``adapters.ADAPTERS``, by name).  A malformed row becomes a
:class:`DataError` naming file, row and field; ``on_bad_row="skip"`` logs it
and goes on, ``"fail"`` raises it.  Only the prompt list crosses into the rest
of the system; chat templating is applied late, by :func:`format_prompt`, so
the same prompts serve the rollout engine and the evaluator.

A prompt too long for the engine (more tokens than ``rollout.max_model_len -
rollout.max_tokens``) is a bad row too, but only a tokenizer can tell, so the
run setup calls :func:`drop_long_prompts` once the tokenizer is loaded; it
reports and counts such rows the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, List

from rlvr.config import DatasetConfig
from rlvr.data.adapters import (
    ADAPTERS,
    DataError,
    FieldError,
    Prompt,
    arithmetic_to_row,
    bind_adapter,
    check_columns,
)
from rlvr.data.arithmetic import GENERATOR_VERSION, generate_arithmetic, is_heldout
from rlvr.data.chain import generate_chain
from rlvr.data.readers import READERS, column_names, Unparsable, reader_for
from rlvr.data.sampler import PromptSampler

__all__ = [
    "BadRows",
    "ADAPTERS",
    "GENERATOR_VERSION",
    "READERS",
    "DataError",
    "Prompt",
    "PromptSampler",
    "arithmetic_to_row",
    "drop_long_prompts",
    "encode_prompts",
    "format_prompt",
    "generate_arithmetic",
    "is_heldout",
    "load_dataset",
    "iter_prompts",
    "read_prompts",
]

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("skip", "fail")
MAX_ROW_WARNINGS = 20  # further skipped rows are only counted, so a broken file cannot flood the log


class BadRows:
    """How many rows a reader skipped (malformed, invalid UTF-8): the run's start-up line counts them."""

    def __init__(self) -> None:
        self.skipped = 0


def load_dataset(cfg: DatasetConfig, on_bad_row: str = "skip", bad_rows: BadRows | None = None) -> list[Prompt]:
    """The prompts of one dataset section: generated arithmetic, or rows of ``cfg.path``."""
    _check_on_bad_row(on_bad_row)
    _check_limit(cfg.limit)
    if cfg.path is None:
        if cfg.adapter != "arithmetic":
            raise DataError(f"dataset adapter '{cfg.adapter}' needs a path (only 'arithmetic' is generated)")
        generate = generate_chain if cfg.task == "chain" else generate_arithmetic
        prompts = generate(cfg.synthetic_rows, cfg.synthetic_seed, cfg.max_operand, heldout=cfg.heldout)
        return prompts if cfg.limit is None else prompts[: cfg.limit]
    path = Path(cfg.path).expanduser()
    check_columns(cfg, column_names(path), str(path))  # a missing column fails before any row is read
    return read_prompts(path, bind_adapter(cfg.adapter, cfg), on_bad_row, cfg.limit, bad_rows)


def read_prompts(
    path: Path,
    adapter: Callable[[Mapping[str, Any]], Prompt],
    on_bad_row: str = "skip",
    limit: int | None = None,
    bad_rows: BadRows | None = None,
) -> list[Prompt]:
    """All prompts of ``path`` (at most ``limit``); a file without one usable row is a DataError."""
    prompts = list(iter_prompts(path, adapter, on_bad_row, limit, bad_rows))
    if not prompts:
        raise DataError(f"{path}: no usable rows")
    return prompts


def iter_prompts(
    path: Path,
    adapter: Callable[[Mapping[str, Any]], Prompt],
    on_bad_row: str = "skip",
    limit: int | None = None,
    bad_rows: BadRows | None = None,
) -> Iterator[Prompt]:
    """Stream ``path`` through ``adapter``, lazily: a bad row is logged and skipped, or raised
    (``on_bad_row="fail"``) only when the reader reaches it, after the rows before it."""
    _check_limit(limit)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kept = skipped = 0
    for row_number, row in _rows(path):
        if limit is not None and kept >= limit:
            break
        try:
            prompt = _adapt(adapter, row)
        except FieldError as exc:
            error = DataError(f"{path} row {row_number}: {exc}")
            if on_bad_row == "fail":
                raise error from None
            skipped += 1
            if bad_rows is not None:
                bad_rows.skipped += 1
            if skipped <= MAX_ROW_WARNINGS:
                logger.warning("%s (skipped)", error)
            continue
        prompt.meta.update(source=path.name, row=row_number)
        kept += 1
        yield prompt
    if skipped:
        logger.warning("%s: skipped %d malformed row(s), kept %d", path, skipped, kept)


def drop_long_prompts(
    prompts: Sequence[Prompt],
    tokenizer_fn: Callable[[str], Any],
    max_prompt_tokens: int,
    on_bad_row: str = "skip",
    source: str | None = None,
) -> tuple[list[Prompt], int]:
    """``(kept, skipped)``: the prompts of at most ``max_prompt_tokens`` tokens, and how many were dropped.

    ``tokenizer_fn(text)`` gives the token ids (or their count) of a prompt as the policy sees it,
    chat template included.  An over-long prompt is a bad row named by its file and row (from
    ``meta``, else ``source`` and its 1-based position): ``on_bad_row="skip"`` logs it and drops it,
    ``"fail"`` raises a :class:`DataError`.  Dropping every prompt is a DataError either way.
    """
    _check_on_bad_row(on_bad_row)
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    kept: list[Prompt] = []
    skipped = 0
    for position, prompt in enumerate(prompts, start=1):
        tokens = tokenizer_fn(prompt.prompt)
        n = tokens if isinstance(tokens, int) else len(tokens)
        if n <= max_prompt_tokens:
            kept.append(prompt)
            continue
        name = prompt.meta.get("source", source or "prompts")
        error = DataError(f"{name} row {prompt.meta.get('row', position)}: prompt has {n} tokens, more than the "
                          f"{max_prompt_tokens} that rollout.max_model_len - rollout.max_tokens leaves")
        if on_bad_row == "fail":
            raise error
        skipped += 1
        if skipped <= MAX_ROW_WARNINGS:
            logger.warning("%s (skipped)", error)
    label = source or "prompts"
    if skipped:
        logger.warning("%s: skipped %d prompt(s) longer than %d tokens, kept %d",
                       label, skipped, max_prompt_tokens, len(kept))
    if prompts and not kept:
        raise DataError(f"{label}: no prompt fits in {max_prompt_tokens} tokens "
                        "(raise rollout.max_model_len or lower rollout.max_tokens)")
    return kept, skipped


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"unknown on_bad_row '{on_bad_row}'; valid choices: {', '.join(ON_BAD_ROW)}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be >= 1 (or None for every row), got {limit}")


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


def encode_prompts(tokenizer: Any, texts: Sequence[str], chat_template: bool) -> List[List[int]]:
    """Token ids of each prompt as the policy sees it (:func:`format_prompt`), for the rollout engines."""
    return [tokenizer(format_prompt(tokenizer, t, chat_template))["input_ids"] for t in texts]
