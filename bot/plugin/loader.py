"""Finding and importing plugin code: ``plugin_dirs`` from the config, the bundled plugins, and the
``ratchet.plugins`` entry point group, in that order (so an operator can override a bundled plugin by name).

The bundled plugins live in the repository's top-level ``plugins/`` folder; the wheel ships that folder inside the
``bot`` package as ``bot/bundled_plugins/`` (see setup.py), never as a top-level ``plugins`` package. An installed
wheel finds them there, a checkout or an editable install in ``plugins/`` next to ``bot/`` (:func:`bundled_dir`).

Plugins from folders are imported under the synthetic package ``ratchet_plugins`` so that they never shadow or
collide with installed modules, and so that a reload can drop exactly their modules from ``sys.modules``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from bot.errors import PluginLoadError
from bot.plugin.base import Plugin

__all__ = ["BUNDLED_DIR", "PluginLoadError", "available_plugins", "bundled_dir", "import_plugin"]

#: Where an installed wheel keeps the bundled plugins: inside the ``bot`` package.
PACKAGED_DIR_NAME = "bundled_plugins"
#: Where a checkout (or an editable install) has them: the repository's ``plugins/`` folder next to ``bot/``.
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "plugins"


def bundled_dir() -> Path:
    """The folder of the bundled plugins: ``bot/bundled_plugins`` in an installed wheel, else the checkout's
    ``plugins/`` folder. If neither exists (a broken install), the packaged place, so that errors name it."""
    packaged = Path(str(importlib.resources.files("bot") / PACKAGED_DIR_NAME))
    if packaged.is_dir():
        return packaged
    if CHECKOUT_DIR.is_dir():
        return CHECKOUT_DIR
    return packaged


#: The folder of the bundled plugins (see :func:`bundled_dir`).
BUNDLED_DIR = bundled_dir()
_NAMESPACE = "ratchet_plugins"
ENTRY_POINT_GROUP = "ratchet.plugins"


def _ensure_namespace() -> None:
    if _NAMESPACE not in sys.modules:
        pkg = types.ModuleType(_NAMESPACE)
        pkg.__path__ = []  # a package with no files of its own
        sys.modules[_NAMESPACE] = pkg


def _find_in_dir(directory: Path, name: str) -> Path | None:
    package = directory / name / "__init__.py"
    if package.is_file():
        return package
    module = directory / f"{name}.py"
    return module if module.is_file() else None


def available_plugins(plugin_dirs: Sequence[Path] = ()) -> dict[str, str]:
    """Every plugin name that can be loaded, mapped to where it comes from."""
    found: dict[str, str] = {}
    for directory in [*plugin_dirs, BUNDLED_DIR]:
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            name = entry.stem if entry.suffix == ".py" else entry.name
            if name.startswith(("_", ".")) or name in found:
                continue
            if _find_in_dir(directory, name):
                found[name] = str(directory)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"entry point {ep.value}")
    return found


def _forget(module_name: str) -> None:
    for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
        del sys.modules[key]


def _drop_bytecode(path: Path) -> None:
    """Remove the cached bytecode of a plugin's files before it is imported again.

    Python trusts a ``.pyc`` whose recorded source mtime (whole seconds) and size match: an edit of the same size
    within the same second as the previous import would reload the old code. A folder that cannot be written
    (an installed package) is left alone.
    """
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    for source in files[:1000]:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            os.unlink(importlib.util.cache_from_source(str(source)))


def _import_file(name: str, path: Path) -> types.ModuleType:
    _ensure_namespace()
    module_name = f"{_NAMESPACE}.{name}"
    if module_name in sys.modules:  # a reload
        _drop_bytecode(path)
    _forget(module_name)
    importlib.invalidate_caches()
    locations = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(module_name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"plugin {name}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _forget(module_name)
        raise
    return module


def _plugin_class(name: str, module: types.ModuleType) -> type[Plugin]:
    explicit = getattr(module, "__plugin__", None)
    if explicit is not None:
        if not (inspect.isclass(explicit) and issubclass(explicit, Plugin)):
            raise PluginLoadError(f"plugin {name}: __plugin__ is not a Plugin subclass")
        return explicit
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Plugin)
        and obj is not Plugin
        and obj.__module__.startswith(module.__name__)
    ]
    if len(candidates) != 1:
        what = "no Plugin subclass" if not candidates else "several Plugin subclasses"
        raise PluginLoadError(f"plugin {name}: module defines {what}; set __plugin__ = YourClass")
    return candidates[0]


def import_plugin(name: str, plugin_dirs: Sequence[Path] = ()) -> type[Plugin]:
    """Import (or re-import, for a reload) plugin ``name`` and return its Plugin class."""
    for directory in [*plugin_dirs, BUNDLED_DIR]:
        path = _find_in_dir(directory, name)
        if path is not None:
            return _plugin_class(name, _import_file(name, path))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            module_name = ep.value.split(":")[0]
            _forget(module_name)
            target = ep.load()
            if inspect.isclass(target) and issubclass(target, Plugin):
                return target
            if isinstance(target, types.ModuleType):
                return _plugin_class(name, target)
            raise PluginLoadError(f"plugin {name}: entry point {ep.value} is not a Plugin class or module")
    raise PluginLoadError(
        f"plugin {name}: not found (looked in {', '.join(str(d) for d in [*plugin_dirs, BUNDLED_DIR])} "
        f"and the '{ENTRY_POINT_GROUP}' entry points)"
    )
