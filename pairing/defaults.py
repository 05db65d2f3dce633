"""The defaults of the pairing commands: ports, and where a paired appliance keeps keys and pins.

They are the appliance's: its first boot takes the ports from here, and its layout puts the keys in
the same place (``tests/appliance/test_layout.py`` holds the two together).
"""

from __future__ import annotations

from pathlib import Path

AGENT_PORT = 2222  # the target agent's port, offered to the source when pairing
PAIRING_PORT = 2223
KEYS_DIR = Path("/var/lib/vzrep/keys")
