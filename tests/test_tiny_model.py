"""The tiny Qwen2 policy: tokenizer, deterministic build, HF loading, cache, and the warm-start band."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.config import DataSection, DatasetConfig, ModelConfig, TinyModelConfig
from rlvr.data import format_prompt, generate_arithmetic
from rlvr.train.tiny_model import (
    BUILD_INFO,
    EOS,
    PAD,
    _publish,
    build_model,
    build_tiny_model,
    build_tokenizer,
    cache_key,
    ensure_model,
    first_integer_match,
    greedy_accuracy,
    heldout_prompts,
    teacher_response,
)

# Small enough to build in a second or two; head size 32 (vLLM CPU supports 32, not 16).
SMALL = TinyModelConfig(
    hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128, warmstart_steps=30
)
MAX_OPERAND = DatasetConfig.max_operand
# Designed held-out greedy accuracy of the default warm start (measured 0.18; seeds 0-3: 0.16-0.20).
BAND = (0.10, 0.25)


def weights_hash(directory: Path) -> str:
    tensors = load_file(str(directory / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    build_tiny_model(SMALL, MAX_OPERAND, out)
    return out


# --------------------------------------------------------------------------- tokenizer
TEXTS = ["12+7=19", "30-4=26<|endoftext|>", "Janet's ducks lay 16 eggs.\n  She eats 3!", "7+0=7", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_task_text(text):
    tok = build_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    plain = text.replace(EOS, "")
    assert len(ids) == len(plain) + (len(text) != len(plain))  # one token per character, EOS is one token


def test_tokenizer_special_tokens_and_chat_template():
    tok = build_tokenizer()
    assert (tok.pad_token, tok.eos_token) == (PAD, EOS) and tok.pad_token_id != tok.eos_token_id
    assert (
        tok("12+7=", add_special_tokens=True)["input_ids"]
        == tok("12+7=", add_special_tokens=False)["input_ids"]
    )
    # Outside the alphabet: dropped, as Qwen2's BPE (no unknown token) does.
    assert tok("caf\u00e9!")["input_ids"] == tok("caf!")["input_ids"]
    text = format_prompt(tok, "12+7=", chat_template=True)
    assert text == "<|im_start|>user\n12+7=<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- build and load
def test_build_is_deterministic(small_dir, tmp_path):
    again = tmp_path / "again"
    info = build_tiny_model(SMALL, MAX_OPERAND, again)
    assert weights_hash(again) == weights_hash(small_dir)
    assert (
        json.loads((small_dir / BUILD_INFO).read_text())["heldout_greedy_accuracy"]
        == info["heldout_greedy_accuracy"]
    )
    other = build_model(replace(SMALL, seed=1), build_tokenizer()).state_dict()
    base = build_model(SMALL, build_tokenizer()).state_dict()
    assert not torch.equal(other["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_checkpoint_loads_in_transformers(small_dir):
    model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(small_dir)
    reference = build_tokenizer()
    # transformers 5 rebuilds a qwen2 checkpoint's tokenizer as Qwen2Tokenizer (vLLM too): same ids regardless.
    chat = format_prompt(reference, "12+7=", chat_template=True)
    for text in [*TEXTS, chat, "caf\u00e9 \r\n\t x"]:
        assert tok(text)["input_ids"] == reference(text)["input_ids"], text
        assert tok.decode(tok(text)["input_ids"]) == reference.decode(reference(text)["input_ids"])
    assert format_prompt(tok, "12+7=", chat_template=True) == chat
    assert tok.padding_side == "left"
    assert (tok.eos_token_id, tok.pad_token_id) == (reference.eos_token_id, reference.pad_token_id)
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    assert model.config.hidden_size // model.config.num_attention_heads == 32
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # Same weights as the saved file: logits of a fresh load match a second load exactly.
    ids = tok(["12+7="], return_tensors="pt")["input_ids"]
    twin = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    assert torch.equal(model(ids).logits, twin(ids).logits)


def test_batched_greedy_matches_one_by_one_reference(small_dir):
    """Left-padded batched generate must give each prompt the answer it gets alone."""
    model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(small_dir)
    prompts = generate_arithmetic(24, seed=5, max_operand=MAX_OPERAND, heldout=True)
    singles = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p.prompt, return_tensors="pt")["input_ids"]
            start = ids.shape[1]
            for _ in range(8):  # plain greedy loop, no padding, no cache
                next_id = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
                if next_id == tok.eos_token_id:
                    break
            text = tok.decode(ids[0, start:], skip_special_tokens=True)
            singles.append(first_integer_match(text, p.ground_truth))
    assert greedy_accuracy(model, tok, prompts, batch_size=7) == sum(singles) / len(prompts)


# --------------------------------------------------------------------------- warm start
def test_teacher_answers_one_digit_bare_and_writes_out_the_rest():
    rng = random.Random(0)
    small, big = (
        generate_arithmetic(1, 0, 9)[0],
        [p for p in generate_arithmetic(400, 0, 30) if p.meta["a"] >= 10],
    )
    assert all(teacher_response(small, 0.0, rng) == small.ground_truth for _ in range(5))
    answers = [teacher_response(p, 0.2, rng) for p in big]
    bare = sum(a == p.ground_truth for a, p in zip(answers, big)) / len(big)
    assert 0.12 < bare < 0.28
    assert all(a in (p.ground_truth, p.prompt + p.ground_truth) for a, p in zip(answers, big))
    assert not first_integer_match(big[0].prompt + big[0].ground_truth, big[0].ground_truth)


@pytest.mark.parametrize(
    "response, truth, ok",
    [
        ("19", "19", True),
        (" 19<|x|>", "19", True),
        ("19 20", "19", True),
        ("190", "19", False),
        ("12+7=19", "19", False),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("", "0", False),
        ("x", "0", False),
    ],
)
def test_first_integer_match(response, truth, ok):
    assert first_integer_match(response, truth) is ok


def test_default_warm_start_is_in_the_designed_band(tmp_path):
    """The shipped defaults start low but not at zero: room for RL to double it (see the module docstring)."""
    info = build_tiny_model(TinyModelConfig(), MAX_OPERAND, tmp_path)
    assert BAND[0] <= info["heldout_greedy_accuracy"] <= BAND[1], info
    assert len(heldout_prompts(MAX_OPERAND)) == DataSection().eval.synthetic_rows


# --------------------------------------------------------------------------- ensure_model
def test_ensure_model_builds_once_then_reuses(tmp_path, caplog):
    cfg = ModelConfig(path="tiny", cache_dir=str(tmp_path / "cache"), tiny=SMALL)
    with caplog.at_level(logging.INFO, logger="rlvr.train.tiny_model"):
        first = ensure_model(cfg)
        second = ensure_model(cfg)
    assert first == second == str(tmp_path / "cache" / cache_key(SMALL, MAX_OPERAND))
    messages = [r.getMessage() for r in caplog.records if r.name == "rlvr.train.tiny_model"]
    assert "built" in messages[0] and "reusing" in messages[-1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(first).name]  # no temp dir left behind
    assert ensure_model(ModelConfig(path=first)) == first
    assert cache_key(replace(SMALL, warmstart_steps=31), MAX_OPERAND) != cache_key(SMALL, MAX_OPERAND)
    assert cache_key(SMALL, MAX_OPERAND + 1) != cache_key(SMALL, MAX_OPERAND)


def test_ensure_model_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ensure_model(ModelConfig(path=str(tmp_path / "nowhere")))


def test_publish_tolerates_losing_the_race(tmp_path):
    final, loser = tmp_path / "key", tmp_path / ".key-tmp"
    for d in (final, loser):
        d.mkdir()
        (d / "config.json").write_text(d.name)
    _publish(loser, final)  # another process got there first: keep its copy
    assert (final / "config.json").read_text() == "key"
    with pytest.raises(OSError):
        (tmp_path / "half").mkdir()
        _publish(tmp_path / "missing", tmp_path / "half")
