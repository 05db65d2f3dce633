"""``vzrep keygen``: write a key pair and print the public key and fingerprint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_keygen(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("keygen", help="write an Ed25519 key pair and print its public key and fingerprint")
    p.add_argument("path", type=Path, help="private key file to create (the public key goes to PATH.pub)")
    p.add_argument("--comment", default="vzrep")
    p.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from .keys import generate  # asyncssh: loaded only when a key is made

    pub, fp = generate(args.path, args.comment)
    print(pub)
    print(f"fingerprint: {fp}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .climain import run_main

    parser = argparse.ArgumentParser(prog="vzrep")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_keygen(sub)
    return run_main("vzrep", parser, argv, "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
