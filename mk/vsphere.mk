# vSphere area: vcsim (the govmomi vSphere API simulator) for the tests in tests/vsphere.
#
# install-vcsim.sh builds vcsim offline from Debian packages: golang-go and
# golang-github-vmware-govmomi-dev (which pulls in golang-github-google-uuid-dev,
# part of the script's build stamp). It is idempotent: under a second when nothing changed.
VCSIM_DIR ?= .vcsim/bin
VCSIM_INSTALL ?= ../shared/tools/vcsim/install-vcsim.sh

EXTRA_APT_PACKAGES += golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev
# The main Makefile lists $(UNIT_PREREQS) as prerequisites of `unit`, so vcsim is built before pytest.
UNIT_PREREQS += vcsim

.PHONY: vcsim
vcsim: sysdeps
	bash $(VCSIM_INSTALL) $(VCSIM_DIR)
