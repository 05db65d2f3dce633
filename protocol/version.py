"""Versions on the wire.

``FRAME_VERSION`` is the framing layout (header fields); ``PROTOCOL_VERSION`` is the message set and
its meaning, exchanged in the handshake. Either mismatch fails with both versions named.
"""

from __future__ import annotations

FRAME_VERSION = 1
PROTOCOL_VERSION = 5  # 2: DISK_READY says whether the target rebuilt the map; 3: KEEPALIVE;
# 4: HELLO carries the job id, the job rule (require_replica), the job's retention and the pass mode
# (verify, repair); DISK_READY the blocks whose bytes differ from the map; 5: control sessions (HELLO
# mode "control", REQUEST, REPLICA_STATE): a source asks for its replica's restore points and failover
# state, and starts or ends a test failover
