# The fault soak (issue 18, bench/soak): passes over several VMs with random faults (cut links, SIGKILLed
# agents, a full target filesystem, a slow link, a source changing mid-pass); 0 corrupt or lost replicas.
# Longer runs: make soak SOAK_ARGS="--faults 5000 --vms 8 --workers 2 --seed 7"
.PHONY: soak
SOAK_ARGS ?=

soak: sysdeps venv
	$(PY) -m bench.soak $(SOAK_ARGS)
