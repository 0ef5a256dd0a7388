"""Datasets users already have: verl's RL Parquet layout and named columns (``rlvr.data.adapters``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.config import ConfigError, DatasetConfig, load_config
from rlvr.data import DataError, Prompt, load_dataset, read_prompts
from rlvr.data.adapters import VERL_SOURCES, bind_adapter, check_columns
from rlvr.data.readers import column_names

def verl_record(source: str, question: str, truth, system: str | None = None) -> dict:
    """One row of verl's RL Parquet layout, as verl's examples/data_preprocess scripts write it."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"data_source": source, "prompt": messages, "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"split": "train", "index": 0}}


VERL_ROWS = [
    verl_record("openai/gsm8k", "Natalia sold 48 clips. How many?", "1,450"),
    verl_record("lighteval/MATH", "What is $\\frac{1}{2}+\\frac{1}{3}$?", "\\frac{5}{6}", system="Reason step by step."),
    verl_record("math_dapo", "Find x if 2x = 34.", "17"),
    verl_record("OpenReasoning", "AIME-like question?", "204"),
]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_parquet_rows(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", VERL_ROWS)
    assert pq.read_schema(path).field("prompt").type.value_type.num_fields == 2  # list<struct<content, role>>
    prompts = load_dataset(DatasetConfig(adapter="verl", path=str(path)), on_bad_row="fail")
    got = [(p.prompt, p.ground_truth, p.verifier) for p in prompts]
    assert got == [
        ("Natalia sold 48 clips. How many?", "1450", "gsm8k"),  # thousands separator dropped, as gsm8k_row
        ("What is $\\frac{1}{2}+\\frac{1}{3}$?", "\\frac{5}{6}", "math"),  # LaTeX kept verbatim
        ("Find x if 2x = 34.", "17", "math"),
        ("AIME-like question?", "204", "math"),
    ]
    assert prompts[1].meta == {"data_source": "lighteval/MATH", "system": "Reason step by step.",
                               "source": "train.parquet", "row": 2}
    assert prompts[0].meta == {"data_source": "openai/gsm8k", "source": "train.parquet", "row": 1}


def test_verl_sources_map_to_registered_verifiers():
    assert set(VERL_SOURCES.values()) <= {"gsm8k", "math"}
    assert VERL_SOURCES["DigitalLearningGmbH/MATH-lighteval"] == "math"


def test_verl_integer_ground_truth_and_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(verl_record("openai/gsm8k", "2+2?", 4)) + "\n")
    [prompt] = load_dataset(DatasetConfig(adapter="verl", path=str(path)), on_bad_row="fail")
    assert (prompt.prompt, prompt.ground_truth, prompt.verifier) == ("2+2?", "4", "gsm8k")


VERL_BAD = [  # (row, what the report names)
    (verl_record("my/private_set", "q?", "1"),
     "field 'data_source': unknown data source 'my/private_set'; known: openai/gsm8k, lighteval/MATH"),
    ({**verl_record("math", "q?", "1"), "reward_model": {"style": "rule", "ground_truth": None}},
     "field 'reward_model.ground_truth': missing"),
    ({**verl_record("math", "q?", "1"), "prompt": [{"role": "user", "content": "q?"},
                                                   {"role": "assistant", "content": "a"}]},
     "field 'prompt': expected one user turn (after an optional system turn), got roles ['user', 'assistant']"),
    ({**verl_record("math", "q?", "1"), "prompt": [{"role": "user", "content": None}]},
     "field 'prompt[0].content': missing"),
    ({**verl_record("math", "q?", "1"), "prompt": [{"role": "user", "content": "  "}]},
     "field 'prompt[0].content': empty"),
    ({**verl_record("math", "q?", "1"), "data_source": None}, "field 'data_source': missing"),
]


@pytest.mark.parametrize("bad, report", VERL_BAD)
def test_verl_bad_row_names_file_row_and_field(tmp_path, bad, report):
    rows = [verl_record("math", "good?", "1"), bad]
    path = tmp_path / "verl.jsonl"  # JSONL: each row keeps its own shape (Parquet would unify the structs)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(adapter="verl", path=str(path))
    with pytest.raises(DataError) as info:
        load_dataset(cfg, on_bad_row="fail")
    assert str(info.value).startswith(f"{path} row 2: {report}")
    assert [p.prompt for p in load_dataset(cfg, on_bad_row="skip")] == ["good?"]


def test_verl_bad_parquet_rows_are_skipped_and_reported(tmp_path, caplog):
    rows = [VERL_ROWS[0], verl_record("unknown_source", "q?", "1"),
            {**VERL_ROWS[2], "reward_model": {"style": "rule", "ground_truth": None}}, VERL_ROWS[3]]
    path = write_parquet(tmp_path / "mixed.parquet", rows)
    with caplog.at_level(logging.WARNING, logger="rlvr.data"):
        prompts = load_dataset(DatasetConfig(adapter="verl", path=str(path)), on_bad_row="skip")
    assert [(p.meta["row"], p.ground_truth) for p in prompts] == [(1, "1450"), (4, "204")]
    warnings = " | ".join(r.getMessage() for r in caplog.records)
    assert "mixed.parquet row 2: field 'data_source': unknown data source 'unknown_source'" in warnings
    assert "mixed.parquet row 3: field 'reward_model.ground_truth': missing" in warnings
    assert "skipped 2 malformed row(s), kept 2" in warnings


def columns_cfg(path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(adapter="columns", path=str(path), **kw)


def read_columns(cfg: DatasetConfig, on_bad_row: str = "fail") -> list[Prompt]:
    """What load_dataset does for an adapter with options: check the schema, then read the rows."""
    path = Path(cfg.path)
    check_columns(cfg, column_names(path), str(path))
    return read_prompts(path, bind_adapter(cfg.adapter, cfg), on_bad_row, cfg.limit)


def test_columns_adapter_reads_the_named_columns(tmp_path):
    rows = [{"id": 1, "question_text": "What is 6*7?", "final": "42"},
            {"id": 2, "question_text": "What is 1000*1000?", "final": "1,000,000"},
            {"id": 3, "question_text": "What is 2**3?", "final": "8"}]
    path = write_parquet(tmp_path / "mine.parquet", rows)
    cfg = columns_cfg(path, prompt_key="question_text", answer_key="final", verifier="gsm8k")
    got = [(p.prompt, p.ground_truth, p.verifier, p.meta["row"]) for p in read_columns(cfg)]
    assert got == [("What is 6*7?", "42", "gsm8k", 1), ("What is 1000*1000?", "1000000", "gsm8k", 2),
                   ("What is 2**3?", "8", "gsm8k", 3)]


def test_columns_adapter_int_answers_and_chat_prompts(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "1+1?"}], "label": 2},
            {"messages": [{"role": "user", "content": "x^2=4, x>0?"}], "label": 2}]
    path = write_parquet(tmp_path / "chat.parquet", rows)
    prompts = read_columns(columns_cfg(path, prompt_key="messages", answer_key="label", verifier="math"))
    assert [(p.prompt, p.ground_truth, p.verifier) for p in prompts] == [("1+1?", "2", "math"), ("x^2=4, x>0?", "2", "math")]


def test_columns_bad_rows_name_the_configured_column(tmp_path):
    rows = [{"q": "ok?", "a": "1"}, {"q": "no answer", "a": None}, {"q": "", "a": "3"}]
    path = write_parquet(tmp_path / "cols.parquet", rows)
    cfg = columns_cfg(path, prompt_key="q", answer_key="a")
    with pytest.raises(DataError, match=r"cols.parquet row 2: field 'a': missing"):
        read_columns(cfg)
    assert [p.prompt for p in read_columns(cfg, on_bad_row="skip")] == ["ok?"]


def test_missing_column_fails_before_reading_naming_file_and_columns(tmp_path):
    path = write_parquet(tmp_path / "cols.parquet", [{"question": "q?", "solution": "s", "answer": "1"}])
    cfg = columns_cfg(path, prompt_key="problem", answer_key="answer")
    with pytest.raises(DataError) as info:
        read_columns(cfg)
    assert str(info.value) == (f"{path}: adapter 'columns' needs column(s) 'problem'; "
                               "the file has: question, solution, answer")
    verl_cfg = DatasetConfig(adapter="verl", path=str(path))
    with pytest.raises(DataError, match="needs column\\(s\\) 'prompt', 'reward_model', 'data_source'; the file has"):
        check_columns(verl_cfg, column_names(path), str(path))
    check_columns(cfg, column_names(tmp_path / "rows.jsonl"), "rows.jsonl")  # JSONL: no schema, checked per row
    assert column_names(tmp_path / "absent.parquet") is None
    (tmp_path / "text.parquet").write_text("not parquet")
    assert column_names(tmp_path / "text.parquet") is None  # left to read_parquet to report


def test_columns_adapter_needs_its_config():
    with pytest.raises(DataError, match="adapter 'columns' needs its dataset config"):
        bind_adapter("columns")
    bound = bind_adapter("columns", DatasetConfig(adapter="columns", prompt_key="p", answer_key="a"))
    assert bound({"p": "q?", "a": "x"}) == Prompt(prompt="q?", ground_truth="x", verifier="math")


def test_columns_config_keys_load_and_validate(tmp_path):
    cfg = load_config([], ["data.train.adapter=columns", "data.train.path=/data/mine.parquet",
                           "data.train.prompt_key=question_text", "data.train.answer_key=final",
                           "data.train.verifier=gsm8k"])
    ds = cfg.data.train
    assert (ds.adapter, ds.prompt_key, ds.answer_key, ds.verifier) == ("columns", "question_text", "final", "gsm8k")
    assert (DatasetConfig().prompt_key, DatasetConfig().answer_key, DatasetConfig().verifier) == ("prompt", "answer", "math")
    with pytest.raises(ConfigError, match="valid choices: arithmetic, gsm8k, math"):
        load_config([], ["data.train.verifier=code"])
    empty_key = tmp_path / "empty_key.yaml"
    empty_key.write_text('data:\n  train: {adapter: columns, path: x.parquet, prompt_key: ""}\n')
    with pytest.raises(ConfigError, match="data.train: adapter=columns needs non-empty prompt_key"):
        load_config([str(empty_key)])
