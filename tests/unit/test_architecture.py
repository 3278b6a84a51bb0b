"""The layer rule of DESIGN.md section 9, checked on the source (AST) and in fresh interpreters.

A module imports only from its own layer or lower ones; the project's import graph has no
cycle, function-level imports included; the only lazy imports of project modules are the few
listed in :data:`LAZY_ALLOWED`, each with its reason (cli.py loads commands through importlib,
which is not an import statement). The Lambda handlers load nothing CLI-only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("transforms", "config", "forwarder")

#: Layer of each package or module, lowest first (DESIGN.md section 9). The longest matching
#: prefix decides; every project module must match one.
LAYERS: dict[str, int] = {
    "transforms": 1,
    "config": 1,
    "forwarder": 2,  # the package itself (__version__)
    "forwarder.status": 2,
    "forwarder.errors": 2,
    "forwarder.aws": 2,
    "forwarder.signals": 2,
    "forwarder.secrets": 2,
    "forwarder.hec": 3,
    "forwarder.backsplash": 4,
    "forwarder.delivery": 5,
    "forwarder.intake": 6,
    "forwarder.sources": 7,
    "forwarder.replay": 7,
    # The drain runs the replay engine in cycles (no cycle back: replay never imports it)
    # and is run by the daemon and commands above; its package holds the drain Lambda.
    "forwarder.drain": 7,
    "forwarder.push": 8,
    "forwarder.daemon": 8,
    "forwarder.commands": 8,
    "forwarder.cli": 8,
    "forwarder.__main__": 8,
    "forwarder.devtools": 9,
}

#: Function-level imports of project modules that stay lazy on purpose: (importer, imported).
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    ("transforms.firehose", "transforms.reingest"): "reingest loads boto3, needed only on reingest",
    ("transforms.firehose", "config.loader"): "the handler loads settings once per container",
    ("transforms.firehose", "config.logs"): "the handler configures logging once per container",
    ("transforms.firehose", "config.destinations"): "the handler checks its routes at start-up",
    ("config.loader", "transforms.errors"): "loaded only when a flow format is set",
    (
        "config.loader",
        "transforms.vpc_flow",
    ): "flow-format checks load vpc_flow only when one is set",
    (
        "forwarder.replay.state_store",
        "forwarder.replay.dynamo_state",
    ): "the DynamoDB state loads botocore, needed only for --state dynamodb://TABLE",
}

#: What the Lambda handlers must not load (prefixes of module names).
CLI_ONLY = (
    "argparse",
    "sqlite3",
    "forwarder.cli",
    "forwarder.commands",
    "forwarder.daemon",
    "forwarder.devtools",
    "forwarder.replay",
    "forwarder.sources",
    "config.daemon",
)
HANDLERS = ("transforms.firehose", "forwarder.push")
#: What the drain Lambda must not load: the CLI and daemon (it runs the replay engine, so
#: replay and its SQLite state are its own).
DRAIN_CLI_ONLY = (
    "argparse",
    "forwarder.cli",
    "forwarder.commands",
    "forwarder.daemon",
    "forwarder.devtools",
    "forwarder.sources",
    "config.daemon",
)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    lazy: bool
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` may be module ``a.b`` plus a name ``c``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_lazy(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a function, or under ``if TYPE_CHECKING`` (which never runs) is not lazy."""
    current = parents.get(node)
    while current is not None:
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        current = parents.get(current)
    return False


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    current = parents.get(node)
    while current is not None:
        if isinstance(current, ast.If):
            test = current.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                return True
        current = parents.get(current)
    return False


def edges() -> Iterator[Edge]:
    for importer, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            if not targets or _type_checking_only(node, parents):
                continue
            for target in targets:
                imported = _resolve(target)
                if imported is not None and imported != importer:
                    yield Edge(importer, imported, _is_lazy(node, parents), node.lineno)


EDGES = sorted(set(edges()), key=lambda e: (e.importer, e.line, e.imported))


def layer_of(module: str) -> int:
    best = max(
        (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")),
        key=len,
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (DESIGN.md section 9)")
    return LAYERS[best]


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except AssertionError:
            unplaced.append(module)
    assert not unplaced, f"modules in no layer: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{e.importer}:{e.line} imports {e.imported} "
        f"(layer {layer_of(e.importer)} -> {layer_of(e.imported)})"
        for e in EDGES
        if layer_of(e.imported) > layer_of(e.importer)
    ]
    assert not upward, "\n".join(upward)


def test_transforms_and_config_import_nothing_of_forwarder() -> None:
    wrong = [
        f"{e.importer}:{e.line} imports {e.imported}"
        for e in EDGES
        if e.importer.split(".")[0] in {"transforms", "config"}
        and e.imported.split(".")[0] == "forwarder"
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_firehose_adapter_in_transforms_imports_config() -> None:
    wrong = [
        f"{e.importer}:{e.line} imports {e.imported}"
        for e in EDGES
        if e.importer.startswith("transforms.")
        and e.imported.startswith("config")
        and e.importer != "transforms.firehose"
    ]
    assert not wrong, "\n".join(wrong)


def test_lazy_imports_are_only_the_listed_ones() -> None:
    lazy = [
        f"{e.importer}:{e.line} imports {e.imported} inside a function"
        for e in EDGES
        if e.lazy and (e.importer, e.imported) not in LAZY_ALLOWED
    ]
    assert not lazy, "\n".join(lazy)


def test_devtools_are_never_imported_by_runtime_code() -> None:
    wrong = [
        f"{e.importer}:{e.line} imports {e.imported}"
        for e in EDGES
        if e.imported.startswith("forwarder.devtools")
        and not e.importer.startswith("forwarder.devtools")
    ]
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, if there is any (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_the_import_graph_has_no_cycle() -> None:
    """Function-level imports count: a cycle closed lazily is still a cycle."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in EDGES:
        graph[edge.importer].add(edge.imported)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would pass vacuously if _cycle never found anything."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_layer_check_sees_function_level_imports(tmp_path: Path) -> None:
    """An import inside a function is found and marked lazy."""
    source = "import os\n\ndef f():\n    from forwarder.cli import main\n    return main\n"
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found and _is_lazy(found[0], parents)


def _loaded_by(handler: str) -> list[str]:
    """In a fresh interpreter: import the handler's module, then list what got loaded."""
    script = (
        "import importlib, json, sys\n"
        f"importlib.import_module({handler!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded: list[str] = json.loads(result.stdout)
    assert handler in loaded
    return loaded


@pytest.mark.parametrize("handler", HANDLERS)
def test_lambda_handlers_load_nothing_cli_only(handler: str) -> None:
    """In a fresh interpreter: import the handler's module, then list what got loaded."""
    loaded = _loaded_by(handler)
    wrong = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in CLI_ONLY)]
    assert not wrong, f"{handler} loads CLI-only modules: {wrong}"


def test_the_drain_lambda_loads_nothing_cli_only() -> None:
    """``forwarder.drain.handler`` runs the replay engine but none of the CLI or daemon."""
    loaded = _loaded_by("forwarder.drain")
    assert "forwarder.replay.engine" in loaded
    wrong = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in DRAIN_CLI_ONLY)]
    assert not wrong, f"forwarder.drain loads CLI-only modules: {wrong}"
