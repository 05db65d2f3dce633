"""``vzrep-console``: the field engineer's Textual console on tty1 (and over SSH)."""
