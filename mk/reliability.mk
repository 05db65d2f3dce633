# Reliability: crash-state replay of the target's storage (tests/reliability, issue 18).
# `make crash-replay` explores every crash state of each recorded pass (minutes); a sample of it runs
# in the test suite (tests/reliability/test_crash_replay.py). CRASH_ARGS passes options to the runner
# (`.venv/bin/python -m tests.reliability.replay --help`).
CRASH_ARGS ?=

.PHONY: crash-replay
crash-replay: sysdeps venv
	$(PY) -m tests.reliability.replay $(CRASH_ARGS)
