"""The package's shape: no import cycles among remoteci modules, each package imports only what
its docstring allows (MAY_IMPORT), and each side of the system (the API's app, the worker's
supervisor and executors, the CI client) loads only its own modules.

The cycle check reads every import in the source with `ast`, deferred ones inside functions
included (a cycle hidden in a function is still a cycle in the design); only imports under
`if TYPE_CHECKING:` are left out, since they never run. `from remoteci.pkg import name` counts
as an import of the module `remoteci.pkg.name` when that module exists, else of `remoteci.pkg`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.helpers import ROOT

PACKAGE = ROOT / "remoteci"


def _module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(str(p.relative_to(ROOT))): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    """Every remoteci module a module's source imports, wherever the import statement sits."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in MODULES}


def import_graph() -> dict[str, set[str]]:
    return {name: _imports(ast.parse(path.read_text(), str(path))) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None: a depth-first search."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
                on_path.add(nxt)
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    graph = import_graph()
    assert "remoteci.queue" in graph["remoteci.executor"]
    assert "remoteci.web.logs" in graph["remoteci.http"]  # `from remoteci.web import logs`
    assert "remoteci.artifacts.collector" in graph["remoteci.executor"]  # a deferred import
    assert "remoteci.artifacts.routes" in graph["remoteci.routes"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_app_never_imports_a_feature_back() -> None:
    """Features' routes register through remoteci.routes; the app names none of them."""
    graph = import_graph()
    assert not {m for m in graph["remoteci.http"] if m.endswith(".routes")}


def test_every_package_says_what_it_is_and_what_it_may_import() -> None:
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "remoteci":
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "May import" in doc, f"{name}'s docstring should say what it may import"
            assert name.removeprefix("remoteci.") in MAY_IMPORT, f"{name} needs a MAY_IMPORT entry"


# What each package's docstring says it may import: the shared top-level modules, plus these.
SHARED = {"config", "errors", "events", "jobs", "timefmt", "queue"}
MAY_IMPORT = {
    "system": set(),
    "sources": set(),
    "store": {"system"},
    "auth": {"sources"},
    "webhooks": {"store", "pipelines"},  # pipelines.objects: the body of a pipeline's webhook
    "history": {"store", "system", "auth"},
    "artifacts": {"web", "auth"},
    "hosts": set(),
    "web": {"store", "system", "auth", "sources", "history", "artifacts", "webhooks", "hosts"},
    "pages": {"store", "web", "auth", "history"},
    "worker": {"executor", "store", "system", "sources", "history", "webhooks", "artifacts",
               "pipelines", "schedules"},
    "pipelines": {"store", "web", "auth", "sources", "artifacts", "webhooks", "history", "pages"},
    "shipping": {"web", "auth", "artifacts", "system"},
    "schedules": {"store", "auth", "sources", "web", "pages"},
}


def _part(module: str) -> str:
    """remoteci.web.logs -> web; remoteci.queue -> queue."""
    return module.split(".")[1] if "." in module else module


def test_each_package_imports_only_what_its_docstring_allows() -> None:
    wrong = set()
    for name, deps in import_graph().items():
        package = _part(name)
        if package not in MAY_IMPORT:
            continue  # a top-level module
        allowed = SHARED | MAY_IMPORT[package] | {package}
        wrong |= {f"{name} -> {dep}" for dep in deps if _part(dep) not in allowed}
    assert not wrong, sorted(wrong)


def _loaded_after(*entry_points: str) -> set[str]:
    """The remoteci modules a fresh interpreter holds after importing `entry_points`."""
    probe = ("import importlib, json, sys\n"
             f"for name in {list(entry_points)!r}: importlib.import_module(name)\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'remoteci')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return set(json.loads(out))


WORKER_ONLY = ("remoteci.worker.supervisor", "remoteci.executor", "remoteci.webhooks.deliverer",
               "remoteci.webhooks.send", "remoteci.history.writer", "remoteci.artifacts.collector",
               "remoteci.system.wakeup")
API_ONLY = ("remoteci.http", "remoteci.routes", "remoteci.web.server", "remoteci.web.messages",
            "remoteci.pages.render", "remoteci.pages.routes", "remoteci.artifacts.routes",
            "remoteci.web.uploads", "remoteci.history.api")


def test_the_api_side_loads_no_worker_code() -> None:
    """The app with every route set, as `api` serves it (service.py also imports the supervisor,
    on purpose: `serve` forks it and the pages are shared)."""
    loaded = _loaded_after("remoteci.http", "remoteci.routes")
    assert "remoteci.pages.render" in loaded
    assert loaded.isdisjoint(WORKER_ONLY), loaded & set(WORKER_ONLY)


def test_the_worker_side_loads_no_api_code() -> None:
    """The supervisor and everything an executor or an auxiliary process needs up front."""
    loaded = _loaded_after("remoteci.worker.supervisor")
    assert "remoteci.executor" in loaded
    assert loaded.isdisjoint(API_ONLY), loaded & set(API_ONLY)


def test_the_ci_client_is_one_file() -> None:
    """CI copies remoteci/client.py alone into a repository: it needs no other module of ours."""
    assert _loaded_after("remoteci.client") == {"remoteci", "remoteci.client"}
