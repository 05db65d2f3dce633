"""vzcommon.ssh: asyncssh without its native-library probes, and nothing the tunnel needs is lost."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import ctypes.util, json
asked = []
real = ctypes.util.find_library
def recorder(name):
    asked.append(name)
    return real(name)
ctypes.util.find_library = recorder
from vzcommon.ssh import asyncssh, UNUSED_NATIVE_LIBS
from vzcommon import tunnel_policy as policy
print(json.dumps({
    "asked": asked,
    "restored": ctypes.util.find_library is recorder,
    "unused": sorted(UNUSED_NATIVE_LIBS),
    "enc": [a.decode() for a in asyncssh.encryption.get_encryption_algs()],
    "mac": [a.decode() for a in asyncssh.mac.get_mac_algs()],
    "kex": [a.decode() for a in asyncssh.kex.get_kex_algs()],
    "policy": [list(policy.ENCRYPTION_ALGS), list(policy.MAC_ALGS), list(policy.PQ_KEX_ALGS + policy.KEX_ALGS)],
}))
"""


def run_probe() -> dict:
    # A fresh interpreter: in this one asyncssh is long imported, so the probes cannot be observed.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_asyncssh_is_imported_without_probing_for_liboqs_or_nettle() -> None:
    r = run_probe()
    assert not set(r["asked"]) & set(r["unused"]), r["asked"]
    assert r["restored"], "find_library must be put back once asyncssh is imported"


def test_every_algorithm_of_the_tunnel_policy_is_still_available() -> None:
    r = run_probe()
    enc, mac, kex = r["policy"]
    assert set(enc) <= set(r["enc"])
    assert set(mac) <= set(r["mac"])
    assert set(kex) <= set(r["kex"])  # ML-KEM too: from cryptography, not liboqs
