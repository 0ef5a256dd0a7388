"""pass@k against enumeration, summary breakdowns, and run_eval keeping samples on errors."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from launch import eval as eval_cmd
from rlvr.loop.checkpoint import resolve_checkpoint
from rlvr.tools import evaluate
from rlvr.tools.evaluate import EvalInputError, run_eval
from rlvr.tools.passk import mean_at_k, pass_at_k, summarize


def brute_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_all_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(1000, 3, 1) == pytest.approx(0.003)
    exact = 1 - math.comb(1000 - 3, 100) / math.comb(1000, 100)
    assert pass_at_k(1000, 3, 100) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(5000, 0, 64) == 0.0 and pass_at_k(5000, 5000, 64) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_mean_at_k():
    assert mean_at_k([1.0, 0.0, 0.5, 0.5], 2) == 0.5
    assert mean_at_k([1.0, 0.0, 0.5, 0.5], 4) == 0.5
    with pytest.raises(ValueError):
        mean_at_k([1.0], 2)


def records(scores_by_prompt, metas):
    return [{"index": i, "sample": j, "score": s, "meta": meta}
            for i, (scores, meta) in enumerate(zip(scores_by_prompt, metas)) for j, s in enumerate(scores)]


def test_summarize_overall_and_breakdowns():
    recs = records([[1.0, 0.0], [1.0, 1.2], [0.0, 0.2]],
                   [{"subject": "Algebra", "level": 1}, {"subject": "Algebra", "level": 2},
                    {"subject": "Geometry", "level": 2}])
    s = summarize(recs, ks=[2])
    assert s["num_prompts"] == 3 and s["num_samples"] == 6
    assert s["pass@1"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["pass@2"] == pytest.approx(2 / 3)
    assert s["mean@2"] == pytest.approx((0.5 + 1.1 + 0.1) / 3)
    assert s["by_subject"]["Algebra"]["pass@1"] == pytest.approx(0.75)
    assert s["by_subject"]["Algebra"]["pass@2"] == 1.0
    assert s["by_subject"]["Geometry"] == {"num_prompts": 1, "num_samples": 2, "pass@1": 0.0, "pass@2": 0.0,
                                           "mean@2": pytest.approx(0.1)}
    assert s["by_level"]["1"]["pass@1"] == 0.5
    assert s["by_level"]["2"]["pass@2"] == 0.5
    assert "by_subject" not in summarize(records([[1.0]], [{}]))


# --------------------------------------------------------------------------- run_eval
def prompts(count):
    return [{"prompt": f"q{i}", "ground_truth": str(i), "verifier": "arithmetic", "meta": {"level": i % 2}}
            for i in range(count)]


class Fakes:
    """generate_fn answers sample j of prompt qi with str(i) when j is even; score_fn checks equality."""

    def __init__(self):
        self.chunks = []

    def generate(self, texts, n):
        self.chunks.append(len(texts))
        return [[t[1:] if j % 2 == 0 else "wrong" for j in range(n)] for t in texts]

    def score(self, jobs):
        scores = [1.0 if response == truth else 0.0 for _, response, truth in jobs]
        return scores, ["ok" if s else "mismatch" for s in scores]


def read_samples(out_dir):
    with open(out_dir / "samples.jsonl") as f:
        return [json.loads(line) for line in f]


def test_run_eval_chunks_writes_samples_and_summary(tmp_path):
    fakes = Fakes()
    summary = run_eval(prompts(5), fakes.generate, fakes.score, n=4, ks=[1, 4], out_dir=str(tmp_path),
                       chunk_size=2, show_progress=False)
    assert fakes.chunks == [2, 2, 1]
    samples = read_samples(tmp_path)
    assert len(samples) == 20 and [s["index"] for s in samples[:5]] == [0, 0, 0, 0, 1]
    assert samples[1] == {"index": 0, "sample": 1, "prompt": "q0", "ground_truth": "0",
                          "verifier": "arithmetic", "meta": {"level": 0}, "response": "wrong", "score": 0.0,
                          "correct": False, "info": "mismatch"}
    assert summary["pass@1"] == 0.5 and summary["pass@4"] == 1.0 and summary["mean@4"] == 0.5
    assert summary["complete"] is True and summary["by_level"]["1"]["num_prompts"] == 2
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_iterator_error_midway_keeps_scored_samples(tmp_path):
    class DataError(ValueError):
        pass

    def rows():
        yield from prompts(5)
        raise DataError("test.jsonl row 6: field 'answer': missing")

    fakes = Fakes()
    with pytest.raises(DataError, match="row 6: field 'answer'"):
        run_eval(rows(), fakes.generate, fakes.score, n=2, ks=[1], out_dir=str(tmp_path), chunk_size=2,
                 show_progress=False)
    # The 4 prompts of the full chunks and the 1 read before the error are all saved.
    assert [s["index"] for s in read_samples(tmp_path)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] is False and summary["num_prompts"] == 5 and "row 6" in summary["error"]


def test_backend_failure_loses_only_its_chunk(tmp_path):
    fakes = Fakes()

    def generate(texts, n):
        if fakes.chunks:
            raise RuntimeError("engine died")
        return fakes.generate(texts, n)

    with pytest.raises(RuntimeError, match="engine died"):
        run_eval(prompts(6), generate, fakes.score, n=1, ks=[1], out_dir=str(tmp_path), chunk_size=3,
                 show_progress=False)
    assert [s["index"] for s in read_samples(tmp_path)] == [0, 1, 2]
    assert json.loads((tmp_path / "summary.json").read_text())["complete"] is False


def test_malformed_prompt_names_row_and_field(tmp_path):
    items = prompts(4)
    del items[2]["ground_truth"]
    fakes = Fakes()
    with pytest.raises(EvalInputError, match="row 3: field 'ground_truth': missing"):
        run_eval(items, fakes.generate, fakes.score, n=1, ks=[1], out_dir=str(tmp_path), chunk_size=1,
                 show_progress=False)
    assert [s["prompt"] for s in read_samples(tmp_path)] == ["q0", "q1"]


# --------------------------------------------------------------------------- CLI
def write_gsm8k(path, bad_row=None):
    with open(path, "w") as f:
        for i in range(1, 5):
            row = {"question": f"q{i}", "answer": f"work\n#### {i}"}
            if i == bad_row:
                del row["answer"]
            f.write(json.dumps(row) + "\n")


def test_cli_fail_on_bad_row_names_file_row_field_and_keeps_samples(tmp_path, monkeypatch, capsys, caplog):
    data = tmp_path / "gsm8k.jsonl"
    write_gsm8k(data, bad_row=3)
    monkeypatch.setattr(eval_cmd, "_build_backends",
                        lambda cfg, ckpt: (lambda texts, n: [[t[1:]] * n for t in texts], Fakes().score))
    monkeypatch.setattr(eval_cmd, "_shutdown_ray", lambda: None)
    out = tmp_path / "out"
    argv = ["eval", "ckpt", "--data", str(data), "--adapter", "gsm8k", "--n", "2", "--k", "1,2",
            "--out", str(out), "--chunk", "1", "eval.temperature=1.0",
            "data.on_bad_row=fail", "logging.progress=false"]
    from launch.cli import main as cli

    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{data} row 3: field 'answer': missing" in err
    assert [s["ground_truth"] for s in read_samples(out)] == ["1", "1", "2", "2"]

    # Default on_bad_row=skip: the row is reported, the others evaluated.
    assert cli(argv[:-2] + ["logging.progress=false"]) == 0
    captured = capsys.readouterr()
    reported = captured.err + caplog.text  # the data module's warning (pytest's log handler takes it)
    assert f"{data} row 3: field 'answer': missing (skipped)" in reported and "pass@2=1.0000" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_prompts"] == 3 and summary["pass@1"] == 1.0


def test_cli_rejects_a_checkpoint_that_is_not_a_model(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    write_gsm8k(data)
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty"), "--data", str(data), "--adapter", "gsm8k", "--limit", "2"]
    assert eval_cmd.main(argv) == 2
    assert "neither an HF model directory (config.json) nor an rlvr checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cmd.parse_args(["ckpt", "--data", "x", "--adapter", "gsm8k", "--n", "2", "--k", "1,4"])


# --------------------------------------------------------------------------- backends
class FakeWorker:
    """A rollout worker answering each request with '<prompt ids>|<seed>|<sample j>'."""

    def __init__(self):
        self.calls = []
        self.generate = self  # worker.generate.remote(...)

    def remote(self, prompt_ids, n, temperature, seeds):
        from rlvr.rollout.sample import Sample

        self.calls.append((len(prompt_ids), n, temperature))
        return [Sample(prompt_ids=p, response_ids=[], rollout_logprob=[], text=f"{p}|{seed}|{j}")
                for p, seed in zip(prompt_ids, seeds) for j in range(n)]


class CharTokenizer:
    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def engine_generate(workers, chunks, texts, n=2, max_model_len=12, max_tokens=4):
    from rlvr.config import load_config

    cfg = load_config([], [f"rollout.max_model_len={max_model_len}", f"rollout.max_tokens={max_tokens}",
                           "eval.temperature=1.0", "seed=3"])
    from rlvr.loop.groups import RolloutGroup

    gen = evaluate.EngineGenerate(cfg, CharTokenizer(), RolloutGroup(workers))
    out, start = [], 0
    for size in chunks:
        out += gen(texts[start:start + size], n)
        start += size
    return out, gen


def test_engine_generate_seeds_by_prompt_index_and_keeps_order(monkeypatch):
    from rlvr.rollout.engine import EVAL_STREAM, request_seeds

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    texts = [f"q{i}" for i in range(7)] + ["a-much-longer-prompt"]
    one, _ = engine_generate([FakeWorker()], [8], texts)
    workers = [FakeWorker() for _ in range(3)]
    three, gen = engine_generate(workers, [3, 2, 3], texts)
    # same samples whatever the chunking and the number of workers: the seed follows the prompt
    assert one == three
    assert [len(w) for w in one] == [2] * 8
    seeds = [int(r[0].split("|")[1]) for r in one]
    assert seeds == request_seeds(3, EVAL_STREAM, 8) and len(set(seeds)) == 8
    assert [r[1].split("|")[2] for r in one] == ["1"] * 8
    assert one[0][0].startswith(str([ord(c) for c in "q0"]))
    # prompts beyond max_model_len - max_tokens = 8 tokens keep their last 8
    assert one[7][0].startswith(str([ord(c) for c in "r-prompt"])) and gen.truncated == 1
    assert sum(c[0] for w in workers for c in w.calls) == 8 and {c[1:] for w in workers for c in w.calls} == {(2, 1.0)}


def test_engine_generate_needs_room_for_a_prompt():
    with pytest.raises(ValueError, match="so that a prompt fits beside the response"):
        engine_generate([FakeWorker()], [1], ["q"], max_model_len=8, max_tokens=8)


TINY = ["model.path=tiny", "model.tiny.hidden_size=64", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.tiny.num_layers=1", "model.tiny.intermediate_size=96", "model.tiny.max_position=64",
        "rollout.max_model_len=64"]


@pytest.mark.parametrize("base_kind", ["hf_dir", "tiny"])
def test_consolidate_rlvr_checkpoint_into_hf_dir(tmp_path, base_kind):
    """A trainer checkpoint (DCP, keys model.hf.*) becomes an HF directory with exactly its weights."""
    import torch
    from safetensors.torch import load_file

    from rlvr.loop import checkpoint
    from rlvr.config import TrainerConfig, load_config, to_yaml
    from rlvr.train.tiny_model import build_model, build_tokenizer
    from rlvr.train.trainer import Trainer
    from tests.helpers import tiny_checkpoint

    base = str(tmp_path / "base")
    if base_kind == "hf_dir":  # untied embeddings: every tensor is stored
        cfg = load_config([], [f"model.path={tiny_checkpoint(base)}"])
    else:  # the run built its model from code; the architecture is rebuilt from the saved config
        cfg = load_config([], TINY)
        tokenizer = build_tokenizer()
        build_model(cfg.model.tiny, tokenizer).save_pretrained(base)
        tokenizer.save_pretrained(base)
    trainer = Trainer(base, TrainerConfig())
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(torch.randn_like(p))  # the checkpoint must not equal the base model
    expected = trainer.full_state_dict()
    tmp = checkpoint.begin(str(tmp_path / "run"), 7)
    trainer.save(tmp)
    path = checkpoint.commit(tmp, {"step": 7, "config": to_yaml(cfg)}, keep=2)

    hf = resolve_checkpoint(path, None)
    assert hf == f"{path}/hf"
    weights = load_file(f"{hf}/model.safetensors")
    tied = {"lm_head.weight"} if base_kind == "tiny" else set()
    assert set(weights) == set(expected) - tied
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not torch.equal(weights["model.norm.weight"], load_file(f"{base}/model.safetensors")["model.norm.weight"])
    assert (tmp_path / "run/checkpoints/step_000007/hf/tokenizer.json").is_file()
    assert resolve_checkpoint(path, None) == hf  # built once, then reused
    assert resolve_checkpoint(base, None) == base


# --------------------------------------------------------------------------- end to end (Ray + vLLM)
@pytest.mark.slow
def test_cli_evaluates_an_hf_dir_through_rollout_workers_and_reward_pool(tmp_path, capsys):
    from rlvr.verifiers.arithmetic import arithmetic_reward
    from tests.helpers import tiny_checkpoint

    model = tiny_checkpoint(str(tmp_path / "model"))
    data = tmp_path / "arith.jsonl"
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(7)]
    rows[4] = {"prompt": "4+4="}  # malformed: no answer
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["eval", model, "--data", str(data), "--adapter", "arithmetic", "--n", "2", "--k", "1,2",
            "--chunk", "4", "--out", str(out), "eval.temperature=1.0", "rollout.max_model_len=128",
            "rollout.max_tokens=4", "rollout.num_cpus=0.5", "verifier.num_workers=1", "verifier.num_cpus=0.5",
            "cluster.num_cpus=2", "logging.progress=false"]
    from launch.cli import main as cli

    assert cli(argv) == 0
    captured = capsys.readouterr()
    assert f"{data} row 5: field 'answer': missing" in captured.err
    samples = read_samples(out)
    assert [(s["index"], s["sample"]) for s in samples] == [(i, j) for i in range(6) for j in range(2)]
    assert [s["meta"]["row"] for s in samples[::2]] == [1, 2, 3, 4, 6, 7]
    for s in samples:  # scored by the reward pool's processes, as the verifier function scores them
        assert s["score"] == arithmetic_reward(s["response"], s["ground_truth"]), s
        assert s["info"] == "" and s["correct"] == (s["score"] >= 1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["num_prompts"] == 6 and summary["num_samples"] == 12
    per_prompt = [[s["correct"] for s in samples if s["index"] == i] for i in range(6)]
    assert summary["pass@1"] == pytest.approx(sum(sum(p) / 2 for p in per_prompt) / 6)
    assert summary["pass@2"] == pytest.approx(sum(any(p) for p in per_prompt) / 6)
    assert "pass@2=" in captured.out
