"""Data layer: adapters on real rows, malformed-row reports, readers, the arithmetic task, the sampler."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.config import DATASETS, DataSection, DatasetConfig
from rlvr.data import (
    ADAPTERS,
    DataError,
    Prompt,
    PromptSampler,
    arithmetic_to_row,
    format_prompt,
    generate_arithmetic,
    is_heldout,
    load_dataset,
)
from rlvr.data.arithmetic import HELDOUT_EVERY, make_prompt, problem_space
from rlvr.data.readers import read_jsonl, read_parquet

SHARED_DATA = Path(__file__).resolve().parent / "data" / "eval"
GSM8K = SHARED_DATA / "gsm8k_test.jsonl"
MATH500 = SHARED_DATA / "math500_test.jsonl"
MALFORMED = Path(__file__).resolve().parent / "data" / "gsm8k_malformed.jsonl"
# (row, field named in the report) of every bad row in the fixture; line 7 is blank and skipped.
MALFORMED_ROWS = [
    (2, "'answer': missing"),
    (3, "'answer': expected str, got int"),
    (4, "'question': empty"),
    (5, "invalid JSON"),
    (6, "expected a JSON object, got list"),
    (9, "'answer': no '####'"),
]


def gsm8k(path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(adapter="gsm8k", path=str(path), **kw)


# --------------------------------------------------------------------------- adapters on real rows
def test_adapter_registry_is_exactly_the_config_names():
    assert tuple(ADAPTERS) == DATASETS


def test_gsm8k_real_rows():
    prompts = load_dataset(gsm8k(GSM8K), on_bad_row="fail")
    assert len(prompts) == 1319
    first = prompts[0]
    assert first.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert (first.ground_truth, first.verifier) == ("18", "gsm8k")
    assert first.meta == {"source": "gsm8k_test.jsonl", "row": 1}
    assert prompts[2].ground_truth == "70000"
    assert prompts[146].ground_truth == "2125"  # "#### 2,125": thousands separator dropped
    assert all(p.ground_truth.lstrip("-").replace(".", "").isdigit() for p in prompts)


def test_math500_real_rows():
    prompts = load_dataset(DatasetConfig(adapter="math", path=str(MATH500)), on_bad_row="fail")
    assert len(prompts) == 500
    first, second = prompts[0], prompts[1]
    assert first.prompt.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert first.ground_truth == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.verifier == "math"
    assert first.meta == {
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
        "source": "math500_test.jsonl",
        "row": 1,
    }
    assert (second.ground_truth, second.meta["subject"], second.meta["level"]) == (
        "p - q",
        "Intermediate Algebra",
        5,
    )


def test_limit_stops_early():
    prompts = load_dataset(gsm8k(GSM8K, limit=3), on_bad_row="fail")
    assert [p.meta["row"] for p in prompts] == [1, 2, 3]


# --------------------------------------------------------------------------- malformed rows
def test_malformed_row_fails_naming_file_row_and_field():
    with pytest.raises(DataError) as info:
        load_dataset(gsm8k(MALFORMED), on_bad_row="fail")
    message = str(info.value)
    assert "gsm8k_malformed.jsonl row 2: field 'answer': missing" in message


def test_malformed_rows_skipped_and_each_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="rlvr.data"):
        prompts = load_dataset(gsm8k(MALFORMED), on_bad_row="skip")
    assert [(p.meta["row"], p.ground_truth) for p in prompts] == [(1, "7"), (8, "2000")]
    warnings = [r.getMessage() for r in caplog.records]
    for row, field in MALFORMED_ROWS:
        assert any(f"gsm8k_malformed.jsonl row {row}: " in w and field in w for w in warnings), (row, field)
    assert "skipped 6 malformed row(s), kept 2" in warnings[-1]


@pytest.mark.parametrize("row, problem", MALFORMED_ROWS)
def test_each_malformed_row_fails_alone(tmp_path, row, problem):
    lines = MALFORMED.read_text().splitlines()
    path = tmp_path / "one.jsonl"
    path.write_text(lines[0] + "\n" + lines[row - 1] + "\n")
    with pytest.raises(DataError, match=f"one.jsonl row 2: .*{problem}"):
        load_dataset(gsm8k(path), on_bad_row="fail")


def test_malformed_parquet_row_is_named(tmp_path):
    path = tmp_path / "math.parquet"
    rows = [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "2+2?", "answer": None},
        {"problem": "", "answer": "1"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = DatasetConfig(adapter="math", path=str(path))
    with pytest.raises(DataError, match=r"math.parquet row 2: field 'answer': missing"):
        load_dataset(cfg, on_bad_row="fail")
    assert [p.ground_truth for p in load_dataset(cfg, on_bad_row="skip")] == ["2"]


def test_file_and_name_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(gsm8k(tmp_path / "absent.jsonl"))
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_dataset(gsm8k(tmp_path / "rows.csv"))
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(DatasetConfig(adapter="gsm8k"))
    with pytest.raises(ValueError, match="valid choices: skip, fail"):
        load_dataset(DatasetConfig(), on_bad_row="ignore")
    with pytest.raises(DataError, match="valid choices: arithmetic, gsm8k, math"):
        load_dataset(replace(gsm8k(GSM8K), adapter="gsm8"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 1}\n')
    with pytest.raises(DataError, match="no usable rows"):
        load_dataset(gsm8k(bad), on_bad_row="skip")


# --------------------------------------------------------------------------- readers
def test_jsonl_and_parquet_readers_agree(tmp_path):
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    parquet = tmp_path / "math500.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=64)
    # Batch sizes that do not divide the row count or each other: boundaries must not lose or shift rows.
    from_jsonl = [pair for batch in read_jsonl(MATH500, batch_rows=37) for pair in batch]
    from_parquet = [pair for batch in read_parquet(parquet, batch_rows=50) for pair in batch]
    assert from_jsonl == from_parquet == list(enumerate(rows, start=1))
    a = load_dataset(DatasetConfig(adapter="math", path=str(MATH500)), on_bad_row="fail")
    b = load_dataset(DatasetConfig(adapter="math", path=str(parquet)), on_bad_row="fail")
    strip = lambda ps: [(p.prompt, p.ground_truth, p.verifier, p.meta["level"], p.meta["row"]) for p in ps]
    assert strip(a) == strip(b)


def test_jsonl_row_numbers_are_line_numbers():
    numbers = [row for batch in read_jsonl(MALFORMED, batch_rows=4) for row, _ in batch]
    assert numbers == [1, 2, 3, 4, 5, 6, 8, 9]  # line 7 is blank


# --------------------------------------------------------------------------- arithmetic task
def test_arithmetic_is_deterministic_and_correct():
    a = generate_arithmetic(500, seed=7, max_operand=30)
    assert a == generate_arithmetic(500, seed=7, max_operand=30)
    assert [p.prompt for p in a] != [p.prompt for p in generate_arithmetic(500, seed=8, max_operand=30)]
    for p in a:
        x, y = (int(s) for s in p.prompt[:-1].split(p.meta["op"]))
        expected = x + y if p.meta["op"] == "+" else x - y
        assert p.prompt.endswith("=") and (x, y) == (p.meta["a"], p.meta["b"])
        assert p.ground_truth == str(expected) and expected >= 0 and max(x, y) <= 30
        assert p.verifier == "arithmetic" and not p.meta["heldout"]


def test_problem_space_counts():
    # 21*21 additions and 21*22/2 subtractions with a >= b.
    assert len(problem_space(20)) == 441 + 231
    p = make_prompt(12, "-", 7)
    assert (p.prompt, p.ground_truth, p.meta) == (
        "12-7=",
        "5",
        {"a": 12, "op": "-", "b": 7, "heldout": is_heldout("12-7=")},
    )


def test_train_and_eval_never_share_a_prompt():
    section = DataSection()
    train = {p.prompt for p in load_dataset(section.train)}
    held = load_dataset(section.eval)
    assert len(held) == section.eval.synthetic_rows
    assert len({p.prompt for p in held}) == len(held)  # no repeats while the held-out part lasts
    assert train.isdisjoint(p.prompt for p in held)
    assert all(is_heldout(p.prompt) for p in held) and not any(is_heldout(t) for t in train)
    share = sum(is_heldout(f"{a}{op}{b}=") for a, op, b in problem_space(30)) / len(problem_space(30))
    assert abs(share - 1 / HELDOUT_EVERY) < 0.03


def test_arithmetic_cycles_evenly_past_its_pool():
    pool = generate_arithmetic(10_000, seed=0, max_operand=3, heldout=False)
    counts = {}
    for p in pool:
        counts[p.prompt] = counts.get(p.prompt, 0) + 1
    assert max(counts.values()) - min(counts.values()) <= 1


def test_arithmetic_file_round_trip(tmp_path):
    prompts = generate_arithmetic(50, seed=3, max_operand=30)
    path = tmp_path / "arith.jsonl"
    path.write_text("".join(json.dumps(arithmetic_to_row(p)) + "\n" for p in prompts))
    loaded = load_dataset(DatasetConfig(adapter="arithmetic", path=str(path)), on_bad_row="fail")
    assert [(p.prompt, p.ground_truth, p.verifier) for p in loaded] == [
        (p.prompt, p.ground_truth, p.verifier) for p in prompts
    ]


def test_generated_dataset_respects_limit():
    cfg = DatasetConfig(synthetic_rows=100, synthetic_seed=4, limit=10)
    assert load_dataset(cfg) == generate_arithmetic(100, 4, cfg.max_operand)[:10]


# --------------------------------------------------------------------------- format_prompt
def test_format_prompt_without_template_is_identity():
    assert format_prompt(object(), "12+7=", chat_template=False) == "12+7="


def test_format_prompt_requires_a_template():
    class NoTemplate:
        chat_template = None

    with pytest.raises(DataError, match="no chat template"):
        format_prompt(NoTemplate(), "12+7=", chat_template=True)


# --------------------------------------------------------------------------- sampler
def prompts_for(n: int) -> list[Prompt]:
    return [Prompt(prompt=f"q{i}", ground_truth=str(i), verifier="arithmetic") for i in range(n)]


def names(batches: list[list[Prompt]]) -> list[list[str]]:
    return [[p.prompt for p in batch] for batch in batches]


def test_sampler_is_seeded_and_epoch_wise():
    data = prompts_for(12)
    one = PromptSampler(data, prompts_per_step=4, seed=3)
    batches = names([one.next_batch() for _ in range(6)])
    again = PromptSampler(data, prompts_per_step=4, seed=3)
    assert names([again.next_batch() for _ in range(6)]) == batches
    other = PromptSampler(data, prompts_per_step=4, seed=4)
    assert names([other.next_batch() for _ in range(6)]) != batches
    epoch0 = [name for batch in batches[:3] for name in batch]
    epoch1 = [name for batch in batches[3:] for name in batch]
    assert sorted(epoch0) == sorted(epoch1) == sorted(p.prompt for p in data)  # each epoch visits all once
    assert epoch0 != epoch1  # and reshuffles
    assert one.state_dict() == {"seed": 3, "num_prompts": 12, "epoch": 1, "position": 12}


def test_sampler_resume_yields_identical_continuation():
    data = prompts_for(10)
    original = PromptSampler(data, prompts_per_step=3, seed=0)
    for _ in range(5):  # 15 prompts: mid-way through epoch 1
        original.next_batch()
    state = json.loads(json.dumps(original.state_dict()))  # survives a JSON checkpoint
    resumed = PromptSampler(data, prompts_per_step=3, seed=0)
    resumed.load_state_dict(state)
    assert names([resumed.next_batch() for _ in range(9)]) == names([original.next_batch() for _ in range(9)])


def test_sampler_rejects_a_foreign_state():
    sampler = PromptSampler(prompts_for(10), prompts_per_step=3, seed=0)
    with pytest.raises(ValueError, match="saved for seed=0 over 11 prompts"):
        sampler.load_state_dict({"seed": 0, "num_prompts": 11, "epoch": 0, "position": 0})
    with pytest.raises(ValueError):
        PromptSampler([], prompts_per_step=1, seed=0)
