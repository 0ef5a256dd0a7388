"""The architecture as a test: imports only point down, the README's layout is the tree, every
registry goes through the one ``Registry`` type, and every Ray shell states its contract."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from rlvr.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlvr", "workers", "launch")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports (anywhere in the file, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:  # `from a.b import c` imports a.b (or a.b.c, a module)
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_the_library_never_imports_its_shells_or_launchers():
    offenders = {m: sorted(d for d in deps if d.split(".")[0] in ("workers", "launch"))
                 for m, deps in _graph().items() if m.split(".")[0] == "rlvr"}
    assert {m: d for m, d in offenders.items() if d} == {}


LAYERS = [("rlvr.tools",), ("rlvr.loop",), ("rlvr.train", "rlvr.rollout"),
          ("rlvr.algo", "rlvr.data", "rlvr.verifiers"), ("rlvr.config", "rlvr.config_checks", "rlvr.registry")]


def _layer(module: str) -> int:
    for depth, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return depth
    return -1  # rlvr/__init__


def test_inside_the_library_arrows_only_point_down():
    """tools -> loop -> train, rollout -> algo, data, verifiers -> config, registry (the README's order)."""
    up = {m: sorted(d for d in deps if d.startswith("rlvr.") and _layer(d) < _layer(m))
          for m, deps in _graph().items() if m.startswith("rlvr.")}
    assert {m: d for m, d in up.items() if d} == {}


def test_no_import_cycles():
    graph = _graph()
    cycles = []

    def visit(node, stack, on_stack, done):
        on_stack.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep in on_stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [], set(), done)
    # a package's __init__ that lists its submodules is not a cycle with them
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == []


def test_the_readme_layout_table_is_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):]
    listed = set(re.findall(r"^\| `(rlvr/[\w/.]+?)/?` \|", table, flags=re.M))
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "rlvr").glob("*/__init__.py")}
    top_modules = {str(p.relative_to(ROOT)) for p in (ROOT / "rlvr").glob("*.py") if p.name != "__init__.py"}
    assert listed == packages | top_modules
    for folder in ("workers", "launch", "configs", "tests", "k8s", "bench"):
        assert f"| `{folder}/` |" in table


REGISTRIES = [
    ("rlvr.algo.advantages", "ADVANTAGES", "ADVANTAGES"),
    ("rlvr.algo.losses", "POLICY_LOSSES", "POLICY_LOSSES"),
    ("rlvr.algo.losses", "AGGREGATIONS", "LOSS_AGGS"),
    ("rlvr.algo.losses", "KL_ESTIMATORS", "KL_ESTIMATORS"),
    ("rlvr.algo.credit", "CREDIT_CRITERIA", "CREDIT_CRITERIA"),
    ("rlvr.algo.schedules", "SCHEDULES", "SCHEDULE_KINDS"),
    ("rlvr.verifiers", "VERIFIERS", "VERIFIERS"),
    ("rlvr.data.adapters", "ADAPTERS", "DATASETS"),
    ("rlvr.rollout.engine", "ROLLOUT_BACKENDS", "ROLLOUT_BACKENDS"),
    ("rlvr.algo.offpolicy", "OFF_POLICY", "OFF_POLICY"),
    ("rlvr.algo.d3s", "DOWN_SAMPLING", "DOWN_SAMPLINGS"),
    ("rlvr.algo.reinforce_ada", "EXIT_RULES", "EXIT_RULES"),
    ("rlvr.train.engines", "TRAINER_ENGINES", "TRAINER_ENGINES"),
    ("rlvr.train.deepspeed_trainer", "OPTIMIZERS", "DEEPSPEED_OPTIMIZERS"),
]


@pytest.mark.parametrize("module, name, config_names", REGISTRIES)
def test_every_registry_is_a_registry_that_matches_the_config(module, name, config_names):
    from rlvr import config

    registry = getattr(importlib.import_module(module), name)
    assert isinstance(registry, Registry)
    assert set(registry) == set(getattr(config, config_names))
    first = registry.names()[0]
    assert registry.get(first) is dict(registry.items())[first]
    with pytest.raises(ValueError, match=f"unknown .*'nope'; valid choices: {re.escape(', '.join(registry))}"):
        registry.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        Registry("x", {first: 1}).add(first, 2)


def test_no_hand_written_lookup_functions_remain():
    """Lookups go through ``Registry.get``: no ``def get_<thing>(name)`` beside a registry."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and re.fullmatch(r"get_\w+", node.name):
                offenders.append(f"{name}.{node.name}")
    assert offenders == []


@pytest.mark.parametrize("module", ["workers.rollout", "workers.trainer", "workers.reward_pool", "workers.scheduler"])
def test_each_ray_shell_states_its_contract(module):
    mod = importlib.import_module(module)
    doc = mod.__doc__ or ""
    assert "Contract" in doc and "called" in doc.lower()
    classes = [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == module]
    assert len(classes) == 1  # one actor class per role
    methods = [n for n, _ in inspect.getmembers(classes[0], inspect.isfunction) if not n.startswith("_")]
    assert methods and all(f"``{m}(" in doc for m in methods), [m for m in methods if f"``{m}(" not in doc]
