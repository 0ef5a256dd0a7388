"""pass@k and mean@k over sample records, overall and per subject / level.

pass@k uses the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code"), 1 - C(n-c, k) / C(n, k), in its product
form so large n never overflows.  A sample counts as correct when its score is
at least ``threshold`` (1.0: verifiers give 1 for a right answer, plus an
optional format bonus).  mean@n is the mean raw score over all samples.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Sequence


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
