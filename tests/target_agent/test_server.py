"""The target's SSH server: authorized keys are read per connection; an unpaired target starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from source_agent.tunnel import TargetSpec, open_tunnel
from target_agent.server import start_server
from tests.support.agents import Keys
from vzcommon.errors import AuthError
from vzcommon.keys import known_hosts_line


async def test_empty_authorized_keys_then_pairing_without_restart(tmp_path: Path, session_keys: Keys) -> None:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("")  # an unpaired appliance

    async def handler(stream, peer) -> None:
        await stream.close()

    server, port = await start_server(handler, "127.0.0.1", 0, session_keys.host_key, authorized)
    try:
        kh = tmp_path / "kh"
        kh.write_text(known_hosts_line("127.0.0.1", port, session_keys.host_pub) + "\n")
        spec = TargetSpec("127.0.0.1", port, session_keys.client_key, kh)
        with pytest.raises(AuthError):
            await open_tunnel(spec)
        # Pairing writes the source's key: the very next connection gets in, no restart.
        authorized.write_text(session_keys.authorized_keys.read_text())
        tunnel = await open_tunnel(spec)
        await tunnel.close()
        # Unpairing removes it again.
        authorized.write_text("# nobody\n")
        with pytest.raises(AuthError):
            await open_tunnel(spec)
    finally:
        server.close()
        await server.wait_closed()
