"""What the SSH tunnel allows, in one place for both agents.

Only AES-256 ciphers: ``aes256-gcm@openssh.com`` (authenticated encryption, no separate MAC) and
``aes256-ctr`` with an encrypt-then-MAC SHA-2 MAC. Key exchange: the post-quantum hybrid ML-KEM-768 +
X25519 when asyncssh can do it through ``cryptography`` (no liboqs), and Curve25519: the target offers
it only where it cannot do the hybrid, the source after the hybrid (for peers without ML-KEM). No NIST
curves, no finite-field groups (ssh-audit findings: it fails NIST curves and warns about every key
exchange a server offers without post-quantum protection). No SSH compression (blocks are
compressed by the pipeline, and only when it pays). Window and packet size were tuned on loopback
(README, "Tuning").
"""

from __future__ import annotations

SUBSYSTEM = "vzrep"
ENCRYPTION_ALGS = ("aes256-gcm@openssh.com", "aes256-ctr")
MAC_ALGS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
#: offered when the installed asyncssh and cryptography support them (``vzcommon.ssh.kex_algs``)
PQ_KEX_ALGS = ("mlkem768x25519-sha256",)
#: the source's fallback after PQ_KEX_ALGS; the target's only where it can run none of those
KEX_ALGS = ("curve25519-sha256", "curve25519-sha256@libssh.org")
COMPRESSION_ALGS = ("none",)
WINDOW = 16 << 20
MAX_PKTSIZE = 256 << 10
#: SSH keep-alives on both ends: a peer that answers none of KEEPALIVE_COUNT_MAX requests sent every
#: KEEPALIVE_INTERVAL seconds of silence is dropped (within about 75 s); a target drops its pass with it.
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT_MAX = 4


def read_size() -> int:
    """How much one read from the channel may take: all it can hold (a window and a packet).

    A smaller read lets a slow reader's memory grow without bound. asyncssh (2.24) reopens the whole
    window each time it delivers buffered data after a pause, even while more of that data is still
    buffered, so every pause/resume cycle of a reader that leaves data behind lets the sender add up
    to another window (a target writing to a slow disk reached 1 GiB in a 4 GiB full pass). A read
    that takes everything empties the channel's buffer at each resume: then about two windows at most
    are queued, plus the read itself, whatever the disk size (``tests/vzcommon/test_flow_control.py``).
    """
    return WINDOW + MAX_PKTSIZE
