# Coverage-guided fuzzing (fuzz/, atheris): every parser of untrusted bytes, one target after the
# other, >= 1M inputs in all (11 minutes on the shared 2-core machine, at about 40 % of one core).
# New coverage is merged into fuzz/corpus/<target>/ (commit it: tests/fuzz replays it in `make test`);
# a crash's input lands in fuzz/crashes/ and the run exits 1.
# FUZZ_ARGS: e.g. `--inputs 50000 ext xfs`, `--no-merge`; `python -m fuzz.run --help` lists them.
.PHONY: fuzz
FUZZ_ARGS ?=
fuzz: sysdeps venv
	$(PY) -m fuzz.run $(FUZZ_ARGS)
