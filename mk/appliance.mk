# Appliance area: packer templates, the offline image build and its QEMU smoke test (docs/appliance.md).
#
# `make test` needs packer (validate) and tmux (the console's end-to-end test); qemu-utils makes the
# small VMDK in the OVF packaging tests.
# whois holds mkpasswd and openssl its passwd command: independent makers of shadow hashes;
# systemd's systemd-analyze judges the units' sandboxes.
EXTRA_APT_PACKAGES += packer tmux qemu-utils whois openssl systemd
# The image build and boot need more; `make appliance` installs these itself (syslinux-common holds
# the MBR code and is only a recommendation of syslinux, which apt skips here).
APPLIANCE_APT_PACKAGES ?= mmdebstrap qemu-system-x86 qemu-utils syslinux syslinux-common mtools dosfstools fdisk e2fsprogs
APPLIANCE_OUT ?= build/appliance

.PHONY: appliance appliance-deps appliance-test

appliance-deps:
	@$(MAKE) --no-print-directory sysdeps APT_PACKAGES="$(APPLIANCE_APT_PACKAGES)" EXTRA_APT_PACKAGES=

# mmdebstrap root (cached in $(APPLIANCE_OUT)/base), provision, raw disk, streamOptimized VMDK, OVA.
appliance: appliance-deps venv
	$(PY) -m appliance.image.build --out $(APPLIANCE_OUT)

# Boot the built VMDK in QEMU (TCG) and check multi-user, the agent service and its port.
appliance-test: appliance
	VZREP_APPLIANCE_IMAGE=$(APPLIANCE_OUT)/ova/vzrep-disk1.vmdk $(VENV)/bin/pytest -q -s -m appliance tests/appliance/test_image_boot.py
