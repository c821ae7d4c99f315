"""The package's shape, checked: layers that only point down, no import circles, nio only under ``bot/matrix``.

docs/architecture.md draws the layers. Every import counts here, including those inside functions and under
``TYPE_CHECKING``: a lazy import that closes a circle is still a circle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "bot"

#: Bottom to top; a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("bot.errors", "bot.log", "bot.config", "bot.stats", "bot.metrics", "bot.http_listener", "bot.timeslice"),
    ("bot.content", "bot.crypto"),
    ("bot.storage",),
    ("bot.matrix",),
    ("bot.e2ee",),
    ("bot.appservice",),  # appservice mode: registration, transactions, ghosts (under the plugin API, for bridges)
    ("bot.reports",),
    ("bot.plugin", "bot"),  # bot/__init__.py re-exports the plugin API
    ("bot.bridge",),
    ("bot.runtime",),
    ("bot.testing",),  # the test kit: a real Synapse, members, a bot in a process (the demo uses it too)
    ("bot.cli", "bot.__main__"),
]

#: Where nio may be imported: the Matrix layer, and the test kit's members (an independent client, not the bot).
NIO_ALLOWED = ("bot.matrix", "bot.testing")


def _modules() -> dict[str, Path]:
    found = {}
    for path in BOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bot modules ``name`` imports (anywhere in the file), and 'nio' if it imports nio."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            targets = [f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod for alias in node.names]
        for target in targets:
            if target == "nio" or target.startswith("nio."):
                found.add("nio")
            elif target in modules and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_only_point_down():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if target != "nio" and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_nio_only_under_the_matrix_layer():
    outside = [
        module
        for module, targets in _graph().items()
        if "nio" in targets and not module.startswith(NIO_ALLOWED)
    ]
    assert outside == []


def test_plugins_import_only_the_public_api():
    for path in (ROOT / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("bot", "nio"):
                assert node.module in ("bot", "bot.bridge"), f"{path.relative_to(ROOT)} imports {node.module}"


def test_nio_is_patched_in_one_place_only():
    """The schema cache (bot/matrix/schemas.py) is the one process-wide replacement, because nio looks
    ``validate_json`` up as a module global; every other nio fix is a method of a subclass, per client."""
    assignment = re.compile(r"nio\.[A-Za-z_.]* = |setattr\(nio")
    patched = {
        str(path.relative_to(ROOT))
        for path in BOT.rglob("*.py")
        if assignment.search(path.read_text())
    }
    assert patched == {"bot/matrix/schemas.py"}
