"""Prompt records and the dataset adapters that make them.

Design: every dataset becomes the same :class:`Prompt` (text, ground truth,
verifier name, meta) through one adapter per dataset, kept in the explicit
``ADAPTERS`` registry whose keys are exactly ``rlvr.config.DATASETS`` (a
contract test checks this).  An adapter is a pure function ``row -> Prompt``
that raises :class:`FieldError` naming the offending field; the loader adds the
file and row number, so every malformed row is reported as
``<file> row <n>: field '<name>': <problem>``.

GSM8K ground truths drop thousands separators ("1,450,000" -> "1450000"), as
the reference GSM8K evaluation does; MATH answers are kept verbatim (LaTeX) for
the math verifier to normalise.

Datasets users already have:

* ``verl``: verl's RL Parquet layout (``prompt`` a list of chat messages
  ``{role, content}``, ``reward_model.ground_truth``, ``data_source``).  The
  verifier follows ``data_source`` through :data:`VERL_SOURCES`, taken from
  verl's ``default_compute_score`` (``verl/utils/reward_score/__init__.py``;
  the TP-Schedule fork adds ``OpenReasoning``); an unknown source is a bad row
  naming it and the known ones, never a guess.  The prompt text is the one user
  turn; a system turn is kept in ``meta["system"]`` (the chat template is
  applied later to the user turn only), a multi-turn prompt is a bad row.
* ``columns``: any file with a prompt column and an answer column, named by
  ``prompt_key``/``answer_key`` in the dataset config, one ``verifier`` for all
  rows.  Adapters that take options list them in :data:`ADAPTER_OPTIONS`;
  :func:`bind_adapter` binds them from the ``DatasetConfig``.

Every adapter declares the columns it needs (:func:`required_columns`), so a
Parquet file that lacks one fails at load time, naming the file and the columns
it has (:func:`check_columns`), instead of reporting every row as bad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rlvr.registry import Registry


class DataError(ValueError):
    """A data problem, reported in one line naming the file, the row and the field."""


class FieldError(ValueError):
    """Raised by an adapter: one field of one row is missing, empty or wrong-typed."""

    def __init__(self, field_name: str | None, problem: str) -> None:
        # field_name is None when the row as a whole is unusable (a line that is not JSON).
        super().__init__(f"field '{field_name}': {problem}" if field_name else problem)
        self.field_name = field_name
        self.problem = problem


@dataclass
class Prompt:
    prompt: str  # the question text, before any chat template
    ground_truth: str  # reference answer handed to the verifier
    verifier: str  # name in the verifier registry (rlvr.config.VERIFIERS)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance and dataset extras


def require(row: Mapping[str, Any], name: str, types: tuple[type, ...] = (str,)) -> Any:
    """``row[name]``, checked to be present, of one of ``types`` and (for text) non-empty."""
    if name not in row or row[name] is None:
        raise FieldError(name, "missing")
    value = row[name]
    # bool is an int subclass; a JSON true is never a valid answer or text.
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise FieldError(name, f"expected {expected}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise FieldError(name, "empty")
    return value


def arithmetic_row(row: Mapping[str, Any]) -> Prompt:
    """``{"prompt": "12+7=", "answer": "19"}`` (the form :func:`arithmetic_to_row` writes)."""
    text = require(row, "prompt")
    answer = str(require(row, "answer", (str, int))).strip()
    return Prompt(prompt=text, ground_truth=answer, verifier="arithmetic")


def gsm8k_row(row: Mapping[str, Any]) -> Prompt:
    """GSM8K: ``question``, and the number after ``####`` at the end of ``answer``."""
    question = require(row, "question")
    solution = require(row, "answer")
    if "####" not in solution:
        raise FieldError("answer", "no '####' final-answer marker")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise FieldError("answer", "empty final answer after '####'")
    return Prompt(prompt=question, ground_truth=final, verifier="gsm8k")


def math_row(row: Mapping[str, Any]) -> Prompt:
    """MATH / MATH-500: ``problem``, ``answer``; ``subject``, ``level``, ``unique_id`` go to meta."""
    problem = require(row, "problem")
    answer = str(require(row, "answer", (str, int))).strip()
    meta: dict[str, Any] = {}
    for name, types in (("subject", (str,)), ("level", (int, str)), ("unique_id", (str,))):
        if row.get(name) is not None:
            meta[name] = require(row, name, types)
    return Prompt(prompt=problem, ground_truth=answer, verifier="math", meta=meta)


# verl data_source -> our verifier (verl's default_compute_score: gsm8k.py, math_reward.py,
# math_dapo.py and prime_math.py all score a final math answer).
VERL_SOURCES: dict[str, str] = {
    "openai/gsm8k": "gsm8k",
    "lighteval/MATH": "math",
    "DigitalLearningGmbH/MATH-lighteval": "math",
    "HuggingFaceH4/MATH-500": "math",
    "OpenReasoning": "math",
    "math_dapo": "math",
    "math": "math",
    "math_dapo_reasoning": "math",
    "numina_aops_forum": "math",
    "numina_synthetic_math": "math",
    "numina_amc_aime": "math",
    "numina_synthetic_amc": "math",
    "numina_cn_k12": "math",
    "numina_olympiads": "math",
}


def _ground_truth(value: Any, verifier: str) -> str:
    text = str(value).strip()
    return text.replace(",", "") if verifier == "gsm8k" else text  # as gsm8k_row does


def _prompt_text(row: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """``row[name]`` as prompt text: a string, or the user turn of a chat-message list (+ meta)."""
    messages = require(row, name, (str, list))
    if isinstance(messages, str):
        return messages, {}
    if not messages:
        raise FieldError(name, "empty list of chat messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise FieldError(f"{name}[{i}]", f"expected a {{role, content}} mapping, got {type(msg).__name__}")
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                got = msg.get(key)
                raise FieldError(f"{name}[{i}].{key}", "missing" if got is None else
                                 f"expected str, got {type(got).__name__}")
    roles = [msg["role"] for msg in messages]
    if roles not in (["user"], ["system", "user"]):
        raise FieldError(name, f"expected one user turn (after an optional system turn), got roles {roles}")
    if not messages[-1]["content"].strip():
        raise FieldError(f"{name}[{len(messages) - 1}].content", "empty")
    meta = {"system": messages[0]["content"]} if roles[0] == "system" else {}
    return messages[-1]["content"], meta


def verl_row(row: Mapping[str, Any]) -> Prompt:
    """verl RL Parquet: ``prompt`` (chat messages), ``reward_model.ground_truth``, ``data_source``."""
    source = require(row, "data_source")
    if source not in VERL_SOURCES:
        raise FieldError("data_source", f"unknown data source '{source}'; known: {', '.join(VERL_SOURCES)}")
    verifier = VERL_SOURCES[source]
    text, meta = _prompt_text(row, "prompt")
    reward_model = require(row, "reward_model", (Mapping,))
    try:
        answer = require(reward_model, "ground_truth", (str, int, float))
    except FieldError as exc:
        raise FieldError(f"reward_model.{exc.field_name}", exc.problem) from None
    return Prompt(prompt=text, ground_truth=_ground_truth(answer, verifier), verifier=verifier,
                  meta={"data_source": source, **meta})


def columns_row(row: Mapping[str, Any], prompt_key: str, answer_key: str, verifier: str) -> Prompt:
    """Any table: the prompt (text or chat messages) in ``prompt_key``, the answer in ``answer_key``."""
    text, meta = _prompt_text(row, prompt_key)
    answer = require(row, answer_key, (str, int, float))
    return Prompt(prompt=text, ground_truth=_ground_truth(answer, verifier), verifier=verifier, meta=meta)


RowAdapter = Callable[[Mapping[str, Any]], Prompt]

ADAPTERS: Registry[Callable[..., Prompt]] = Registry("dataset adapter", {
    "arithmetic": arithmetic_row,
    "gsm8k": gsm8k_row,
    "math": math_row,
    "verl": verl_row,
    "columns": columns_row,
})
# Keyword options an adapter takes from its DatasetConfig section (bound by bind_adapter).
ADAPTER_OPTIONS: dict[str, tuple[str, ...]] = {"columns": ("prompt_key", "answer_key", "verifier")}
# Top-level columns each fixed-layout adapter reads (the columns adapter: its two keys).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("prompt", "answer"),
    "gsm8k": ("question", "answer"),
    "math": ("problem", "answer"),
    "verl": ("prompt", "reward_model", "data_source"),
}


def bind_adapter(name: str, cfg: Any = None) -> RowAdapter:
    """The ``row -> Prompt`` function of adapter ``name``; options come from ``cfg`` (a DatasetConfig)."""
    if name not in ADAPTERS:
        raise DataError(f"unknown dataset adapter '{name}'; valid choices: {', '.join(ADAPTERS)}")
    options = ADAPTER_OPTIONS.get(name, ())
    if not options:
        return ADAPTERS.get(name)
    if cfg is None:
        raise DataError(f"dataset adapter '{name}' needs its dataset config ({', '.join(options)})")
    return partial(ADAPTERS.get(name), **{key: getattr(cfg, key) for key in options})


def required_columns(cfg: Any) -> tuple[str, ...]:
    """Top-level columns the adapter of ``cfg`` (a DatasetConfig) reads from every row."""
    if cfg.adapter == "columns":
        return (cfg.prompt_key, cfg.answer_key)
    return REQUIRED_COLUMNS.get(cfg.adapter, ())


def check_columns(cfg: Any, columns: Sequence[str] | None, where: str) -> None:
    """Fail before reading rows when the file at ``where`` lacks a column the adapter needs.

    ``columns`` is the file's schema (``readers.column_names``); None (JSONL: no schema) skips
    the check, and a missing field is then reported row by row.
    """
    if columns is None:
        return
    missing = [name for name in required_columns(cfg) if name not in columns]
    if missing:
        raise DataError(f"{where}: adapter '{cfg.adapter}' needs column(s) {', '.join(map(repr, missing))}; "
                        f"the file has: {', '.join(columns) or '(none)'}")


def arithmetic_to_row(prompt: Prompt) -> dict[str, str]:
    """The file form of a generated arithmetic prompt (read back by :func:`arithmetic_row`)."""
    return {"prompt": prompt.prompt, "answer": prompt.ground_truth}
