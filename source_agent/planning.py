"""What to read of each disk: differential by default, narrowed by CBT and/or Active Block Mapping.

The planner of a disk runs once the target said what it has (``DiskReady``). ABM's active extents
are written to ``<disk>-abbt.vztemp``; combined with a CBT filter they become
``<disk>-flat-map.vztemp`` (changed ∩ active), as in the seed's working files. The files live in the
source's work directory and are removed when the disk is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.messages import DiskReady
from source_agent.disks.base import DiskReader
from source_agent.filters.extents import ExtentList
from vzcommon.log import get_logger


@dataclass(frozen=True)
class Plan:
    """Which blocks of a disk to read this pass; None reads every block (differential)."""

    filter: ExtentList | None = None
    mode: str = "differential"
    reason: str = ""


#: decides a disk's plan once the target said what it has (DISK_READY)
Planner = Callable[[DiskReady], Awaitable[Plan]]


log = get_logger("vzrep.source.planning")


@dataclass(frozen=True)
class AbmSettings:
    enabled: bool = False
    skip_swap: bool = True
    skip_pagefile: bool = False


def with_abm(reader: DiskReader, work_dir: Path, settings: AbmSettings, inner: Planner | None) -> Planner:
    """Wrap a disk's planner so that only active blocks (∩ the inner plan's filter) are read."""

    async def plan(ready: DiskReady) -> Plan:
        base = await inner(ready) if inner else Plan()
        if not settings.enabled:
            return base
        from source_agent.filters import abm  # the filesystem parsers load only when ABM is on
        active = await asyncio.to_thread(
            abm.active_extents, reader, skip_swap=settings.skip_swap, skip_pagefile=settings.skip_pagefile
        )
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(abm.write_active_filter, work_dir, reader.name, active, reader.size)
        if base.filter is not None:
            combined: ExtentList = await asyncio.to_thread(
                abm.combine_with_changed, work_dir, reader.name, base.filter, reader.size
            )
        else:
            combined = active
        log.info("abm", disk=reader.name, active=active.total, size=reader.size)
        return Plan(filter=combined, mode=f"{base.mode}+abm", reason=base.reason)

    return plan


def cleanup(work_dir: Path, disk: str) -> None:
    from source_agent.filters.abm import remove_filters

    remove_filters(work_dir, disk)
