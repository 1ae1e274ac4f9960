"""Fixtures of the agent tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm_server import LocalModel


@pytest.fixture(scope="session")
def local_model() -> Iterator[LocalModel]:
    """A real SmolLM2-135M behind an OpenAI-compatible endpoint (``.base_url`` ends in ``/v1``, pass
    ``.model`` as the model name), started once per session as a subprocess and stopped at the end.
    Reliable for a ``tool_choice="required"`` call on a user turn and a text answer after the tool
    result; see tests/llm_server.py for what it cannot do."""
    model = LocalModel().start()
    try:
        yield model
    finally:
        model.stop()
