#!/bin/sh
# Provisions a Debian bookworm system as a vzrep appliance. Runs inside the system being built:
# in a chroot for `make appliance` (mmdebstrap customize hook) and over SSH in packer builds.
# Usage: provision.sh STAGE_DIR   (STAGE_DIR holds wheels/, systemd/, rootfs/ as staged by the build)
# No secrets are created here: host keys, agent keys and machine-id are made at first boot.
set -eu
STAGE=${1:?usage: provision.sh STAGE_DIR}
export DEBIAN_FRONTEND=noninteractive

# Packages (already present in the mmdebstrap build; packer's netinst install needs them).
if ! dpkg-query -W python3-venv >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv open-vm-tools openssh-server \
    systemd-resolved systemd-timesyncd iproute2 less sudo qemu-utils
fi

# The agents and the console, from the project's wheel, in a venv of their own.
python3 -m venv /opt/vzrep/venv
/opt/vzrep/venv/bin/pip install -q --no-index --find-links "$STAGE/wheels" vzrep
# The commands on every admin's PATH (and sudo's secure_path).
ln -sf /opt/vzrep/venv/bin/vzrep-source /opt/vzrep/venv/bin/vzrep-target /usr/local/bin/
/opt/vzrep/venv/bin/python -c 'import appliance.firstboot, appliance.autopair, appliance.console.app, pairing.cli, target_agent.cli, source_agent.daemon.service, spake2, asyncssh'

# Accounts: the agent runs unprivileged; admins log in as vzadmin (key-only SSH, password set at
# first boot from the OVF environment or left locked).
getent group vzrep >/dev/null || groupadd --system vzrep
getent passwd vzrep >/dev/null || useradd --system --gid vzrep --home-dir /var/lib/vzrep --shell /usr/sbin/nologin vzrep
getent passwd vzadmin >/dev/null || useradd --create-home --shell /bin/bash vzadmin
passwd -l vzadmin >/dev/null
passwd -l root >/dev/null
# vzadmin is the appliance's administrator: it writes the job files, reads the logs and runs the agents'
# commands as root. It logs in with a key only (its password, if first boot set one, is for the console),
# so sudo asks no password, as on cloud images; root itself stays locked.
printf 'vzadmin ALL=(ALL:ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/vzadmin
chmod 0440 /etc/sudoers.d/vzadmin
visudo -cqf /etc/sudoers.d/vzadmin
install -d -m 0755 -o root -g root /etc/vzrep /var/lib/vzrep
install -d -m 0750 -o vzrep -g vzrep /var/lib/vzrep/data /var/lib/vzrep/keys
install -d -m 0700 -o vzrep -g vzrep /var/lib/vzrep/pairing
# A source's job files: written by root (vzadmin with sudo, the console), read by the scheduler (vzrep-source.service).
install -d -m 0750 -o root -g vzrep /var/lib/vzrep/jobs

# systemd units and hardening.
install -m 0644 "$STAGE"/systemd/*.service "$STAGE"/systemd/*.path /etc/systemd/system/
install -d /etc/systemd/system/getty@tty1.service.d
install -m 0644 "$STAGE"/systemd/getty-tty1/vzrep-console.conf /etc/systemd/system/getty@tty1.service.d/
install -d /etc/ssh/sshd_config.d
install -m 0644 "$STAGE"/rootfs/sshd-vzrep.conf /etc/ssh/sshd_config.d/vzrep.conf
systemctl enable vzrep-firstboot.service vzrep-target.service vzrep-pairing.service \
  vzrep-source.service vzrep-source.path \
  systemd-networkd.service systemd-resolved.service ssh.service >/dev/null 2>&1 || \
  systemctl enable vzrep-firstboot.service vzrep-target.service vzrep-pairing.service \
    vzrep-source.service vzrep-source.path \
    systemd-networkd.service systemd-resolved.service ssh.service
systemctl disable networking.service >/dev/null 2>&1 || true
systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true

# Nothing listens but SSH, the agent and (while pairing) the pairing port: no LLMNR/mDNS responder.
install -d /etc/systemd/resolved.conf.d
printf '[Resolve]\nLLMNR=no\nMulticastDNS=no\n' > /etc/systemd/resolved.conf.d/vzrep.conf

# DHCP on every Ethernet port until first boot writes the deployment's network config.
install -d /etc/systemd/network
cat > /etc/systemd/network/90-vzrep-default.network <<'NET'
[Match]
Type=ether

[Network]
DHCP=yes
NET

# Nothing secret or machine-specific stays in the image (first boot sets the real host name).
echo vzrep > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvzrep\n::1\tlocalhost ip6-localhost\n' > /etc/hosts
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /var/lib/vzrep/firstboot.done
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
