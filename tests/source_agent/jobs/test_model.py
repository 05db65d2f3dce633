"""The job file: every problem names its line and key; a good file loads with paths resolved."""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path

import pytest

from source_agent.jobs.lines import key_lines, line_of
from source_agent.jobs.model import JobFileError, load_job, new_job_text, parse_job
from vzcommon.errors import ExitCode

ID = "0b7d2f3e-3c55-4bd6-9a53-7f5d3f0c1e11"

GOOD = f"""\
id = "{ID}"
name = "web tier"

[target]
host = "dr-target"
port = 2222
identity = "keys/id_source"
known_hosts = "~/kh"

[options]
block_size = "256K"
compress = "zstd"
seeding = true
mapping = true
parallel = 3
restore_points = 5

[vcenter]
host = "vc.example"
credentials = "/etc/vzrep/vc.cred"
thumbprint = "AA:BB"

[[vm]]
name = "web01"
disks = ["/images/web01-flat.vmdk", "data=images/web01-data.img"]
seed = {{ web01 = "/backups/web01.vmdk" }}

[[vm]]
name = "db01"
vsphere = true
map_from_vm = "db01-old"

[[vm]]
name = "app01"
disks = [
  "/images/app01.img",
]
map_disks = {{ app01 = "/srv/copies/app01-flat.vmdk" }}
"""


def test_a_good_job_loads(tmp_path: Path) -> None:
    job = parse_job(tmp_path / "job.toml", GOOD)
    assert job.id == ID and job.name == "web tier"
    assert (job.target.host, job.target.port) == ("dr-target", 2222)
    assert job.target.identity == tmp_path / "keys/id_source"  # relative to the job file
    assert job.target.known_hosts == Path("~/kh").expanduser()
    o = job.options
    assert (o.block_size, o.compress, o.parallel, o.restore_points, o.rule) == (256 << 10, "zstd", 3, 5, True)
    assert [v.name for v in job.vms] == ["web01", "db01", "app01"]
    web, db, app = job.vms
    assert web.disks == ("web01=/images/web01-flat.vmdk", f"data={tmp_path}/images/web01-data.img")
    assert (web.declared, db.declared, app.declared) == ("seed", "map", "map")
    assert db.vsphere and db.map_from_vm == "db01-old" and job.vcenter is not None
    assert (web.line, db.line, app.line) == (23, 28, 33)


VM = '\n[[vm]]\nname = "web01"\ndisks = ["/images/web01.img"]\n'


def test_new_job_file_runs_nothing_until_a_vm_is_added(tmp_path: Path) -> None:
    (tmp_path / "j.toml").write_text(new_job_text(tmp_path / "j.toml", "j"))
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path / "j.toml")
    assert info.value.problems == [f"{tmp_path / 'j.toml'}:?: vm: the job names no VM: add a [[vm]] table per VM"]


def test_new_job_file_has_a_fresh_uuid_and_loads(tmp_path: Path) -> None:
    a, b = (new_job_text(tmp_path / "j.toml", "j") + VM for _ in range(2))
    ida, idb = tomllib.loads(a)["id"], tomllib.loads(b)["id"]
    assert ida != idb and uuid.UUID(ida)
    (tmp_path / "j.toml").write_text(a)
    assert load_job(tmp_path / "j.toml").id == ida
    (tmp_path / "p.toml").write_text(new_job_text(tmp_path / "p.toml", "p", paired=True) + VM)
    assert load_job(tmp_path / "p.toml").target.paired == Path("/var/lib/vzrep/keys")


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(JobFileError) as exc:
        parse_job(tmp_path / "job.toml", text)
    assert exc.value.exit_code == ExitCode.INPUT
    return exc.value.problems


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "says"),
    [
        ("port = 2222", 'port = "2222"', 6, "target.port", "must be an integer"),
        ("port = 2222", "port = 70000", 6, "target.port", "1-65535"),
        ('block_size = "256K"', 'block_size = "3K"', 11, "options.block_size", "power of two"),
        ('compress = "zstd"', 'compress = "lz4"', 12, "options.compress", "auto, zstd, none"),
        ("parallel = 3", "parallel = 0", 15, "options.parallel", "1-64"),
        ('name = "db01"', 'name = "db 01"', 29, "vm[1].name", "invalid VM name"),
        ('map_from_vm = "db01-old"', 'map_from_vm = "../x"', 31, "vm[1].map_from_vm", "invalid VM name"),
        ('  "/images/app01.img",', '  "bad name=/images/app01.img",', 35, "vm[2].disks", "invalid disk name"),
        ("seeding = true", "seeding = false", 26, "vm[0].seed", "seeding = false"),
        ('thumbprint = "AA:BB"', 'thumbprint = "AA:BB"\ninsecure = true', 18, "vcenter", "at most one"),
        ("restore_points = 5", "restore_points = 5\nretention = 3", 17, "options.retention", "unknown key"),
        ("parallel = 3", 'parallel = 3\nlimit = "fast"', 16, "options.limit", "a number and a unit"),
        ("parallel = 3", 'parallel = 3\nlimit = ["20MB/s@mon-fri/8-18"]', 16, "options.limit", "HH:MM-HH:MM"),
    ],
)
def test_each_problem_names_its_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, says: str
) -> None:
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1), tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'job.toml'}:{line}: {key}: "), found[0]
    assert says in found[0]


def test_every_problem_is_listed_and_the_error_says_how_many(tmp_path: Path) -> None:
    text = GOOD.replace("port = 2222", 'port = "x"').replace('compress = "zstd"', "compress = 1")
    text = text.replace(f'id = "{ID}"', 'id = "not-a-uuid"')
    with pytest.raises(JobFileError) as exc:
        parse_job(tmp_path / "job.toml", text)
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in exc.value.problems] == ["1", "6", "12"]
    assert "(and 2 more" in str(exc.value)


def test_a_missing_id_is_refused_with_one_to_paste(tmp_path: Path) -> None:
    (found,) = problems(GOOD.replace(f'id = "{ID}"\n', ""), tmp_path)
    assert ": id: missing" in found
    pasted = found.split('id = "')[1].split('"')[0]
    assert uuid.UUID(pasted)


def test_a_vm_with_both_or_neither_kind_of_disks(tmp_path: Path) -> None:
    (found,) = problems(GOOD.replace("vsphere = true", "vsphere = false"), tmp_path)
    assert found.startswith(f"{tmp_path / 'job.toml'}:28: vm[1]: give either disks")


def test_invalid_toml_says_where(tmp_path: Path) -> None:
    (found,) = problems(GOOD.replace("port = 2222", "port = = 2"), tmp_path)
    assert "not valid TOML" in found and "line 6" in found


def test_a_vm_twice(tmp_path: Path) -> None:
    (found,) = problems(GOOD.replace('name = "app01"', 'name = "web01"'), tmp_path)
    assert found.startswith(f"{tmp_path / 'job.toml'}:34: vm[2].name: VM 'web01' is in the job twice")


def test_key_lines_follow_tables_arrays_and_multiline_values() -> None:
    text = 'a = 1\ns = """\nx = 2\n"""\n[t]\nb.c = [\n  1,\n  2,\n]\n"q.k" = 3\n[[arr]]\nn = 1\n[[arr]]\nn = 2\n[arr.sub]\nm = 1\n'
    lines = key_lines(text)
    assert lines[("a",)] == 1 and ("x",) not in lines and lines[("s",)] == 2
    assert lines[("t", "b", "c")] == 6 and lines[("t", "q.k")] == 10
    assert lines[("arr", 0, "n")] == 12 and lines[("arr", 1, "n")] == 14
    assert lines[("arr", 1, "sub", "m")] == 16
    assert line_of(lines, ("t", "b", "c", 1)) == 6


def test_a_bandwidth_limit_with_windows_loads(tmp_path: Path) -> None:
    text = GOOD.replace("parallel = 3", 'parallel = 3\nlimit = ["20MB/s@mon-fri/08:00-18:00", "100Mbit"]', 1)
    assert parse_job(tmp_path / "job.toml", text).options.limit == ("20MB/s@mon-fri/08:00-18:00", "100Mbit")


PAIRED = f"""\
id = "{ID}"

[target]
paired = {{paired}}

[[vm]]
name = "web01"
disks = ["/images/web01.img"]
"""


def test_a_paired_target_is_read_from_the_pairing_record_when_a_pass_starts(tmp_path: Path) -> None:
    from pairing import pins
    from vzcommon import keys

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    job = parse_job(tmp_path / "job.toml", PAIRED.format(paired='"keys"'))
    assert job.target.paired == keys_dir
    with pytest.raises(Exception) as info:  # not paired yet: the pass says what to do
        job.target.resolve()
    assert info.value.exit_code == ExitCode.INPUT and "pair this appliance first" in str(info.value)
    public, _ = keys.generate(tmp_path / "host_key", "dr")
    pins.pin_target(keys_dir / "known_hosts", keys_dir / "peer.json", "10.0.2.2", 40222, public, "dr")
    t = job.target.resolve()
    assert (t.host, t.port, t.identity, t.known_hosts, t.user) == (
        "10.0.2.2", 40222, keys_dir / "id_ed25519", keys_dir / "known_hosts", "vzrep"
    )  # fmt: skip
    # Re-pairing with another target needs no edit of the job.
    pins.pin_target(keys_dir / "known_hosts", keys_dir / "peer.json", "dr2.example", 2222, public, "dr2")
    assert (job.target.resolve().host, job.target.resolve().port) == ("dr2.example", 2222)


def test_paired_true_means_the_appliance_keys(tmp_path: Path) -> None:
    job = parse_job(tmp_path / "job.toml", PAIRED.format(paired="true"))
    assert job.target.paired == Path("/var/lib/vzrep/keys")


def test_paired_with_an_address_or_keys_is_refused_with_lines(tmp_path: Path) -> None:
    text = PAIRED.format(paired="true").replace("paired = true", 'paired = true\nhost = "x"\nidentity = "k"')
    with pytest.raises(JobFileError) as info:
        parse_job(tmp_path / "job.toml", text)
    assert any(":5: target.host: not with paired" in p for p in info.value.problems), info.value.problems
    assert any(":6: target.identity: not with paired" in p for p in info.value.problems)
    with pytest.raises(JobFileError) as info:
        parse_job(tmp_path / "job.toml", PAIRED.format(paired="false"))
    assert ":4: target.paired: must be true" in info.value.problems[0]
