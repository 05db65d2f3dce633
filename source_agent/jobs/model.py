"""A job file: one target, a set of VMs, one set of options (README, "Jobs").

The file is TOML, read with ``tomllib``; every problem is reported as ``FILE:LINE: KEY: what is
wrong`` (the lines come from :mod:`.lines`). Loading checks the file alone -- types, ranges, names,
which keys may go together -- and touches nothing it names; ``job check`` (:mod:`.check`) then looks
at the disks, keys and target.

The job's id is a UUID in the file (``id = "..."``): ``vzrep-source job new`` writes it, and a file
without one is refused with a fresh one to paste. It lives in the file because the file is the job:
copied to another source appliance, or renamed, it is still the same job, and the restore points
the target tagged with it still say which job made them.

Relative paths are relative to the job file's directory; ``~`` is expanded.
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.framing import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from protocol.messages import MAX_RESTORE_POINTS, NAME_RULE, valid_name
from vzcommon.errors import InputError

from ..disks import parse_disk_spec
from .lines import Path as KeyPath
from .lines import key_lines, line_of
from .schedule import Schedule, parse_schedule

COMPRESS = ("auto", "zstd", "none")
MAX_PARALLEL = 64


class JobFileError(InputError):
    """A job file that cannot be used; ``problems`` lists every one, each naming its line and key."""

    def __init__(self, problems: list[str]) -> None:
        more = (
            f" (and {len(problems) - 1} more: `vzrep-source job check` lists them)"
            if len(problems) > 1
            else ""
        )
        super().__init__(problems[0] + more)
        self.problems = problems


#: where a source appliance keeps its keys and its pairing record (appliance.layout: keys_dir)
APPLIANCE_KEYS = Path("/var/lib/vzrep/keys")


@dataclass(frozen=True)
class TargetConf:
    host: str
    port: int
    identity: Path
    known_hosts: Path
    user: str = "vzrep"
    #: ``paired = true``: the target this appliance paired with, read from this keys directory's
    #: ``peer.json`` when a pass starts (so a re-pairing needs no edit); host/port/keys then empty
    paired: Path | None = None

    def resolve(self) -> TargetConf:
        """The target to connect to: this one, or the paired one as its keys directory records it now."""
        if self.paired is None:
            return self
        from pairing import pins

        peer = pins.load(self.paired / "peer.json")
        if peer is None or peer.role != "target":
            raise InputError(
                f"the job's target is the paired target, but {self.paired} records no paired target"
                " (no peer.json): pair this appliance first (console, or `vzrep-source pair`)"
            )
        host, _, port = peer.address.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(
                f"{self.paired / 'peer.json'}: the paired target's address {peer.address!r} is not HOST:PORT"
            )
        return TargetConf(
            host.strip("[]"), int(port), self.paired / "id_ed25519", self.paired / "known_hosts", self.user
        )


@dataclass(frozen=True)
class VCenterConf:
    """How vSphere VMs of the job are reached: the options of ``vzrep-source pass --vcenter``."""

    host: str = ""
    credentials: Path | None = None
    session_token_file: Path | None = None
    thumbprint: str = ""
    cafile: Path | None = None
    insecure: bool = False
    appliance_vm: str = ""
    quiesce: bool = False
    #: as pass --appliance-uuid-file and --datastore-root (datastores mounted here: NFS, vcsim)
    appliance_uuid_file: Path | None = None
    datastore_roots: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    block_size: int = 64 << 10
    compress: str = "auto"
    abm: bool = False
    keep_swap: bool = False
    skip_pagefile: bool = False
    restore_points: int = 0  # 0: the target's own setting (serve --restore-points)
    seeding: bool = False
    mapping: bool = False
    parallel: int = 1
    state_dir: Path | None = None
    #: bandwidth rules for each pass of the job, ``RATE[@DAYS/HH:MM-HH:MM]`` (source_agent.bandwidth)
    limit: tuple[str, ...] = ()
    #: seconds a pass whose link was lost keeps reconnecting to resume (pass --resume-window)
    resume_window: float = 120.0

    @property
    def rule(self) -> bool:
        """The job rule holds: every VM must be seeded or mapped (a replica on the target) to run."""
        return self.seeding or self.mapping


@dataclass(frozen=True)
class VmConf:
    name: str
    line: int
    disks: tuple[str, ...] = ()  # ``[NAME=]PATH`` as ``pass --disk`` takes them, paths resolved
    vsphere: bool = False
    seed: dict[str, str] = field(default_factory=dict)  # disk -> seed file on the target
    map_from_vm: str = ""  # another VM's replica on the target
    map_disks: dict[str, str] = field(default_factory=dict)  # disk -> a copy's file on the target
    map_replica_vm: str = ""  # an existing vSphere VM at the DR site (a vSphere VM's mapping)

    @property
    def declared(self) -> str:
        """How the job says this VM reaches the target first: "seed", "map" or ""."""
        return (
            "seed"
            if self.seed
            else ("map" if self.map_from_vm or self.map_disks or self.map_replica_vm else "")
        )


@dataclass(frozen=True)
class Job:
    path: Path
    id: str
    name: str
    target: TargetConf
    options: Options
    vms: tuple[VmConf, ...]
    vcenter: VCenterConf | None = None
    schedule: Schedule | None = None  # [schedule]: for ``vzrep-source run`` (.schedule)


class _Reader:
    """Typed access to the parsed document; every problem is collected with its line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent
        self.lines = key_lines(text)
        self.problems: list[str] = []

    def fail(self, where: KeyPath, message: str) -> None:
        line = line_of(self.lines, where)
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in where).replace(".[", "[")
        self.problems.append(f"{self.path}:{line or '?'}: {key or '(top)'}: {message}")

    def table(self, doc: dict[str, Any], key: str, where: KeyPath, required: bool = True) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                self.fail(where, f"missing table [{'.'.join(str(p) for p in (*where, key))}]")
            return {}
        if not isinstance(value, dict):
            self.fail((*where, key), "must be a table")
            return {}
        return value

    def unknown(self, doc: dict[str, Any], known: set[str], where: KeyPath) -> None:
        for key in doc:
            if key not in known:
                self.fail((*where, key), f"unknown key (known here: {', '.join(sorted(known))})")

    def get(self, doc: dict[str, Any], key: str, kind: type, where: KeyPath, default: Any = None) -> Any:
        if key not in doc:
            if default is None:
                self.fail((*where, key), "missing")
            return default
        value = doc[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail((*where, key), f"must be an integer, not {value!r}")
            return default
        if not isinstance(value, kind):
            self.fail((*where, key), f"must be {_kind_name(kind)}, not {value!r}")
            return default
        return value

    def path_value(self, doc: dict[str, Any], key: str, where: KeyPath, required: bool = True) -> Path | None:
        value = self.get(doc, key, str, where, None if required else "")
        if not value:
            return None
        return self.resolve(value)

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p


def _kind_name(kind: type) -> str:
    names: dict[type, str] = {str: "a string", bool: "true or false", dict: "a table", list: "an array"}
    return names.get(kind, kind.__name__)


def _block_size(r: _Reader, value: Any, where: KeyPath) -> int:
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        v = value.strip().lower().removesuffix("ib").removesuffix("b")
        mult = {"k": 1 << 10, "m": 1 << 20}.get(v[-1:], 1)
        digits = v[:-1] if v[-1:] in ("k", "m") else v
        n = int(digits) * mult if digits.isdigit() else None
    if n is None or not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE or n & (n - 1):
        r.fail(where, f'must be a power of two from 64K to 4M ("64K", "1M" or bytes), not {value!r}')
        return 64 << 10
    return n


def _name_map(r: _Reader, doc: dict[str, Any], key: str, where: KeyPath) -> dict[str, str]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        r.fail((*where, key), 'must be a table of DISK = "PATH" (the disk\'s name as the source names it)')
        return {}
    out: dict[str, str] = {}
    for disk, path in value.items():
        if not valid_name(disk):
            r.fail((*where, key, disk), f"invalid disk name: {NAME_RULE}")
        elif not isinstance(path, str) or not path:
            r.fail((*where, key, disk), "must be a path on the target (a string)")
        else:
            out[disk] = path
    return out


def _target(r: _Reader, doc: dict[str, Any]) -> TargetConf:
    t = r.table(doc, "target", ())
    w: KeyPath = ("target",)
    r.unknown(t, {"host", "port", "identity", "known_hosts", "user", "paired"}, w)
    if "paired" in t:
        return _paired_target(r, t, w)
    host = r.get(t, "host", str, w, "" if not t else None) or ""
    port = r.get(t, "port", int, w, 22)
    if not 1 <= port <= 65535:
        r.fail((*w, "port"), f"must be a TCP port (1-65535), not {port}")
    identity = r.path_value(t, "identity", w, required=bool(t)) or Path()
    known = r.path_value(t, "known_hosts", w, required=bool(t)) or Path()
    return TargetConf(host, port, identity, known, r.get(t, "user", str, w, "vzrep"))


def _paired_target(r: _Reader, t: dict[str, Any], w: KeyPath) -> TargetConf:
    """``paired = true`` (this appliance's keys) or ``paired = "KEYS_DIR"``: the target pairing pinned."""
    value = t["paired"]
    keys_dir: Path | None = None
    if value is True:
        keys_dir = APPLIANCE_KEYS
    elif isinstance(value, str) and value:
        keys_dir = r.resolve(value)
    else:
        r.fail((*w, "paired"), "must be true (this appliance's pairing) or a keys directory (a string)")
    for key in ("host", "port", "identity", "known_hosts"):
        if key in t:
            r.fail((*w, key), "not with paired: the pairing record gives the target's address and keys")
    return TargetConf("", 0, Path(), Path(), r.get(t, "user", str, w, "vzrep"), paired=keys_dir)


def _options(r: _Reader, doc: dict[str, Any]) -> Options:
    o = r.table(doc, "options", (), required=False)
    w: KeyPath = ("options",)
    bools = ("abm", "keep_swap", "skip_pagefile", "seeding", "mapping")
    keys = {
        "block_size",
        "compress",
        "restore_points",
        "parallel",
        "state_dir",
        "limit",
        "resume_window",
        *bools,
    }
    r.unknown(o, keys, w)
    resume = o.get("resume_window", 120)
    if isinstance(resume, bool) or not isinstance(resume, int | float) or not 0 <= resume <= 86400:
        r.fail(
            (*w, "resume_window"), f"must be seconds, 0-86400 (0: a lost link fails the pass), not {resume!r}"
        )
        resume = 120
    block = _block_size(r, o["block_size"], (*w, "block_size")) if "block_size" in o else 64 << 10
    compress = r.get(o, "compress", str, w, "auto")
    if compress not in COMPRESS:
        r.fail((*w, "compress"), f"must be one of {', '.join(COMPRESS)}, not {compress!r}")
    points = r.get(o, "restore_points", int, w, 0)
    if not 0 <= points <= MAX_RESTORE_POINTS:
        r.fail(
            (*w, "restore_points"), f"must be 1-{MAX_RESTORE_POINTS} (0: the target's setting), not {points}"
        )
    parallel = r.get(o, "parallel", int, w, 1)
    if not 1 <= parallel <= MAX_PARALLEL:
        r.fail((*w, "parallel"), f"must be 1-{MAX_PARALLEL}, not {parallel}")
    flags = {k: r.get(o, k, bool, w, False) for k in bools}
    if (flags["keep_swap"] or flags["skip_pagefile"]) and not flags["abm"]:
        r.fail((*w, "keep_swap" if flags["keep_swap"] else "skip_pagefile"), "needs abm = true")
    return Options(
        block_size=block,
        compress=compress,
        limit=_limit(r, o, w),
        resume_window=float(resume),
        restore_points=points,
        parallel=parallel,
        state_dir=r.path_value(o, "state_dir", w, required=False),
        **flags,
    )


def _limit(r: _Reader, o: dict[str, Any], w: KeyPath) -> tuple[str, ...]:
    from source_agent.bandwidth import parse_rule

    value = o.get("limit", [])
    rules = [value] if isinstance(value, str) else value
    if not isinstance(rules, list) or not all(isinstance(x, str) for x in rules):
        r.fail((*w, "limit"), f"must be a string or an array of strings, not {value!r}")
        return ()
    for rule in rules:
        try:
            parse_rule(str(rule))
        except InputError as exc:
            r.fail((*w, "limit"), str(exc))
            return ()
    return tuple(str(x) for x in rules)


def _datastore_roots(r: _Reader, v: dict[str, Any], w: KeyPath) -> dict[str, str]:
    roots = r.get(v, "datastore_roots", dict, w, {})
    out = {}
    for ds, d in roots.items():
        if not isinstance(d, str) or not d:
            r.fail((*w, "datastore_roots", ds), "must be the directory the datastore is mounted at")
        else:
            out[ds] = str(r.resolve(d))
    return out


def _vcenter(r: _Reader, doc: dict[str, Any]) -> VCenterConf | None:
    v = r.table(doc, "vcenter", (), required=False)
    if not v:
        return None
    w: KeyPath = ("vcenter",)
    known = {
        "host",
        "credentials",
        "session_token_file",
        "thumbprint",
        "cafile",
        "insecure",
        "appliance_vm",
        "quiesce",
        "appliance_uuid_file",
        "datastore_roots",
    }
    r.unknown(v, known, w)
    conf = VCenterConf(
        host=r.get(v, "host", str, w, ""),
        credentials=r.path_value(v, "credentials", w, required=False),
        session_token_file=r.path_value(v, "session_token_file", w, required=False),
        thumbprint=r.get(v, "thumbprint", str, w, ""),
        cafile=r.path_value(v, "cafile", w, required=False),
        insecure=r.get(v, "insecure", bool, w, False),
        appliance_vm=r.get(v, "appliance_vm", str, w, ""),
        quiesce=r.get(v, "quiesce", bool, w, False),
        appliance_uuid_file=r.path_value(v, "appliance_uuid_file", w, required=False),
        datastore_roots=_datastore_roots(r, v, w),
    )
    if not (conf.host or conf.credentials or conf.session_token_file):
        r.fail(w, "give host, or credentials (a file with a host line), or session_token_file")
    if sum(bool(x) for x in (conf.thumbprint, conf.cafile, conf.insecure)) > 1:
        r.fail(w, "give at most one of thumbprint, cafile, insecure")
    return conf


def _vm(r: _Reader, i: int, v: Any, opts: Options, vcenter: VCenterConf | None) -> VmConf | None:
    w: KeyPath = ("vm", i)
    line = line_of(r.lines, w) or 0
    if not isinstance(v, dict):
        r.fail(w, "must be a table ([[vm]])")
        return None
    r.unknown(v, {"name", "disks", "vsphere", "seed", "map_from_vm", "map_disks", "map_replica_vm"}, w)
    name = r.get(v, "name", str, w) or ""
    if name and not valid_name(name):
        r.fail((*w, "name"), f"invalid VM name {name!r}: {NAME_RULE}")
    vsphere = r.get(v, "vsphere", bool, w, False)
    disks_raw = r.get(v, "disks", list, w, [])
    disks: list[str] = []
    names: set[str] = set()
    for j, spec in enumerate(disks_raw):
        if not isinstance(spec, str) or not spec:
            r.fail((*w, "disks"), f'entry {j + 1} must be "[NAME=]PATH" (a string)')
            continue
        disk, path = parse_disk_spec(spec)
        if not valid_name(disk):
            r.fail(
                (*w, "disks"),
                f"entry {j + 1} ({spec!r}): invalid disk name {disk!r}; give NAME=PATH ({NAME_RULE})",
            )
        elif disk in names:
            r.fail((*w, "disks"), f"two disks are named {disk!r}: give one of them NAME=PATH")
        names.add(disk)
        disks.append(f"{disk}={r.resolve(str(path))}")
    if vsphere == bool(disks):
        r.fail(
            w, "give either disks = [...] (local disks) or vsphere = true (a vSphere VM), not both or neither"
        )
    if vsphere and vcenter is None:
        r.fail((*w, "vsphere"), "a vSphere VM needs the job's [vcenter] table")
    seed = _name_map(r, v, "seed", w)
    map_disks = _name_map(r, v, "map_disks", w)
    map_from = r.get(v, "map_from_vm", str, w, "")
    if map_from and not valid_name(map_from):
        r.fail((*w, "map_from_vm"), f"invalid VM name {map_from!r}: {NAME_RULE}")
    map_vm = r.get(v, "map_replica_vm", str, w, "")
    if map_vm and not vsphere:
        r.fail(
            (*w, "map_replica_vm"), "maps a vSphere VM onto an existing VM: give vsphere = true, or map_disks"
        )
    if seed and not opts.seeding:
        r.fail((*w, "seed"), "the job's options have seeding = false: turn it on or drop the seed")
    if (map_from or map_disks or map_vm) and not opts.mapping:
        key = "map_from_vm" if map_from else ("map_disks" if map_disks else "map_replica_vm")
        r.fail((*w, key), "the job's options have mapping = false: turn it on or drop the mapping")
    if sum(bool(x) for x in (seed, map_from, map_disks, map_vm)) > 1:
        r.fail(w, "a VM is seeded (seed) or mapped (map_from_vm, map_disks or map_replica_vm), one of them")
    return VmConf(name, line, tuple(disks), vsphere, seed, map_from, map_disks, map_vm)


def parse_job(path: Path, text: str) -> Job:
    """The job in ``text`` (read from ``path``); :class:`JobFileError` lists every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError([f"{path}: not valid TOML: {exc}"]) from None
    r = _Reader(path, text)
    r.unknown(doc, {"id", "name", "target", "options", "vcenter", "vm", "schedule"}, ())
    job_id = r.get(doc, "id", str, (), "")
    if not job_id:
        r.fail(
            ("id",),
            f'missing: the job\'s id; add the line  id = "{uuid.uuid4()}"  (or make the file with `vzrep-source job new`)',
        )
    else:
        try:
            uuid.UUID(job_id)
        except ValueError:
            r.fail(("id",), f'must be a UUID, such as "{uuid.uuid4()}", not {job_id!r}')
    name = r.get(doc, "name", str, (), "")
    target = _target(r, doc)
    opts = _options(r, doc)
    vcenter = _vcenter(r, doc)
    schedule = parse_schedule(r, doc)
    raw_vms = doc.get("vm", [])
    if not isinstance(raw_vms, list) or not raw_vms:
        r.fail(("vm",), "the job names no VM: add a [[vm]] table per VM")
        raw_vms = []
    vms = [vm for i, v in enumerate(raw_vms) if (vm := _vm(r, i, v, opts, vcenter)) is not None]
    seen: dict[str, int] = {}
    for i, vm in enumerate(vms):
        if vm.name and vm.name in seen:
            r.fail(("vm", i, "name"), f"VM {vm.name!r} is in the job twice (also [[vm]] {seen[vm.name] + 1})")
        seen.setdefault(vm.name, i)
    if r.problems:
        raise JobFileError(r.problems)
    return Job(path, job_id, name, target, opts, tuple(vms), vcenter, schedule)


def load_job(path: Path) -> Job:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the job file {path}: {exc}") from None
    return parse_job(path, text)


TEMPLATE = """\
# A vzrep replication job (README, "Jobs"). `vzrep-source job check {file}` checks it.
id = "{id}"   # the job's id: the target tags every restore point with it; keep it
name = "{name}"

{target}
[options]
block_size = "64K"      # 64K..4M
compress = "auto"       # auto | zstd | none
abm = false             # read only the blocks the guest filesystems use
restore_points = 7      # kept by the target for each VM of this job (0: the target's setting)
seeding = false         # with seeding or mapping on, a VM without a replica on the target is skipped
mapping = false
parallel = 2            # VMs replicated at once
# limit = ["20MB/s@mon-fri/08:00-18:00"]   # bandwidth of each pass; outside every window: unlimited

[schedule]              # for `vzrep-source run --jobs DIR` (job run ignores it)
rpo = "15m"             # a pass every 15 minutes; and/or at = ["02:00", "14:00"]

# The VMs, a [[vm]] table each. Until one is added the job is not valid, so a scheduler reading
# this directory (vzrep-source run) runs nothing of it yet.
# [[vm]]
# name = "web01"
# disks = ["/images/web01-flat.vmdk", "data=/dev/sdb"]
"""



#: ``FILE.paused`` beside a job file: the scheduler keeps the job but runs none of its passes
PAUSED = ".paused"


def paused(path: Path) -> bool:
    return path.with_suffix(PAUSED).exists()


TARGET_BY_ADDRESS = """\
[target]
host = "dr-target"
port = 2222
identity = "~/.config/vzrep/id_source"
known_hosts = "~/.config/vzrep/known_hosts"
# paired = true         # on a paired source appliance, instead of the four lines above
"""

TARGET_PAIRED = """\
[target]
paired = true           # the target this appliance paired with (its address and keys: {keys})
"""


def new_job_text(path: Path, name: str, paired: bool = False) -> str:
    """A new job file; ``paired``: its target is the appliance's paired target (``paired = true``)."""
    target = TARGET_PAIRED.format(keys=APPLIANCE_KEYS) if paired else TARGET_BY_ADDRESS
    return TEMPLATE.format(file=path.name, id=uuid.uuid4(), name=name or path.stem, target=target)
