"""A fork server for ``vzrep-source pass``: the source agent imported once, one forked child per pass.

Each child is a real source agent process: its own pid (the soak SIGKILLs it as it would a started
one), running ``source_agent.cli.main`` with the pass's command line, stdout and stderr in files,
on its own event loop (none exists in the server: it only imports). What it saves is the ~0.4 s of
CPU that importing asyncssh, the agent and its libraries costs every new process, which is most of
a small pass; on 2 cores that is the difference between minutes and a quarter of an hour.

Protocol on stdin/stdout, JSON lines: ``{"argv": [...], "out": PATH, "err": PATH}`` is answered by
``{"pid": N}`` at once and ``{"rc": CODE}`` when the child ends (negative: killed by that signal).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def preload() -> None:
    """What a pass imports, the way the agent imports it (asyncssh only through vzcommon.ssh)."""
    import rich.progress  # noqa: F401

    import source_agent.cli
    import source_agent.planning
    import source_agent.report
    import source_agent.session
    import source_agent.tunnel  # noqa: F401
    import vzcommon.ssh  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass


def child(req: dict[str, object]) -> None:
    """In the forked child: become the source agent; never returns."""
    rc = 1
    try:
        out = os.open(str(req["out"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(str(req["err"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        from source_agent.cli import main

        argv = req["argv"]
        assert isinstance(argv, list)
        rc = int(main([str(a) for a in argv]))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def main() -> int:
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
