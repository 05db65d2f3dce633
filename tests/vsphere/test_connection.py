"""Logging in to vcsim: credentials, session tokens, the TLS policy, and error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.vsphere.conftest import Vcsim
from vsphere import vmomi
from vsphere.connection import connect
from vsphere.faults import translate_fault
from vsphere.options import Credentials, load_credentials
from vzcommon.errors import InputError, VSphereError

pytestmark = pytest.mark.vcsim


async def test_wrong_password_is_named(vcsim: Vcsim) -> None:
    opts = vcsim.options(credentials=Credentials(None, vcsim.user, "not-the-password"))
    with pytest.raises(VSphereError, match="refused the user name or password"):
        await connect(opts)


async def test_missing_vm_is_named(vcsim: Vcsim) -> None:
    async with await connect(vcsim.options()) as c:
        with pytest.raises(InputError, match="no VM named 'no-such-vm'"):
            await c.find_vm("no-such-vm")
        vm = await c.find_vm("DC0_H0_VM0")
        assert (await c.find_vm(vm.moid)).name == "DC0_H0_VM0"


async def test_tls_is_verified_by_default(vcsim: Vcsim) -> None:
    # pyVmomi alone would skip verification for 127.0.0.1; we must not
    with pytest.raises(VSphereError, match="not trusted") as err:
        await connect(vcsim.options(thumbprint=None))
    assert vcsim.thumbprint in str(err.value)  # the message shows what to compare and pin


async def test_pinned_thumbprint_passes_and_a_wrong_pin_fails(vcsim: Vcsim) -> None:
    colons = ":".join(vcsim.thumbprint[i : i + 2] for i in range(0, 64, 2)).upper()
    async with await connect(vcsim.options(thumbprint=colons)) as c:
        assert "govmomi simulator" in (await c.session_info())["server"]
    with pytest.raises(VSphereError, match="does not match the pinned thumbprint"):
        await connect(vcsim.options(thumbprint="ab" * 32))


async def test_insecure_needs_the_flag_and_warns(vcsim: Vcsim, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with await connect(vcsim.options(thumbprint=None, insecure=True)) as c:
            await c.session_info()
    assert "verification of vSphere host 127.0.0.1 is OFF" in caplog.text
    with pytest.raises(InputError, match="exclude each other"):
        vcsim.options(insecure=True)


async def test_session_token(vcsim: Vcsim) -> None:
    async with await connect(vcsim.options()) as owner:
        key = (await owner.session_info())["session_key"]
        async with await connect(vcsim.options(credentials=None, session_token=key)) as borrowed:
            assert (await borrowed.session_info())["user"] == vcsim.user
        await owner.session_info()  # closing the borrower did not log the owner out
    with pytest.raises(VSphereError, match=r"session is not \(or no longer\) valid"):
        await connect(vcsim.options(credentials=None, session_token="00000000-dead-beef"))


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    p = tmp_path / "vcenter.cred"
    p.write_text("# vCenter\nhost = vc.example\nuser = svc-vzrep\npassword = s3cr=t\n")
    p.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_credentials(p)
    p.chmod(0o600)
    cred = load_credentials(p)
    assert (cred.host, cred.user, cred.password) == ("vc.example", "svc-vzrep", "s3cr=t")
    assert "s3cr" not in repr(cred)
    p.write_text("user = x\n")
    with pytest.raises(InputError, match="no password"):
        load_credentials(p)


def test_missing_privilege_is_named_by_id() -> None:
    # vcsim grants every privilege, so the translation is checked on the fault vCenter sends
    fault = vmomi.vim.fault.NoPermission(privilegeId="VirtualMachine.State.CreateSnapshot", msg="denied")
    err = translate_fault(fault, "create a snapshot")
    assert isinstance(err, VSphereError)
    assert "lacks the privilege VirtualMachine.State.CreateSnapshot" in str(err)


async def test_privileges_are_checked(vcsim: Vcsim) -> None:
    async with await connect(vcsim.options()) as c:
        vm = await c.find_vm("DC0_H0_VM0")
        missing = await c.missing_privileges([vm.moid], ["VirtualMachine.State.CreateSnapshot"])
        assert missing == {vm.moid: []}
