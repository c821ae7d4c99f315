"""The public API stays small (issue 11): ``bot`` exports what a plugin author uses, ``bot.bridge`` what a bridge
uses, every exported name is used by the docs or a bundled plugin, every import the docs and plugins show resolves,
the bundled plugins import nothing internal, and ``import bot`` loads neither the bridge framework nor the runtime,
encryption or reporting code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bot
import bot.bridge

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py"))
PUBLIC = {"bot": bot, "bot.bridge": bot.bridge}

PLUGIN_API = [
    "Context",
    "MatrixError",
    "Plugin",
    "Rest",
    "RoomRef",
    "UserId",
    "__version__",
    "command",
    "every",
    "mask_secret",
    "on_event",
    "on_message",
]


def _code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def _public_imports(source: str) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from bot import name`` / ``from bot.bridge import name`` in ``source`` (the
    import statements alone are parsed: a doc snippet may elide code with ``...``)."""
    statements = re.findall(r"^\s*(from bot(?:\.\w+)* import (?:\([^)]*\)|[^\n]+))", source, flags=re.M)
    return [
        (node.module, alias.name)
        for statement in statements
        for node in ast.parse(statement.strip()).body
        if isinstance(node, ast.ImportFrom) and node.module in PUBLIC
        for alias in node.names
    ]


def _used_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [*DOCS, *PLUGIN_FILES])


def test_bot_exports_the_plugin_api_only():
    assert sorted(bot.__all__) == PLUGIN_API
    for name in bot.__all__:
        assert hasattr(bot, name), name


def test_bridge_exports_what_bridges_need():
    needed = {"Bridge", "BridgeConfig", "Portal", "MatrixMessage", "RemoteMessage", "RemoteSend", "RemoteCapabilities",
              "RemoteConnection", "PermanentSendError"}
    assert needed <= set(bot.bridge.__all__)
    assert not [name for name in bot.bridge.__all__ if "irc" in name.lower()]  # IRC lives in plugins/irc_bridge
    for name in bot.bridge.__all__:
        assert hasattr(bot.bridge, name), name


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_exported_name_is_used_by_the_docs_or_a_bundled_plugin(module):
    text = _used_text()
    unused = [name for name in PUBLIC[module].__all__ if not re.search(rf"(?<![\w.]){re.escape(name)}\b", text)]
    assert unused == [], f"{module} exports names neither docs/*.md nor plugins/ use: {unused}"


def test_every_import_shown_in_docs_and_plugins_resolves():
    sources = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in PLUGIN_FILES]
    for doc in [*DOCS, ROOT / "README.md"]:
        for i, block in enumerate(_code_blocks(doc)):
            sources.append((f"{doc.relative_to(ROOT)} block {i}", block))
    scaffold = (ROOT / "bot" / "cli" / "scaffold.py").read_text(encoding="utf-8")
    sources.append(("scaffold template", scaffold))
    seen = 0
    for where, source in sources:
        for module, name in _public_imports(source):
            seen += 1
            assert name in PUBLIC[module].__all__, f"{where}: from {module} import {name} is not public"
    assert seen > 20  # the scan found the imports


def test_bundled_plugins_import_only_bot_and_bot_bridge():
    internal = []
    for path in PLUGIN_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            internal += [
                f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                for m in modules
                if (m == "bot" or m.startswith("bot.")) and m not in PUBLIC
            ]
    assert internal == []


def test_import_bot_loads_only_the_plugin_api():
    code = "import json, sys; import bot; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = json.loads(out)
    for package in ("bot.bridge", "bot.e2ee", "bot.reports", "bot.runtime", "bot.matrix", "bot.crypto", "nio"):
        assert not [m for m in loaded if m == package or m.startswith(package + ".")], f"import bot loads {package}"
    assert len([m for m in loaded if m == "bot" or m.startswith("bot.")]) <= 12
