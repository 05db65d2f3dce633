"""The appliance keeps its keys where the pairing commands look for them by default."""

from __future__ import annotations

from appliance.layout import Layout
from pairing.defaults import KEYS_DIR


def test_keys_dir_is_the_pairing_commands_default():
    assert Layout().keys_dir == KEYS_DIR
