"""The runtime package's public surface, and who may import it."""

from __future__ import annotations

import ast
from pathlib import Path

import actimesh.runtime

PACKAGE = Path(actimesh.runtime.__file__).parents[1]
#: The programs that start a mesh as an operator would: the only importers allowed.
ABOVE = {"runtime", "cli", "drills", "bench", "fuzz"}


def test_every_exported_name_exists_once() -> None:
    names = actimesh.runtime.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(actimesh.runtime, name), name


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def test_nothing_below_the_composition_root_imports_it() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") not in ABOVE
        and any(
            n == "actimesh.runtime" or n.startswith("actimesh.runtime.") for n in _imports(path)
        )
    ]
    assert offenders == []
