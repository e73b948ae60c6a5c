"""Fixtures shared by the suite: real processes (tests.support.processes) and the in-process app."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.web.app import create_app
from tests.chat import settings

pytest_plugins = ["tests.support.processes"]


@pytest.fixture
def make_server(aiohttp_client: Any):
    """``await make_server(**overrides)``: the app with test settings, behind a test client."""

    async def make(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(settings(**overrides)))

    return make
