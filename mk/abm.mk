# Active Block Mapping (source_agent/filters): the real tools its tests build and judge images with.
EXTRA_APT_PACKAGES += fdisk e2fsprogs ntfs-3g xfsprogs lvm2 util-linux
