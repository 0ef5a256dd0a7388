"""`rlvr eval`: sample n responses per held-out prompt, verify them, report pass@k.

Design: the metrics and the loop are pure; the rollout engine and the reward
pool come in as two callables, ``generate_fn(prompts, n) -> responses`` and
``score_fn([(verifier, response, ground_truth)]) -> (scores, infos)``, so the
loop is tested on CPU with fakes and :func:`_build_backends` is the only place
that knows about Ray: it starts the same ``RolloutWorker``s (vLLM) and
``RewardPool`` as training (``rlvr.runtime.create_serving_actors``), with a
per-request sampling seed derived from the run seed and the prompt's index, so
an evaluation does not depend on the chunk size or the number of workers.
CHECKPOINT is an HF model directory, ``tiny`` (the built CPU model), or an
rlvr run checkpoint ``runs/NAME/checkpoints/step_N``: its trainers' sharded
DCP model state is consolidated once into ``step_N/hf`` (an HF directory of
the base model named in the saved config, written atomically) and served from
there.  A prompt longer than ``rollout.max_model_len - rollout.max_tokens``
tokens keeps its last tokens (the question comes last), with a warning.  Prompts are consumed from an iterator in chunks and
every scored sample is appended (and flushed) to ``samples.jsonl`` at once, so
a malformed row or a crash later never loses what was already scored;
``summary.json`` is written at the end (and, marked ``"complete": false``, when
the input fails part-way).

pass@k uses the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code"), 1 - C(n-c, k) / C(n, k), in its product
form so large n never overflows.  A sample counts as correct when its score is
at least ``threshold`` (1.0: verifiers give 1 for a right answer, plus an
optional format bonus).  mean@n is the mean raw score over all samples.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

GenerateFn = Callable[[List[str], int], List[List[str]]]
ScoreFn = Callable[[List[Tuple[str, str, str]]], Tuple[List[float], List[str]]]

PROMPT_FIELDS = ("prompt", "ground_truth", "verifier")
ENGINE_DIR = "~/.cache/rlvr/eval"  # vLLM caches and sockets of the evaluation engines (see rlvr.rollout.engine_env)


class EvalInputError(ValueError):
    """A prompt handed to :func:`run_eval` lacks a field; names the row and the field."""


class CheckpointError(ValueError):
    """CHECKPOINT is not something ``rlvr eval`` can serve; says what it lacks."""


# --------------------------------------------------------------------------- metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_at_k(scores: Sequence[float], k: int) -> float:
    """Mean score of the first ``k`` samples of one prompt (mean@k, a.k.a. avg@k)."""
    if not 1 <= k <= len(scores):
        raise ValueError(f"mean_at_k needs 1 <= k <= {len(scores)} samples, got k={k}")
    return sum(scores[:k]) / k


def _metrics(groups: Sequence[Sequence[Mapping[str, Any]]], ks: Sequence[int], threshold: float) -> Dict:
    """pass@k and mean@n averaged over prompts; ``groups`` holds each prompt's sample records."""
    n = min(len(g) for g in groups)
    out: Dict[str, Any] = {"num_prompts": len(groups), "num_samples": sum(len(g) for g in groups)}
    for k in sorted({1, *ks}):
        if k > n:
            raise ValueError(f"pass@{k} needs at least {k} samples per prompt, some prompt has {n}")
        per_prompt = [pass_at_k(len(g), sum(_correct(r, threshold) for r in g), k) for g in groups]
        out[f"pass@{k}"] = sum(per_prompt) / len(groups)
    means = [mean_at_k([float(r["score"]) for r in g], len(g)) for g in groups]
    out[f"mean@{n}"] = sum(means) / len(groups)
    return out


def _correct(record: Mapping[str, Any], threshold: float) -> bool:
    return bool(record["correct"]) if "correct" in record else float(record["score"]) >= threshold


def summarize(records: Iterable[Mapping[str, Any]], ks: Sequence[int] = (1,), threshold: float = 1.0) -> Dict:
    """Overall and per-``subject`` / per-``level`` metrics from sample records.

    A record is one sample: ``{"index": prompt index, "score": float, "meta": {...}}`` (``correct``
    optional).  Breakdowns appear when records carry ``meta.subject`` / ``meta.level`` (MATH-500).
    """
    groups: Dict[Any, List[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["index"]].append(record)
    if not groups:
        return {"num_prompts": 0, "num_samples": 0}
    summary = _metrics(list(groups.values()), ks, threshold)
    for field in ("subject", "level"):
        by: Dict[str, List] = defaultdict(list)
        for group in groups.values():
            value = (group[0].get("meta") or {}).get(field)
            if value is not None:
                by[str(value)].append(group)
        if by:
            summary[f"by_{field}"] = {name: _metrics(by[name], ks, threshold) for name in sorted(by)}
    return summary


# --------------------------------------------------------------------------- loop
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
    from rlvr.progress import progress

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


# --------------------------------------------------------------------------- CLI
def _build_backends(cfg: Any, checkpoint: str) -> Tuple[GenerateFn, ScoreFn]:
    """Rollout workers serving ``checkpoint`` and the reward pool, as the two callables of run_eval.

    Starts Ray (``rlvr.runtime.start_ray``).  vLLM's caches (~150 MB of compiler headers on CPU)
    go to one shared ``ENGINE_DIR``, not into every output directory.
    """
    from transformers import AutoTokenizer

    from rlvr.runtime import create_serving_actors, start_ray

    model_path = resolve_checkpoint(checkpoint, cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    start_ray(cfg)
    rollouts, reward = create_serving_actors(cfg, model_path, os.path.expanduser(ENGINE_DIR))

    def score_fn(requests: List[Tuple[str, str, str]]) -> Tuple[List[float], List[str]]:
        return _get(reward.score.remote(requests), lambda: reward.score.remote(requests), "reward pool")

    return EngineGenerate(cfg, tokenizer, rollouts), score_fn


class EngineGenerate:
    """``generate_fn`` over rollout workers: tokenise once, split prompts round-robin, keep order.

    Prompt ``i`` (counted over the whole evaluation) samples with seed ``request_seed(cfg.seed, i)``.
    """

    def __init__(self, cfg: Any, tokenizer: Any, workers: Sequence[Any]):
        self.cfg, self.tokenizer, self.workers = cfg, tokenizer, list(workers)
        self.max_prompt_tokens = cfg.rollout.max_model_len - cfg.rollout.max_tokens
        if self.max_prompt_tokens < 1:
            raise ValueError(f"rollout.max_model_len ({cfg.rollout.max_model_len}) leaves no room for a prompt "
                             f"after rollout.max_tokens ({cfg.rollout.max_tokens})")
        self.done = 0  # prompts generated so far: the index of the next one
        self.truncated = 0

    def __call__(self, texts: List[str], n: int) -> List[List[str]]:
        from rlvr.data import format_prompt

        ids = [self.tokenizer(format_prompt(self.tokenizer, t, self.cfg.data.chat_template))["input_ids"]
               for t in texts]
        long = sum(len(p) > self.max_prompt_tokens for p in ids)
        if long:
            self.truncated += long
            print(f"rlvr eval: {long} of {len(ids)} prompts exceed rollout.max_model_len - rollout.max_tokens = "
                  f"{self.max_prompt_tokens} tokens; kept their last {self.max_prompt_tokens}", file=sys.stderr)
        ids = [p[-self.max_prompt_tokens:] for p in ids]
        seeds = [request_seed(self.cfg.seed, self.done + i) for i in range(len(ids))]
        shards = [range(len(ids))[w::len(self.workers)] for w in range(len(self.workers))]
        temperature = self.cfg.eval.temperature

        def call(worker, shard):
            return worker.generate.remote([ids[i] for i in shard], n, temperature, [seeds[i] for i in shard])

        refs = [call(w, s) for w, s in zip(self.workers, shards)]
        responses: List[List[str]] = [[] for _ in ids]
        for worker, shard, ref in zip(self.workers, shards, refs):
            samples = _get(ref, lambda w=worker, s=shard: call(w, s), "rollout worker")
            for j, sample in enumerate(samples):
                responses[shard[j // n]].append(sample.text)
        self.done += len(ids)
        return responses


def request_seed(run_seed: int, index: int) -> int:
    """vLLM sampling seed of evaluation prompt ``index`` (all n samples of a prompt share one request)."""
    return (run_seed * 1_000_003 + index * 10_007 + 7) % (2**31)


def _get(ref: Any, resubmit: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """``ray.get(ref)``; after a dead actor (Ray restarts it, with the evaluated weights) submit again."""
    import ray

    for attempt in range(attempts):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError:
            if attempt == attempts - 1:
                raise
            print(f"rlvr eval: {what} died; retrying ({attempt + 1}/{attempts - 1})", file=sys.stderr, flush=True)
            ref = resubmit()


# --------------------------------------------------------------------------- checkpoints
def resolve_checkpoint(checkpoint: str, cfg: Any) -> str:
    """An HF directory for CHECKPOINT: itself, the built tiny model, or a consolidated rlvr checkpoint."""
    if checkpoint == "tiny":
        from rlvr.tiny_model import ensure_model

        return ensure_model(cfg.model, cfg.data.train.max_operand)
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
        return checkpoint
    if os.path.isfile(os.path.join(checkpoint, "driver.json")) and os.path.isdir(os.path.join(checkpoint, "trainer")):
        return consolidate(checkpoint)
    raise CheckpointError(f"{checkpoint}: neither an HF model directory (config.json) nor an rlvr checkpoint "
                            f"(driver.json and trainer/), nor 'tiny'")


def consolidate(path: str) -> str:
    """``path/hf``: the trainers' sharded model state (DCP, keys ``model.hf.*``) as an HF directory.

    The architecture and tokenizer come from the saved config's model (for ``tiny``, built from
    code without its warm start: every weight comes from the checkpoint); the directory is written
    beside the checkpoint once (temporary name, then rename) and reused by later evaluations.
    """
    import shutil
    import tempfile

    import torch.distributed.checkpoint as dcp

    final = os.path.join(path, "hf")
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    model, tokenizer = _base_model(_saved_config(path))
    stored = dcp.FileSystemReader(os.path.join(path, "trainer")).read_metadata().state_dict_metadata
    params = model.state_dict()
    wanted = {f"hf.{k}": v for k, v in params.items() if f"model.hf.{k}" in stored}
    loaded = {v.data_ptr() for v in wanted.values()}
    missing = [k for k, v in params.items() if f"hf.{k}" not in wanted and v.data_ptr() not in loaded]  # not tied
    if missing:
        raise CheckpointError(f"{path}/trainer holds no weights for {missing[:5]} of the configured model")
    for key, tensor in wanted.items():  # e.g. a tiny model rebuilt since, with another vocabulary
        if tuple(stored[f"model.{key}"].size) != tuple(tensor.shape):
            raise CheckpointError(f"{path}/trainer: {key[3:]} has shape {tuple(stored[f'model.{key}'].size)}, "
                                  f"the model of the saved config {tuple(tensor.shape)}")
    dcp.load({"model": wanted}, checkpoint_id=os.path.join(path, "trainer"))  # in place, into the model
    tmp = tempfile.mkdtemp(prefix=".hf-", dir=path)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isfile(os.path.join(final, "config.json")):  # unless another process won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _base_model(cfg: Any) -> Tuple[Any, Any]:
    """The (float32 model, tokenizer) a run of ``cfg`` started from, to receive a checkpoint's weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.model.path == "tiny":
        from rlvr.tiny_model import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        return build_model(cfg.model.tiny, tokenizer), tokenizer
    from rlvr.tiny_model import ensure_model

    base = ensure_model(cfg.model)
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), AutoTokenizer.from_pretrained(base)


def _saved_config(path: str) -> Any:
    """The run config stored in a checkpoint's ``driver.json``."""
    from omegaconf import OmegaConf

    from rlvr.checkpoint import read_driver_state
    from rlvr.config import RLConfig

    text = read_driver_state(path).get("config")
    if not text:
        raise CheckpointError(f"{path}/driver.json has no 'config'")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RLConfig), OmegaConf.create(text)))


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _iter_prompts(path: str, adapter: str, limit: Optional[int], on_bad_row: str) -> Iterator[Any]:
    """Prompts of a JSONL file through the dataset adapter; a bad row is reported (skip) or raised (fail)."""
    from rlvr.data.adapters import DataError, FieldError, get_adapter

    to_prompt = get_adapter(adapter)
    yielded = 0
    with open(path, encoding="utf-8") as f:
        for row_no, line in enumerate(f, 1):
            if limit is not None and yielded >= limit:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise FieldError("<row>", f"expected a JSON object, got {type(row).__name__}")
                prompt = to_prompt(row)
            except (json.JSONDecodeError, FieldError) as exc:
                error = DataError(f"{path} row {row_no}: {exc}")
                if on_bad_row == "fail":
                    raise error from None
                print(f"rlvr eval: skipped {error}", file=sys.stderr)
                continue
            prompt.meta.setdefault("row", row_no)
            yielded += 1
            yield prompt


def _parse_ks(text: str) -> List[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got '{text}'") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got '{text}'")
    return ks


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from rlvr.config import DATASETS

    p = argparse.ArgumentParser(prog="rlvr eval", description="pass@k of a checkpoint on held-out prompts.")
    p.add_argument("checkpoint", help="HF model directory, rlvr checkpoint (runs/NAME/checkpoints/step_N), or 'tiny'")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. rollout.max_tokens=512")
    p.add_argument("--data", required=True, help="JSONL file of held-out prompts")
    p.add_argument("--adapter", required=True, choices=DATASETS, help="row format of --data")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--k", type=_parse_ks, default=[1], help="comma-separated k of pass@k, each <= n")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many prompts")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/eval-<data name>)")
    p.add_argument("--config", action="append", default=[], help="YAML config(s) merged before the overrides")
    p.add_argument("--chunk", type=int, default=64, help="prompts generated per call")
    args = p.parse_intermixed_args(list(argv))
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.k[-1] > args.n:
        p.error(f"every --k must be <= --n ({args.n}), got {','.join(map(str, args.k))}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"config overrides are key=value, got {' '.join(bad)}")
    return args


def main(argv: Sequence[str]) -> int:
    from rlvr.config import ConfigError, load_config
    from rlvr.data.adapters import DataError

    args = parse_args(argv)
    data_overrides = [f"data.eval.adapter={args.adapter}", f"data.eval.path={args.data}"]
    if args.limit is not None:
        data_overrides.append(f"data.eval.limit={args.limit}")
    try:
        cfg = load_config(args.config, [*data_overrides, *args.overrides])
    except ConfigError as exc:
        print(f"rlvr eval: {exc}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.data):
        print(f"rlvr eval: data file not found: {args.data}", file=sys.stderr)
        return 2
    if args.n > 1 and cfg.eval.temperature == 0:
        print(f"rlvr eval: warning: --n {args.n} with eval.temperature=0 (greedy) gives identical samples",
              file=sys.stderr)
    data_name = os.path.splitext(os.path.basename(args.data))[0]
    out_dir = args.out or os.path.join(args.checkpoint, f"eval-{data_name}")
    prompts = _iter_prompts(args.data, args.adapter, args.limit, cfg.data.on_bad_row)
    try:
        generate_fn, score_fn = _build_backends(cfg, args.checkpoint)
        summary = run_eval(prompts, generate_fn, score_fn, args.n, args.k, out_dir,
                           chunk_size=args.chunk, show_progress=cfg.logging.progress)
    except (DataError, EvalInputError) as exc:  # one line naming the file, the row and the field
        print(f"rlvr eval: {exc} (samples scored so far kept in {out_dir}/samples.jsonl)", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"rlvr eval: {exc}", file=sys.stderr)
        return 2
    finally:
        _shutdown_ray()
    scores = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.startswith(("pass@", "mean@")))
    print(f"rlvr eval: {summary['num_prompts']} prompts x {args.n}: {scores} -> {out_dir}/summary.json")
    return 0
