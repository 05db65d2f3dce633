"""The one place msgpack is used: fixed options, and a bounded decoder for untrusted bodies.

Messages travel as msgpack arrays of their fields (no field names on the wire). Decoding refuses
trailing bytes, maps, extension types and over-long containers.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import RemoteProtocolError

_MAX_ITEMS = 4096


def pack(fields: list[Any]) -> bytes:
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


def unpack(body: bytes | memoryview) -> list[Any]:
    """Decode a frame body into its field list, or raise RemoteProtocolError."""
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=len(body),
            max_str_len=min(len(body), 64 * 1024),
            max_array_len=_MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RemoteProtocolError(f"undecodable message body: {exc}") from None
    except Exception as exc:  # msgpack raises a few odd ones on hostile input (e.g. UnicodeDecodeError)
        raise RemoteProtocolError(f"undecodable message body: {type(exc).__name__}") from None
    if not isinstance(value, list):
        raise RemoteProtocolError("message body is not a field list")
    return value
