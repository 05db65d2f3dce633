# vSphere area: vcsim (the govmomi vSphere API simulator) and govc for the tests in tests/vsphere.
#
# tools/vcsim/install-vcsim.sh builds both offline from Debian packages (golang-go,
# golang-github-vmware-govmomi-dev and, for govc, the govmomi source package plus
# golang-github-kr-pretty-dev), applying the project's patches in tools/vcsim/patches. It is
# idempotent: each binary's stamp hashes the package versions, the script, main.go and the patches,
# so it takes under a second when nothing changed and rebuilds only what a changed input touches.
VCSIM_DIR ?= .vcsim/bin
VCSIM_INSTALL ?= tools/vcsim/install-vcsim.sh

EXTRA_APT_PACKAGES += golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev \
	golang-github-kr-pretty-dev dpkg-dev patch xz-utils
# The main Makefile lists $(UNIT_PREREQS) as prerequisites of `unit`, so vcsim is built before pytest.
UNIT_PREREQS += vcsim

.PHONY: vcsim
vcsim: sysdeps
	bash $(VCSIM_INSTALL) $(VCSIM_DIR)
