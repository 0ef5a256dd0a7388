"""Check 5 of :mod:`launch.k8s_check`: can every actor pool of an rlvr config be placed on the worker
groups of a RayCluster spec?

Design: the pools find their nodes through Ray node labels (``label_selector``, e.g.
``rlvr.io/pool: rollout``), so a manifest and a config agree only if each pool's selector matches
exactly one worker group (never the head) and that group's Pods offer what each actor asks for,
for as many actors as ``maxReplicas`` Pods hold.  A Pod's Ray resources are derived as KubeRay
derives them (container limits, then ``rayStartParams``, then the group's ``resources``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

POOL_LABEL = "rlvr.io/pool"

Obj = dict[str, Any]


def quantity(text: Any) -> float:
    """A Kubernetes quantity ("500m", "64Gi", "2", 1.5) as a number."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)(m|[KMGTPE]i?|k)?", str(text).strip())
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    scale = {None: 1, "m": 1e-3, "k": 1e3, "K": 1e3}
    for i, s in enumerate("KMGTPE", start=1):
        scale.update({s + "i": 1024.0**i, s: scale.get(s, 1000.0**i)})
    return float(m.group(1)) * scale[m.group(2)]


def node_resources(group: Obj) -> dict[str, float]:
    """The Ray resources one Pod of ``group`` advertises, derived as KubeRay does."""
    container = group["template"]["spec"]["containers"][0]
    res = container.get("resources") or {}
    limits = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    out = {"CPU": quantity(limits.get("cpu", 0)), "GPU": quantity(limits.get("nvidia.com/gpu", 0)),
           "memory": quantity(limits.get("memory", 0))}
    params = group.get("rayStartParams") or {}
    for key, name in (("num-cpus", "CPU"), ("num-gpus", "GPU"), ("memory", "memory")):
        if key in params:
            out[name] = float(params[key])
    out.update({k: float(v) for k, v in json.loads(params.get("resources", "{}").strip("'\"") or "{}").items()})
    out.update({k: quantity(v) for k, v in (group.get("resources") or {}).items()})
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray label-selector semantics: value, !value, in(a,b), !in(a,b)."""
    for key, want in selector.items():
        have = labels.get(key)
        negate, want = want.startswith("!"), want.lstrip("!")
        options = want[3:-1].split(",") if want.startswith("in(") and want.endswith(")") else [want]
        if (have in [o.strip() for o in options]) == negate:
            return False
    return True


def pool_errors(spec: Obj, cfg: Any) -> list[str]:
    """Can every pool of ``cfg`` (an RLConfig) be placed on the worker groups of ``spec``?"""
    err = []
    groups = spec.get("workerGroupSpecs") or []
    # Actors per pool, as rlvr/loop/groups.py creates them: the verifier is one RewardPool actor
    # running verifier.num_workers processes.
    pools = {"rollout": (cfg.rollout, cfg.rollout.num_workers), "trainer": (cfg.trainer, cfg.trainer.num_workers),
             "verifier": (cfg.verifier, 1)}
    head_labels = spec.get("headGroupSpec", {}).get("labels") or {}
    for pname, (pool, actors) in pools.items():
        if not pool.label_selector:
            err.append(f"{pname}: no label_selector, so its actors may land on any node")
            continue
        if selects(pool.label_selector, head_labels):
            err.append(f"{pname}: label_selector {pool.label_selector} matches the head")
        matched = [g for g in groups if selects(pool.label_selector, g.get("labels") or {})]
        if len(matched) != 1:
            err.append(f"{pname}: label_selector {pool.label_selector} matches {len(matched)} worker groups "
                       f"({[g.get('groupName') for g in matched]}), expected exactly 1")
            continue
        group = matched[0]
        gname, node = group.get("groupName"), node_resources(group)
        per_actor = {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources}
        per_node = math.inf
        for res, amount in per_actor.items():
            if amount <= 0:
                continue
            if node.get(res, 0.0) < amount:
                err.append(f"{pname}: each actor asks {res}={amount:g}, a '{gname}' Pod offers {node.get(res, 0.0):g}")
                per_node = 0
            else:
                per_node = min(per_node, math.floor(node[res] / amount + 1e-9))
        if per_node and per_node != math.inf and math.ceil(actors / per_node) > group.get("maxReplicas", 0):
            err.append(f"{pname}: {actors} actors need {math.ceil(actors / per_node)} '{gname}' Pods, "
                       f"maxReplicas is {group.get('maxReplicas')}")
        if pname == "rollout" and pool.tensor_parallel_size > node.get("GPU", 0):
            err.append(f"rollout: tensor_parallel_size {pool.tensor_parallel_size} exceeds the GPUs of a '{gname}' Pod")
    return err
