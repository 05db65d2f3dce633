"""Jobs: many VMs replicated to one target with one set of options (model, check, runner, cli)."""
