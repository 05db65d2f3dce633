"""The offline appliance image build: rootfs (mmdebstrap), raw disk, streamOptimized VMDK, OVA."""
