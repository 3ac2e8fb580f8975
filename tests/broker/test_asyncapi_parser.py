"""docs/asyncapi.yaml passes the official AsyncAPI parser (npm ``@asyncapi/parser``, the
one the AsyncAPI CLI and Studio use), not only our own reading of it: any diagnostic of
error severity fails. The parser comes from package-lock.json (``make web-deps``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
SCRIPT = Path(__file__).with_name("asyncapi_parse.mjs")
PARSER = ROOT / "node_modules" / "@asyncapi" / "parser" / "package.json"
#: Spectral's severities: 0 error, 1 warning, 2 information, 3 hint.
ERROR = 0

pytestmark = pytest.mark.time_limit(120)


def _parse(path: Path) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    assert node is not None, "node is not installed: run `make system-deps`"
    assert PARSER.is_file(), f"{PARSER.parent} is missing: run `make web-deps` (npm ci)"
    done = subprocess.run(
        [node, str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the parser printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.returncode, lines


def test_the_official_parser_finds_no_error() -> None:
    code, lines = _parse(DOC_PATH)
    *diagnostics, summary = lines
    errors = [d for d in diagnostics if d["severity"] == ERROR]
    assert not errors, "\n".join(f"{d['code']} at {d['path']}: {d['message']}" for d in errors)
    assert summary == {"parsed": True, "errors": 0}
    assert code == 0


def test_the_check_fails_on_a_broken_document(tmp_path: Path) -> None:
    # The same document with one channel's address made a number and a message reference
    # that leads nowhere: the parser must report both as errors, or the test above
    # could not fail.
    text = DOC_PATH.read_text(encoding="utf-8")
    broken = text.replace(
        "address: am/v1/{agency}/dev/{device}/telemetry", "address: 42", 1
    ).replace("$ref: '#/components/parameters/agency'", "$ref: '#/components/parameters/nope'", 1)
    assert broken != text
    path = tmp_path / "broken.yaml"
    path.write_text(broken, encoding="utf-8")
    code, lines = _parse(path)
    assert code == 1
    assert any(d.get("severity") == ERROR for d in lines[:-1]), lines
