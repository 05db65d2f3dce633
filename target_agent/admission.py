"""Which unauthenticated SSH connections the target keeps (its MaxStartups), and when it says so.

Every TCP connection costs a file descriptor until it authenticates or its login times out, so a
flood of idle connections once made a real pass fail with the agent out of files, logging nothing.
Now at most :data:`MAX_PER_ADDRESS` connections from one address and :data:`MAX_TOTAL` in all may be
unauthenticated at once:

* a connection from an address that already has its share is refused (closed at once);
* when all :data:`MAX_TOTAL` are taken, the oldest unauthenticated connection of the address holding
  the most makes room, so a flood from many addresses does not lock a real source out: it loses
  only a handshake that took longer than the flood needed to open MAX_TOTAL connections.

Refusals are logged at most once per address per :data:`LOG_INTERVAL`, with how many there were.
Sans-I/O: the server (``target_agent.server``) tells it what happens and closes what it is told to;
the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

MAX_PER_ADDRESS = 10
MAX_TOTAL = 64
LOG_INTERVAL = 60.0
#: how many addresses' log times are remembered before the stale ones are dropped
_MAX_REMEMBERED = 1024


@dataclass
class Verdict:
    """What to do with a new connection: keep it (and close ``evict``, if any), or refuse it."""

    admitted: bool
    evict: Hashable | None = None
    #: the reason of a refusal or eviction, for the log
    reason: str = ""


@dataclass
class _Refusals:
    last_logged: float
    unlogged: int = 0


@dataclass
class Admission:
    per_address: int = MAX_PER_ADDRESS
    total: int = MAX_TOTAL
    log_interval: float = LOG_INTERVAL
    #: unauthenticated connections by address, oldest first
    _pending: dict[str, dict[Hashable, None]] = field(default_factory=dict)
    _address: dict[Hashable, str] = field(default_factory=dict)
    _refusals: dict[str, _Refusals] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return len(self._address)

    def admit(self, conn: Hashable, address: str) -> Verdict:
        """A new connection from ``address``: keep it unless its address has its share."""
        mine = self._pending.get(address, {})
        if len(mine) >= self.per_address:
            return Verdict(False, reason=f"{len(mine)} unauthenticated connections from this address already")
        verdict = Verdict(True)
        if len(self._address) >= self.total:
            fullest = max(self._pending.values(), key=len)
            verdict.evict = next(iter(fullest))
            verdict.reason = (
                f"{self.total} unauthenticated connections in all: the oldest of the busiest address goes"
            )
            self.done(verdict.evict)
        self._pending.setdefault(address, {})[conn] = None
        self._address[conn] = address
        return verdict

    def done(self, conn: Hashable) -> None:
        """The connection authenticated or closed: it no longer counts (idempotent)."""
        address = self._address.pop(conn, None)
        if address is None:
            return
        mine = self._pending[address]
        del mine[conn]
        if not mine:
            del self._pending[address]

    def address_of(self, conn: Hashable) -> str | None:
        return self._address.get(conn)

    def refused(self, address: str, now: float) -> int:
        """Count a refusal (or eviction) for ``address``; returns how many to log now, 0 for none.

        The first refusal is logged at once, then at most one line per ``log_interval`` with the count
        since the last line.
        """
        entry = self._refusals.get(address)
        if entry is None:
            if len(self._refusals) >= _MAX_REMEMBERED:
                self._forget(now)
            self._refusals[address] = _Refusals(now)
            return 1
        entry.unlogged += 1
        if now - entry.last_logged < self.log_interval:
            return 0
        count, entry.unlogged, entry.last_logged = entry.unlogged, 0, now
        return count

    def _forget(self, now: float) -> None:
        for address in [a for a, e in self._refusals.items() if now - e.last_logged >= self.log_interval]:
            del self._refusals[address]
