"""The agents' event loop: uvloop by default, asyncio's own loop when VZREP_UVLOOP=0."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from vzcommon.climain import asyncio_run


async def _loop_kind() -> int:
    return 1 if isinstance(asyncio.get_running_loop(), uvloop.Loop) else 0


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VZREP_UVLOOP", raising=False)
    assert asyncio_run(_loop_kind()) == 1


@pytest.mark.parametrize("value", ["0", " 0 "])
def test_asyncio_loop_on_request(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VZREP_UVLOOP", value)
    assert asyncio_run(_loop_kind()) == 0
