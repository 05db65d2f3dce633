"""The session state machine, one transition table for the whole conversation.

Rules:

* Both connections (source and target) track the *same* conversation state, each applying the
  messages it sends and the messages it receives, in order. The conversation is half duplex: in every
  state exactly one side may speak, except ERROR, which either side may send at any time.
* A (state, sender, message type) triple missing from the conversation's table is a protocol error:
  the remote's if the remote sent it, ours if we tried to send it. The connection then stays in ERROR.
* HELLO's mode picks the table: :data:`CONTROL_TRANSITIONS` for mode "control", else
  :data:`TRANSITIONS`. Both begin with the same HELLO, so a peer learns which one it is in from it.
* DONE and ERROR are terminal.

A pass::

    S: HELLO  T: WELCOME
    ( S: KEEPALIVE*  S: OPEN_DISK  T: DISK_READY  T: MAP_CHUNK*  T: MAP_END
      S: (BLOCK | ZERO_RANGE | KEEPALIVE)*  S: DISK_END )*
    S: KEEPALIVE*  S: COMMIT  T: COMMITTED

A control session (protocol 5: the source asks about its replica; nothing is replicated)::

    S: HELLO(mode="control")  T: WELCOME  S: REQUEST  T: REPLICA_STATE

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
    CONTROL = "control"  # a control session after WELCOME: the source asks
    ANSWERING = "answering"  # the target carries the request out, then answers
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

CONTROL_TRANSITIONS: dict[tuple[State, Role, MsgType], State] = {
    (State.AWAIT_HELLO, S, MsgType.HELLO): State.AWAIT_WELCOME,
    (State.AWAIT_WELCOME, T, MsgType.WELCOME): State.CONTROL,
    (State.CONTROL, S, MsgType.REQUEST): State.ANSWERING,
    (State.ANSWERING, T, MsgType.REPLICA_STATE): State.DONE,
}

TERMINAL = frozenset({State.DONE, State.ERROR})

Table = dict[tuple[State, Role, MsgType], State]


def next_state(state: State, sender: Role, msg_type: MsgType, table: Table = TRANSITIONS) -> State | None:
    """The state after ``sender`` sends ``msg_type`` in ``state``; None if not allowed."""
    if msg_type is MsgType.ERROR:
        return State.ERROR if state is not State.DONE else None
    return table.get((state, sender, msg_type))
