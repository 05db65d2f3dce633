"""Frame layout and limits.

A frame is a 12-byte header and a msgpack body::

    magic  2 bytes  b"VZ"
    version u8      FRAME_VERSION
    type    u8      MsgType
    length  u32     body length (big endian)
    crc32   u32     CRC-32 of the first 8 header bytes followed by the body

The length is checked against the connection's limit *before* any body byte is buffered, so an
oversized frame costs the receiver nothing. The CRC catches corruption the SSH layer cannot see
(bugs, buffers reused too early); SSH already authenticates the bytes in transit.
"""

from __future__ import annotations

import struct

from vzcommon.checksum import crc32  # ISA-L when installed: the frame CRC was 18 % of a full pass

from .errors import RemoteProtocolError
from .version import FRAME_VERSION

MAGIC = b"VZ"
HEADER = struct.Struct(">2sBBII")
HEADER_SIZE = HEADER.size

MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
#: Room for a message's fields around its payload.
BODY_OVERHEAD = 4096
#: Limit before the handshake has fixed the block size (a HELLO is small).
HANDSHAKE_MAX_BODY = 64 * 1024
#: Limit of any frame, whatever was negotiated.
ABSOLUTE_MAX_BODY = MAX_BLOCK_SIZE + BODY_OVERHEAD
#: Hashes per MAP_CHUNK (32 bytes each: 1 MiB of map a frame).
MAP_CHUNK_ENTRIES = 32768


def encode_frame(msg_type: int, body: bytes) -> bytes:
    head = struct.pack(">2sBBI", MAGIC, FRAME_VERSION, msg_type, len(body))
    crc = crc32(body, crc32(head))
    return head + struct.pack(">I", crc) + body


def parse_header(header: bytes | bytearray | memoryview, max_body: int) -> tuple[int, int, int]:
    """Check a header; return ``(msg_type, body_length, crc)`` or raise RemoteProtocolError."""
    magic, version, msg_type, length, crc = HEADER.unpack(header)
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad frame magic {bytes(magic)!r}: the peer is not a vzrep agent")
    if version != FRAME_VERSION:
        raise RemoteProtocolError(
            f"frame version {version} from the peer, this agent speaks frame version {FRAME_VERSION}:"
            " upgrade the older agent"
        )
    if length > max_body:
        raise RemoteProtocolError(f"frame body of {length} bytes exceeds the limit of {max_body} bytes")
    return msg_type, length, crc


def check_crc(header: bytes | bytearray | memoryview, body: bytes | memoryview, crc: int) -> None:
    if crc32(body, crc32(bytes(header[:8]))) != crc:
        raise RemoteProtocolError("frame CRC mismatch: the frame was corrupted")
