"""Packaging glue that pyproject.toml cannot express (everything else is in pyproject.toml).

The bundled plugins live in the repository's top-level ``plugins/`` folder, but the wheel ships them inside the
project's own package, as ``bot/bundled_plugins/NAME/``: a top-level ``plugins`` package in site-packages would
collide with other projects. ``bot.plugin.loader.bundled_dir`` finds them there in an installed wheel, and in
``plugins/`` in a checkout or an editable install. Files of a plugin that are not Python (templates, data) ship
too.
"""

from setuptools import find_packages, setup

BUNDLED = "bot.bundled_plugins"

setup(
    packages=[
        *find_packages(include=["bot", "bot.*"]),
        BUNDLED,
        *(f"{BUNDLED}.{name}" for name in find_packages("plugins")),
    ],
    package_dir={BUNDLED: "plugins"},
    package_data={BUNDLED: ["**/*"]},
    exclude_package_data={"": ["*.pyc", "*.pyo", "*/__pycache__/*"]},
)
