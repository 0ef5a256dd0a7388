"""`rlvr eval`'s loop: sample n responses per held-out prompt, verify them, record pass@k.

Design: the loop is pure; generation and scoring come in as two callables,
``generate_fn(prompts, n) -> responses`` and ``score_fn([(verifier, response, ground_truth)])
-> (scores, infos)``, so it is tested on CPU with fakes.  ``launch/eval.py`` builds them over
the same pools as training: :class:`EngineGenerate` encodes and seeds prompts exactly as the
RL loop does (one seed formula, :func:`rlvr.rollout.engine.request_seeds`; one sharding,
:meth:`rlvr.loop.groups.RolloutGroup.generate`), with prompt ``i`` of the evaluation in
stream ``EVAL_STREAM``, so an evaluation does not depend on the chunk size or the number of
engines.  A prompt longer than ``rollout.max_model_len - rollout.max_tokens`` tokens keeps
its last tokens (the question comes last), with a warning.  Prompts are consumed from an
iterator in chunks and every scored sample is appended (and flushed) to ``samples.jsonl``
at once, so a malformed row or a crash later never loses what was already scored;
``summary.json`` is written at the end (and, marked ``"complete": false``, when the input
fails part-way).  The metrics are :mod:`rlvr.tools.passk`.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from rlvr.tools.passk import summarize

GenerateFn = Callable[[List[str], int], List[List[str]]]
ScoreFn = Callable[[List[Tuple[str, str, str]]], Tuple[List[float], List[str]]]

PROMPT_FIELDS = ("prompt", "ground_truth", "verifier")


class EvalInputError(ValueError):
    """A prompt handed to :func:`run_eval` lacks a field; names the row and the field."""


def _as_fields(item: Any, row: int) -> Dict[str, Any]:
    """A ``Prompt`` (rlvr.data) or a mapping, as a dict; a missing field names the (1-based) row."""
    get = item.get if isinstance(item, Mapping) else lambda name, default=None: getattr(item, name, default)
    fields = {name: get(name) for name in PROMPT_FIELDS}
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            problem = "missing" if value is None else f"expected a non-empty string, got {value!r}"
            raise EvalInputError(f"prompt row {row}: field '{name}': {problem}")
    fields["meta"] = dict(get("meta") or {})
    return fields


def _take(prompts: Iterator, size: int, start: int) -> Tuple[List[Dict[str, Any]], Optional[BaseException]]:
    """Up to ``size`` prompts; an error from the iterator is returned, with what came before it."""
    chunk: List[Dict[str, Any]] = []
    try:
        for item in itertools.islice(prompts, size):
            chunk.append(_as_fields(item, start + len(chunk) + 1))
    except Exception as exc:  # noqa: BLE001 - re-raised by run_eval once the chunk is saved
        return chunk, exc
    return chunk, None


def _score_chunk(chunk: List[Dict], start: int, n: int, generate_fn: GenerateFn, score_fn: ScoreFn,
                 threshold: float) -> List[Dict[str, Any]]:
    responses = generate_fn([p["prompt"] for p in chunk], n)
    if len(responses) != len(chunk) or any(len(r) != n for r in responses):
        raise RuntimeError(f"generate_fn returned {[len(r) for r in responses]} responses, "
                           f"expected {len(chunk)} prompts x {n}")
    samples = [(i, j, p, r) for i, (p, rs) in enumerate(zip(chunk, responses)) for j, r in enumerate(rs)]
    scores, infos = score_fn([(p["verifier"], r, p["ground_truth"]) for _, _, p, r in samples])
    if len(scores) != len(samples) or len(infos) != len(samples):
        raise RuntimeError(f"score_fn returned {len(scores)} scores / {len(infos)} infos "
                           f"for {len(samples)} samples")
    return [{"index": start + i, "sample": j, **p, "response": r, "score": float(score),
             "correct": float(score) >= threshold, "info": info}
            for (i, j, p, r), score, info in zip(samples, scores, infos)]


def run_eval(
    prompts: Iterable[Any],
    generate_fn: GenerateFn,
    score_fn: ScoreFn,
    n: int,
    ks: Sequence[int],
    out_dir: str,
    *,
    chunk_size: int = 64,
    threshold: float = 1.0,
    show_progress: bool = True,
) -> Dict[str, Any]:
    """Evaluate ``prompts`` (``Prompt`` objects or mappings with prompt/ground_truth/verifier[/meta]).

    ``prompts`` may be a lazy iterator that raises part-way (a malformed row): the prompts
    read before the error are still scored and saved, ``summary.json`` is written with
    ``"complete": false`` and the error is re-raised.  A failing ``generate_fn``/``score_fn``
    loses only its own chunk.  ``samples.jsonl`` starts empty.
    """
    from rlvr.loop.progress import progress

    if any(k < 1 or k > n for k in ks):
        raise ValueError(f"every k must be in [1, n={n}], got ks={list(ks)}")
    os.makedirs(out_dir, exist_ok=True)
    samples_path, summary_path = os.path.join(out_dir, "samples.jsonl"), os.path.join(out_dir, "summary.json")
    records: List[Dict[str, Any]] = []
    error: Optional[BaseException] = None
    iterator = iter(prompts)
    total = len(prompts) if hasattr(prompts, "__len__") else None
    done = 0  # prompts scored so far; also the index of the next prompt
    with open(samples_path, "w", encoding="utf-8") as out, progress(total, "eval", show_progress) as bar:
        while error is None:
            chunk, error = _take(iterator, chunk_size, done)
            if not chunk:
                break
            try:
                new = _score_chunk(chunk, done, n, generate_fn, score_fn, threshold)
            except BaseException as exc:  # a backend failure (or ^C) still leaves a partial summary
                error = exc
                break
            out.writelines(json.dumps(r, default=str) + "\n" for r in new)
            out.flush()
            records.extend(new)
            done += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix({"pass@1": sum(r["correct"] for r in records) / len(records)})
    summary = {"complete": error is None, "n": n, "ks": sorted({1, *ks}), "threshold": threshold,
               **summarize(records, ks, threshold)}
    if error is not None:
        summary["error"] = str(error)
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    if error is not None:
        raise error
    return summary


# --------------------------------------------------------------------------- generation
class EngineGenerate:
    """``generate_fn`` over a :class:`rlvr.loop.groups.RolloutGroup`: encode, truncate, seed, generate."""

    def __init__(self, cfg: Any, tokenizer: Any, rollouts: Any):
        self.cfg, self.tokenizer, self.rollouts = cfg, tokenizer, rollouts
        self.max_prompt_tokens = cfg.rollout.max_model_len - cfg.rollout.max_tokens  # >= 1 (config check)
        self.done = 0  # prompts generated so far: the index of the next one
        self.truncated = 0

    def __call__(self, texts: List[str], n: int) -> List[List[str]]:
        from rlvr.data import encode_prompts
        from rlvr.rollout.engine import EVAL_STREAM, request_seeds

        ids = encode_prompts(self.tokenizer, texts, self.cfg.data.chat_template)
        long = sum(len(p) > self.max_prompt_tokens for p in ids)
        if long:
            self.truncated += long
            print(f"rlvr eval: {long} of {len(ids)} prompts exceed rollout.max_model_len - rollout.max_tokens = "
                  f"{self.max_prompt_tokens} tokens; kept their last {self.max_prompt_tokens}", file=sys.stderr)
        ids = [p[-self.max_prompt_tokens:] for p in ids]
        seeds = request_seeds(self.cfg.seed, EVAL_STREAM, len(ids), start=self.done)
        samples = self.rollouts.generate(ids, n, self.cfg.eval.temperature, seeds)
        self.done += len(ids)
        return [[s.text for s in samples[i * n:(i + 1) * n]] for i in range(len(ids))]
