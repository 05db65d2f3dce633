from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.agents import Keys, Target


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys.make(tmp_path_factory.mktemp("keys"))


@pytest.fixture
async def target(tmp_path: Path, session_keys: Keys) -> AsyncIterator[Target]:
    t = await Target(tmp_path / "data", session_keys).start()
    try:
        yield t
    finally:
        await t.stop()
