"""``vzrep-source run``: the source appliance's scheduler of job passes, and its history (README, "Jobs")."""
