"""Fixtures of the unit tests."""
from __future__ import annotations

import pytest

from tests.unit.scripted_http import ScriptedServer


@pytest.fixture
def serve():
    """Start a ScriptedServer with its replies; every one started is stopped after the test."""
    servers = []

    def start(*replies) -> ScriptedServer:
        servers.append(ScriptedServer(list(replies)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
