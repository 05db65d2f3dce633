# Scenario (c) of the benchmarks: passes over a shaped WAN link (bench/wan.py). tc (iproute2) shapes
# lo inside a network namespace the benchmark makes itself.
EXTRA_APT_PACKAGES += iproute2

.PHONY: bench-wan
bench-wan: sysdeps venv
	$(PY) -m bench.wan $(WAN_ARGS)
