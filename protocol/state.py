"""The session state machine, one transition table for the whole conversation.

Rules:

* Both connections (source and target) track the *same* conversation state, each applying the
  messages it sends and the messages it receives, in order. The conversation is half duplex: in every
  state exactly one side may speak, except ERROR, which either side may send at any time.
* A (state, sender, message type) triple missing from :data:`TRANSITIONS` is a protocol error: the
  remote's if the remote sent it, ours if we tried to send it. The connection then stays in ERROR.
* DONE and ERROR are terminal.

The conversation::

    S: HELLO  T: WELCOME
    ( S: KEEPALIVE*  S: OPEN_DISK  T: DISK_READY  T: MAP_CHUNK*  T: MAP_END
      S: (BLOCK | ZERO_RANGE | KEEPALIVE)*  S: DISK_END )*
    S: KEEPALIVE*  S: COMMIT  T: COMMITTED

KEEPALIVE changes nothing: the source sends it, in a state where it is the one to speak, when it has
had nothing else to send for a while (the target ends a pass whose source stays silent).
"""

from __future__ import annotations

from enum import Enum

from .messages import MsgType


class Role(Enum):
    SOURCE = "source"
    TARGET = "target"


class State(Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_WELCOME = "await-welcome"
    IDLE = "idle"
    OPENING = "opening"
    MAP = "map"
    STREAMING = "streaming"
    COMMITTING = "committing"
    DONE = "done"
    ERROR = "error"


S, T = Role.SOURCE, Role.TARGET

TRANSITIONS: dict[tuple[State, Role, MsgType], State] = {
    (State.AWAIT_HELLO, S, MsgType.HELLO): State.AWAIT_WELCOME,
    (State.AWAIT_WELCOME, T, MsgType.WELCOME): State.IDLE,
    (State.IDLE, S, MsgType.OPEN_DISK): State.OPENING,
    (State.OPENING, T, MsgType.DISK_READY): State.MAP,
    (State.MAP, T, MsgType.MAP_CHUNK): State.MAP,
    (State.MAP, T, MsgType.MAP_END): State.STREAMING,
    (State.STREAMING, S, MsgType.BLOCK): State.STREAMING,
    (State.STREAMING, S, MsgType.ZERO_RANGE): State.STREAMING,
    (State.STREAMING, S, MsgType.DISK_END): State.IDLE,
    (State.STREAMING, S, MsgType.KEEPALIVE): State.STREAMING,
    (State.IDLE, S, MsgType.KEEPALIVE): State.IDLE,
    (State.IDLE, S, MsgType.COMMIT): State.COMMITTING,
    (State.COMMITTING, T, MsgType.COMMITTED): State.DONE,
}

TERMINAL = frozenset({State.DONE, State.ERROR})


def next_state(state: State, sender: Role, msg_type: MsgType) -> State | None:
    """The state after ``sender`` sends ``msg_type`` in ``state``; None if not allowed."""
    if msg_type is MsgType.ERROR:
        return State.ERROR if state is not State.DONE else None
    return TRANSITIONS.get((state, sender, msg_type))
