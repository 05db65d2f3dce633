# The resume figure: a 4 GiB full pass cut once at 60 % of its bytes, then resumed (bench/resume.py).
.PHONY: bench-resume
bench-resume: sysdeps venv
	$(PY) -m bench.resume $(RESUME_ARGS)
