"""Lists the packages under the three code folders; the rest of the metadata is in pyproject.toml.

The folders install as ``agentstream.schemas``, ``agentstream.producer`` and
``agentstream.consumers`` (``package-dir`` in pyproject.toml); every sub-package with an
``__init__.py`` is found here, so adding one needs no edit.
"""

import os

from setuptools import setup

# Folders of package data: listed as (namespace) packages so setuptools ships them quietly.
DATA_FOLDERS = {"jsonschema"}
ROOTS = {
    "agentstream.schemas": "schemas",
    "agentstream.producer": "producer",
    "agentstream.consumers": "consumers",
}


def packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            if "__init__.py" in files or os.path.basename(root) in DATA_FOLDERS:
                rel = os.path.relpath(root, folder)
                found.append(name if rel == "." else f"{name}.{rel.replace(os.sep, '.')}")
    return found


setup(packages=packages())
