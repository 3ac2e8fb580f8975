"""The package's shape: dependencies point one way, and every package names its exports.

docs/ARCHITECTURE.md draws the layers below. A new top-level package or module must be
placed in one of them, and may import only from the layers before it (and from itself):
the test names the file and the import that breaks the rule.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import actimesh

SOURCE = Path(actimesh.__file__).parent

#: Lower layers first. Units of one layer do not import one another.
LAYERS: tuple[frozenset[str], ...] = (
    # Foundations that know nothing about cameras.
    frozenset({"actimesh", "errors", "lifeline", "private", "stats"}),
    # The wire contract (topics, payloads) and the transports that carry it.
    frozenset({"broker"}),
    frozenset({"security"}),
    # Device protocols besides actimesh's own (OwnTracks, OsmAnd, NMEA 0183).
    frozenset({"adapters"}),
    frozenset({"geofence"}),
    # Shared storage: the activation ledger and its hash chain.
    frozenset({"ledger"}),
    frozenset({"triggers"}),
    frozenset({"devices"}),
    # HTTP serving, under the web parts.
    frozenset({"listener"}),
    frozenset({"evidence"}),
    frozenset({"audit"}),
    frozenset({"dispatch"}),
    # The composition root: reads the settings and builds a running mesh.
    frozenset({"runtime"}),
    # The programs that use it as an operator would.
    frozenset({"drills", "bench", "fuzz"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)
_RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    """``actimesh.triggers.engine`` -> ``triggers``; ``actimesh`` -> ``actimesh``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SOURCE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every actimesh import in ``path``, type-only and local ones too."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base]
        else:
            continue
        for name in names:
            if name == "actimesh" or name.startswith("actimesh."):
                yield node.lineno, name


def _sources() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def test_every_top_level_package_and_module_has_a_layer() -> None:
    units = {_unit(_module_of(path)) for path in _sources()}
    assert units - _RANK.keys() == set(), "place it in LAYERS (and in docs/ARCHITECTURE.md)"


def test_dependencies_point_one_way() -> None:
    wrong = []
    for path in _sources():
        here = _unit(_module_of(path))
        for line, name in _imports(path):
            there = _unit(name)
            if there != here and _RANK[there] >= _RANK[here]:
                wrong.append(f"{path.relative_to(SOURCE)}:{line} ({here}) imports {name}")
    assert wrong == []


def _packages() -> list[str]:
    inside = pkgutil.walk_packages(actimesh.__path__, "actimesh.")
    return ["actimesh", *(info.name for info in inside if info.ispkg)]


def _ruff_order(name: str) -> tuple[bool, bool, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    return (not name.isupper(), not name[:1].isupper(), name)


@pytest.mark.parametrize("name", _packages())
def test_every_package_names_its_exports_once_in_order(name: str) -> None:
    package = importlib.import_module(name)
    exported = getattr(package, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported, key=_ruff_order)
    assert len(set(exported)) == len(exported)
    for member in exported:
        assert hasattr(package, member), f"{name}.{member}"


@pytest.mark.parametrize("name", _packages())
def test_a_package_exports_what_it_defines(name: str) -> None:
    """A package re-exports its own modules' classes and functions, never a neighbour's:
    an importer finds a thing where it lives."""
    package = importlib.import_module(name)
    foreign = [
        member
        for member in package.__all__
        if inspect.isclass(getattr(package, member)) or inspect.isfunction(getattr(package, member))
        if not getattr(getattr(package, member), "__module__", name).startswith(name)
    ]
    assert foreign == []
