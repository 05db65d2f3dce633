# Seeding (target_agent/storage/seed.py): its benchmark alone; `make bench` runs it too (bench/run.py).
.PHONY: bench-seed
bench-seed: sysdeps venv
	$(PY) -m bench.seed $(BENCH_SEED_ARGS)
