"""Crash-state replay (as ALICE and CrashMonkey do): record a real pass through ``vzcommon.fsio``, build
every state a crash could leave on disk, run the target's start-up recovery on each, judge the replica."""
