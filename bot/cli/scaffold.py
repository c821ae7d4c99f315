"""``ratchet new-plugin NAME``: write a working plugin, its end-to-end test and the pytest configuration to run it."""

from __future__ import annotations

import re
from pathlib import Path

from bot.errors import ScaffoldError

__all__ = ["ScaffoldError", "new_plugin"]

_PLUGIN = '''"""{name}: a Ratchet plugin. Describe here what it does; the first line is shown by !plugins."""

from __future__ import annotations

from dataclasses import dataclass

from bot import Context, Plugin, command


class {cls}(Plugin):
    """Greets people. Replace this with what your plugin does."""

    @dataclass(frozen=True)
    class Config:
        """Options from `plugins: {{{name}: {{...}}}}` in the bot's config, with their defaults."""

        greeting: str = "Hello"

    @command("{name}", help="Greet someone (or yourself)")
    async def greet(self, ctx: Context, who: str | None = None) -> None:
        await ctx.reply(f"{{self.config.greeting}}, {{who or ctx.sender}}!")
'''

_TEST = '''"""End-to-end test of the {name} plugin: a real Synapse, a real bot, an encrypted room.

Run `pytest` in the plugin's folder (needs `pip install 'matrix-ratchet[testing]'`): its pytest.ini runs async tests
without markers. The `ratchet` fixture comes from Ratchet's test kit (see "Testing" in Ratchet's docs/plugins.md).
"""

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[2]  # the folder that holds the {name}/ package


async def test_{name}_greets(ratchet):
    room = await ratchet.room(plugins={{"{name}": {{"greeting": "Hi"}}}}, plugin_dirs=[PLUGIN_DIR])
    reply = await room.ask("!{name} world")
    assert reply.decrypted, "the answer was encrypted"
    assert reply.body == "Hi, world!"
    # Other messages get no answer (this waits the whole 2 seconds).
    chatter = await room.send("just chatting")
    await room.expect_no_reply(chatter, within=2)


async def test_{name}_usage_on_bad_arguments(ratchet):
    room = await ratchet.room(plugins={{"{name}": {{}}}}, plugin_dirs=[PLUGIN_DIR])
    reply = await room.ask('!{name} "unclosed')
    assert "Usage: !{name}" in reply.body
'''

#: pytest settings for the plugin's tests: async tests without markers, one event loop per test, no cache folder.
_PYTEST_INI = '''# pytest settings for the {name} plugin's tests (run `pytest` in this folder).
[pytest]
testpaths = tests
# async def tests and fixtures run without @pytest.mark.asyncio
asyncio_mode = auto
# one event loop per test (set explicitly: pytest-asyncio warns when these are unset)
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
addopts = -p no:cacheprovider
'''


def new_plugin(name: str, directory: Path) -> list[Path]:
    """Create ``directory/NAME/__init__.py``, ``directory/NAME/tests/test_NAME.py`` and
    ``directory/NAME/pytest.ini`` (``pytest`` in ``directory/NAME`` runs the tests, no warnings); returns the files."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ScaffoldError(f"'{name}' is not a plugin name: use lowercase letters, digits and underscores")
    target = directory / name
    if target.exists():
        raise ScaffoldError(f"{target} already exists")
    cls = "".join(part.capitalize() for part in name.split("_")) or "MyPlugin"
    (target / "tests").mkdir(parents=True)
    files = [target / "__init__.py", target / "tests" / f"test_{name}.py", target / "pytest.ini"]
    files[0].write_text(_PLUGIN.format(name=name, cls=cls))
    files[1].write_text(_TEST.format(name=name))
    files[2].write_text(_PYTEST_INI.format(name=name))
    return files
