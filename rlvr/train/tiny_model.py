"""The CPU model that can learn: a tiny Qwen2 built from code, warm-started on arithmetic.

Design: the end-to-end system needs a policy that loads in vLLM and in
``transformers`` like any HF checkpoint, builds offline in seconds on two CPU
cores, and -- the point of it -- starts bad but not hopeless on the held-out
arithmetic task (greedy accuracy ~10-25%) so that a short GRPO run (8 prompts x
8 samples a step) visibly raises it.  We build a real ``Qwen2ForCausalLM``
(head size 32: vLLM's CPU attention supports none smaller, see
``rlvr.config_checks.VLLM_CPU_HEAD_DIMS``) with a byte-level ``tokenizers``
vocabulary.

Why the warm-start teacher writes answers out.  Stopping a plain supervised
run early does not give RL much to work with: that model is *uniformly* unsure
(its sampled accuracy equals its greedy accuracy), so GRPO must learn the sums
themselves from 64 binary rewards a step -- measured +11 points in 200 steps.
RLVR moves pass@1 fast when the policy already samples the right answer but
prefers another; on real LLMs that is chiefly the answer *format* the verifier
reads.  So the teacher answers one-digit problems bare ("3+4=" -> "7") but
writes bigger ones out ("12+7=" -> "12+7=19") seven times in ten
(``warmstart_direct`` = 0.3), and the first-integer verifier reads "12" there.
Greedy decoding then answers bare only the one-digit problems (about a sixth
of the held-out prompts at ``max_operand`` = 30), while samples take the bare
form ~30% of the time and the sums are mostly learned: RL learns to answer
bare, which carries over to held-out prompts at once, then sharpens the sums.
Measured with the defaults: 18% -> ~40% held-out greedy accuracy after 20
GRPO steps (lr 2e-4), 52-59% after 80.  How soon the sums "click" in the
supervised run varies from seed to seed; AdamW weight decay
(``WARMSTART_WEIGHT_DECAY``) makes it happen within the 1500 steps on every
seed tried (0-3: start 16-20%, after 80 RL steps 56-77%).

The build runs torch on one thread (:func:`_one_thread`), so the weights do not
depend on the core count.  :func:`ensure_model` builds into
``cache_dir/<hash of the TinyModelConfig, the operand range, GENERATOR_VERSION
and BUILD_VERSION>/``: it writes a temporary directory and renames it into
place, so a directory that exists is complete and two processes racing to
build it both end with the same model.

The chain task (``model.tiny.task=chain``, :mod:`rlvr.data.chain`) warm-starts the same model on
step-by-step chains whose teacher stops one step short ``1 - warmstart_direct`` of the time, and
scores held-out greedy accuracy with the task's own verifier.  ``task`` enters the cache key only
when it is not ``single``, so the arithmetic model's key (and its weights) are what they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlvr.config import DataSection, DatasetConfig, ModelConfig, TinyModelConfig
from rlvr.data import GENERATOR_VERSION, Prompt, chain, generate_arithmetic
from rlvr.verifiers import compute_reward

logger = logging.getLogger(__name__)

BUILD_VERSION = 3  # bump when the tokenizer, architecture or warm-start recipe changes
PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, EOS, IM_START, IM_END)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline and printable ASCII
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FIRST_INTEGER = re.compile(r"-?\d+")
ONE_DIGIT = 10  # the teacher answers a problem bare when all its operands are below this
WARMSTART_WEIGHT_DECAY = 0.1  # AdamW decay of the warm start: makes the sums "click" early on every seed
BUILD_INFO = "rlvr_tiny_model.json"  # written next to the weights: config, key, accuracy, build time


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of ``CHARACTERS`` plus the specials; other characters are dropped.

    This is the Qwen2 tokenizer pipeline (NFC, byte-level pre-tokenizer and decoder, BPE) with an
    empty merge list and a 97-byte alphabet.  ``AutoTokenizer`` rebuilds any ``model_type=qwen2``
    checkpoint's tokenizer as ``Qwen2Tokenizer`` from its vocabulary and merges (transformers 5, and
    so vLLM): a WordLevel tokenizer would lose its spaces and newlines there, this one tokenizes
    identically -- including dropping what it cannot encode, as Qwen2's BPE has no unknown token.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    symbols = tuple(byte_level.pre_tokenize_str(ch)[0][0] for ch in CHARACTERS)  # " " -> "Ġ", "\n" -> "Ċ"
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + symbols)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------- model
def build_model(tcfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 of the configured size (seeded by ``tcfg.seed``)."""
    if tcfg.hidden_size % tcfg.num_heads or tcfg.num_heads % tcfg.num_kv_heads:
        raise ValueError(
            f"tiny model: hidden_size ({tcfg.hidden_size}) must divide by num_heads ({tcfg.num_heads}) "
            f"and num_heads by num_kv_heads ({tcfg.num_kv_heads})"
        )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=tcfg.hidden_size,
        intermediate_size=tcfg.intermediate_size,
        num_hidden_layers=tcfg.num_layers,
        num_attention_heads=tcfg.num_heads,
        num_key_value_heads=tcfg.num_kv_heads,
        max_position_embeddings=tcfg.max_position,
        tie_word_embeddings=True,  # as the small Qwen2 checkpoints do; vLLM and transformers both load it
        use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(tcfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


# --------------------------------------------------------------------------- warm start
def teacher_response(prompt: Prompt, direct_share: float, rng: random.Random) -> str:
    """The warm-start teacher's answer: bare ("19") for one-digit problems, else written out ("12+7=19").

    A written-out answer starts with an operand, so the first-integer verifier scores it 0; the
    teacher still answers a bigger problem bare with probability ``direct_share``.
    """
    one_digit = max(prompt.meta["a"], prompt.meta["b"]) < ONE_DIGIT
    if one_digit or rng.random() < direct_share:
        return prompt.ground_truth
    return prompt.prompt + prompt.ground_truth


def sft_batch(pad_id: int, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + response`` rows; the loss (``labels``) covers only the response."""
    width = max(len(prompt) + len(response) for prompt, response in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        input_ids[i, :n] = torch.tensor(prompt + response)
        labels[i, len(prompt) : n] = torch.tensor(response)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def warmstart_corpus(
    tokenizer: PreTrainedTokenizerFast, tcfg: TinyModelConfig, max_operand: int
) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, response ids + EOS)`` for every warm-start example, training part only."""
    n, rng = tcfg.warmstart_steps * tcfg.warmstart_batch, random.Random(tcfg.seed)
    if tcfg.task == "chain":
        prompts = chain.generate_chain(n, seed=tcfg.seed, max_operand=max_operand, heldout=False)
        responses = [chain.teacher_solution(p, tcfg.warmstart_direct, rng) for p in prompts]
    else:
        prompts = generate_arithmetic(n, seed=tcfg.seed, max_operand=max_operand, heldout=False)
        responses = [teacher_response(p, tcfg.warmstart_direct, rng) for p in prompts]
    prompt_ids = tokenizer([p.prompt for p in prompts], add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [(p, r + [tokenizer.eos_token_id]) for p, r in zip(prompt_ids, response_ids)]


def warm_start(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, tcfg: TinyModelConfig, max_operand: int
) -> float:
    """Supervised steps on the teacher's answers to training-part problems; returns the last loss."""
    corpus, batch = warmstart_corpus(tokenizer, tcfg, max_operand), tcfg.warmstart_batch
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tcfg.warmstart_lr, weight_decay=WARMSTART_WEIGHT_DECAY
    )
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(tcfg.warmstart_steps):
        loss = model(**sft_batch(tokenizer.pad_token_id, corpus[step * batch : (step + 1) * batch])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


# --------------------------------------------------------------------------- evaluation
def first_integer_match(response: str, ground_truth: str) -> bool:
    """The arithmetic verifier's rule: the response's first integer equals the ground truth."""
    found = FIRST_INTEGER.search(response)
    return found is not None and found.group() == ground_truth.strip()


@torch.no_grad()
def greedy_accuracy(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[Prompt],
    max_new_tokens: int = 8,
    batch_size: int = 128,
) -> float:
    """Greedy pass@1 with ``transformers.generate`` (prompts used as-is, no chat template)."""
    model.eval()
    correct = 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(
            [p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(_correct(t, p) for t, p in zip(texts, chunk))
    return correct / max(len(prompts), 1)


def _correct(response: str, prompt: Prompt) -> bool:
    if prompt.verifier == "arithmetic":  # the single task, scored as it always was
        return first_integer_match(response, prompt.ground_truth)
    return compute_reward(prompt.verifier, response, prompt.ground_truth) >= 1.0


def heldout_prompts(max_operand: int, task: str = "single") -> list[Prompt]:
    """The default eval set (``DataSection().eval``) of ``task`` at this operand range."""
    eval_cfg = DataSection().eval
    generate = chain.generate_chain if task == "chain" else generate_arithmetic
    return generate(eval_cfg.synthetic_rows, eval_cfg.synthetic_seed, max_operand, heldout=True)


# --------------------------------------------------------------------------- build + cache
def cache_key(tcfg: TinyModelConfig, max_operand: int) -> str:
    tiny = asdict(tcfg)
    if tiny.pop("task") != "single":  # the single task's key predates the field: keep it
        tiny.update(task=tcfg.task, chain_version=chain.CHAIN_VERSION)
    spec = {
        "tiny": tiny,
        "max_operand": max_operand,
        "generator": GENERATOR_VERSION,
        "build": BUILD_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_model(tcfg: TinyModelConfig, max_operand: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Build, warm-start and save model + tokenizer into ``out_dir``; returns the build info."""
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(), _one_thread():  # leave the caller's RNG state alone
        model = build_model(tcfg, tokenizer)
        last_loss = warm_start(model, tokenizer, tcfg, max_operand)
        max_new = 48 if tcfg.task == "chain" else 8
        accuracy = greedy_accuracy(model, tokenizer, heldout_prompts(max_operand, tcfg.task), max_new)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "key": cache_key(tcfg, max_operand),
        "tiny": asdict(tcfg),
        "max_operand": max_operand,
        "generator_version": GENERATOR_VERSION,
        "build_version": BUILD_VERSION,
        "warmstart_last_loss": last_loss,
        "heldout_greedy_accuracy": accuracy,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    Path(out_dir, BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the same weights whatever the core count, and faster for a model this
    small (on 2 busy cores, 2-thread kernels on its tiny matrices ran up to ~50x slower than 1 thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ensure_model(cfg: ModelConfig, max_operand: int = DatasetConfig.max_operand) -> str:
    """An HF checkpoint directory for ``cfg``: ``cfg.path`` itself, or the cached tiny model (built if absent).

    ``max_operand`` is the operand range of the warm-start task; pass ``data.train.max_operand``.
    """
    if cfg.path != "tiny":
        path = os.path.expanduser(cfg.path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"model.path={cfg.path!r} is not an HF checkpoint directory (no config.json)"
            )
        return path
    root = Path(cfg.cache_dir).expanduser()
    final = root / cache_key(cfg.tiny, max_operand)
    if (final / "config.json").is_file():
        logger.info("tiny model: reusing %s", final)
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        info = build_tiny_model(cfg.tiny, max_operand, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the published model is an ordinary directory
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "tiny model: built %s in %.1fs (held-out greedy accuracy %.1f%%, last warm-start loss %.3f)",
        final,
        info["build_seconds"],
        100 * info["heldout_greedy_accuracy"],
        info["warmstart_last_loss"],
    )
    return str(final)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished build into place; losing a race to another builder is fine."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        logger.info("tiny model: %s was built concurrently by another process; using it", final)
