"""The server API fuzzed from its own OpenAPI document with schemathesis (valid and invalid
bodies, wrong methods, a missing key) against a real server process: no 500, no traceback,
every answer as the document says (status, content type, schema: every refusal one of the
documented JSON errors); and the key comparison, which must not depend on the key given."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.web import api
from server.web.app import create_app
from tests.chat import sample, settings
from tests.support.processes import Process, run_server

KEY = "fuzz-key-0123456789abcdef"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
)
"""Everything schemathesis checks that applies to a stateless API, but
``positive_data_acceptance``: a member name's rule (Unicode categories, docs/protocol.md) is
wider than any pattern the document can state, so schema-valid names can still be refused."""
EXAMPLES = 100  # test cases per method and phase


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[Process]:
    with run_server(tmp_path, quote_provider="sim", api_key=KEY) as server:
        yield server


def schemathesis_bin() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is in the test extra (pyproject.toml)"
    return found


def test_fuzzing_the_api_from_its_document_finds_no_failure(
    fuzzed: Process, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            schemathesis_bin(),
            "run",
            f"{fuzzed.url}/api/v1/openapi.json",
            "--header",
            f"X-API-Key: {KEY}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "22",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated[1]) > 500, result.stdout[-2000:]
    assert "Traceback" not in fuzzed.output()
    assert "api_failed" not in fuzzed.output()


async def test_the_key_comparison_sees_only_fixed_length_digests(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(api.hmac, "compare_digest", compare_digest)
    server: TestClient = await aiohttp_client(create_app(settings(api_key=KEY)))
    wrong = ["", "x", KEY[:-1], KEY + "x", "y" * 4000]
    for given in [*wrong, KEY]:
        await server.post("/api/v1/rooms", json={}, headers={"X-API-Key": given})
    assert len(compared) == len(wrong) + 1
    assert {(len(a), len(b)) for a, b in compared} == {(32, 32)}
    assert {b for _, b in compared} == {hashlib.sha256(KEY.encode()).digest()}


async def test_every_wrong_key_is_counted_as_unauthorized(aiohttp_client: Any) -> None:
    server: TestClient = await aiohttp_client(create_app(settings(api_key=KEY)))
    before = sample("chat_api_requests_total", method="publish", result="unauthorized")
    for given in ("a", "b" * 40, KEY.upper()):
        response = await server.post(
            "/api/v1/publish", json={"room": "a", "text": "x"}, headers={"X-API-Key": given}
        )
        assert response.status == 401
    assert sample("chat_api_requests_total", method="publish", result="unauthorized") == before + 3
