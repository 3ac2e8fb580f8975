"""The payload schemas of ``docs/asyncapi.yaml``, generated from the pydantic models.

``docs/asyncapi.yaml`` documents the wire contract. Its prose (servers, channels,
operations, messages) is written by hand; its ``components.schemas`` section is the JSON
Schema of the models in :mod:`actimesh.broker.messages` and is generated. After changing
a model, regenerate it with::

    .venv/bin/python -m actimesh.broker.asyncapi

which rewrites only that section and leaves the rest of the file as it is; ``--check``
exits 1 instead if the file is out of date. ``tests/broker/test_asyncapi.py`` fails
while the two disagree. The command needs PyYAML (a dev dependency); the package itself
only needs :func:`payload_schemas`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from actimesh.broker.messages import MESSAGE_TYPES

__all__ = ["REF_TEMPLATE", "main", "payload_schemas", "replace_schemas"]

#: Where the schemas live in an AsyncAPI document.
REF_TEMPLATE = "#/components/schemas/{model}"

_DOC = Path("docs/asyncapi.yaml")  # run from the repository root
_SCHEMAS_HEADER = "  schemas:"
_INDENT = "    "


def payload_schemas() -> dict[str, Any]:
    """``components.schemas``: every payload model and the enums and models it nests.

    Validation mode: this is what :func:`actimesh.broker.codec.decode` accepts. References
    point into ``#/components/schemas``, so the section can be pasted as it is.
    """
    mode: JsonSchemaMode = "validation"
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, mode) for model in MESSAGE_TYPES.values()
    ]
    _, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def replace_schemas(document: str, schemas_yaml: str) -> str:
    """``document`` with the body of ``components.schemas`` replaced by ``schemas_yaml``.

    The body is every line after ``  schemas:`` up to the next line indented less than
    four spaces; ``schemas_yaml`` is indented into place.
    """
    lines = document.splitlines()
    try:
        components = lines.index("components:")
        start = lines.index(_SCHEMAS_HEADER, components) + 1
    except ValueError:
        raise ValueError("no `components:` with `  schemas:` under it") from None
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(_INDENT)):
        end += 1
    while end > start and not lines[end - 1].strip():  # keep blank lines before the next key
        end -= 1
    body = [_INDENT + line if line else line for line in schemas_yaml.splitlines()]
    return "\n".join([*lines[:start], *body, *lines[end:]]) + "\n"


def _regenerate(document: str) -> str:
    """``document`` with fresh ``components.schemas``; ValueError if that cannot be done."""
    import yaml  # a dev dependency: only this command needs it  # noqa: PLC0415

    schemas = payload_schemas()
    dumped = yaml.safe_dump(schemas, sort_keys=False, allow_unicode=True, width=88)
    new = replace_schemas(document, dumped)
    try:
        placed = yaml.safe_load(new)["components"]["schemas"]
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML ({exc})") from exc
    if placed != schemas:
        raise ValueError("components.schemas could not be put in place")
    return new


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check``, verify) ``components.schemas`` of the AsyncAPI doc."""
    parser = argparse.ArgumentParser(
        prog="python -m actimesh.broker.asyncapi", description=main.__doc__
    )
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("path", nargs="?", type=Path, default=_DOC, help="AsyncAPI file")
    args = parser.parse_args(argv)
    path: Path = args.path
    try:
        old = path.read_text()
        new = _regenerate(old)
    except FileNotFoundError:
        _say(f"{path} not found: run this from the repository root")
        return 2
    except ValueError as exc:
        _say(f"{path}: {exc}")
        return 2
    if new == old:
        return 0
    if args.check:
        _say(f"{path} is out of date: run `.venv/bin/python -m actimesh.broker.asyncapi`")
        return 1
    path.write_text(new)
    _say(f"{path}: components.schemas regenerated")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)  # noqa: T201 (a command-line tool)


if __name__ == "__main__":
    sys.exit(main())
