"""The one import of pyVmomi (and pyVim): its namespaces, typed as ``Any`` for the checker.

pyVmomi builds its types at run time, so to mypy they are ``Any`` anyway; importing them here, once,
keeps the rule checkable: ``grep -rn pyVmomi`` finds this module and nothing outside ``vsphere/``.
Only the client modules of this package use these names; callers get plain records
(:mod:`vsphere.model`) and our errors (:mod:`vsphere.faults`).
"""

from __future__ import annotations

from typing import Any

from pyVim import connect as _pyvim_connect
from pyVmomi import vim as _vim
from pyVmomi import vmodl as _vmodl

vim: Any = _vim
vmodl: Any = _vmodl
pyvim_connect: Any = _pyvim_connect
