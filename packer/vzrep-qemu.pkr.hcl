# Local packer build (packer 1.6.6 syntax: no `packer { required_plugins }` block).
# Boots a prebuilt Debian bookworm disk image that accepts SSH logins (var.base_image_url), runs the
# same provision script as `make appliance`, and leaves a raw disk that the post-processor packs as
# an OVA. `make appliance` is the offline path and needs no base image; this template is for
# developers who start from a Debian cloud or netinst-installed image.
#
#   packer build -var base_image_url=file:///path/debian-12.raw -var base_image_checksum=sha256:... \
#     -var ssh_password=... packer/vzrep-qemu.pkr.hcl
# Run from the repository root after `python -m appliance.image.build --stage-only`.

variable "base_image_url" {
  type    = string
  default = "file:///var/cache/vzrep/debian-12-bookworm-amd64.raw"
}

variable "base_image_checksum" {
  type    = string
  default = "none"
}

variable "ssh_username" {
  type    = string
  default = "vzbuild"
}

variable "ssh_password" {
  type    = string
  default = ""
}

variable "accelerator" {
  type    = string
  default = "tcg"
}

variable "stage_dir" {
  type    = string
  default = "build/appliance/vzrep-stage"
}

variable "output_directory" {
  type    = string
  default = "build/packer-qemu"
}

source "qemu" "vzrep" {
  iso_url          = var.base_image_url
  iso_checksum     = var.base_image_checksum
  disk_image       = true
  skip_resize_disk = true
  format           = "raw"
  accelerator      = var.accelerator
  headless         = true
  memory           = 2048
  cpus             = 2
  disk_interface   = "virtio-scsi"
  net_device       = "vmxnet3"
  ssh_username     = var.ssh_username
  ssh_password     = var.ssh_password
  ssh_timeout      = "30m"
  shutdown_command = "echo '${var.ssh_password}' | sudo -S sh -c 'userdel -f -r ${var.ssh_username}; shutdown -P now'"
  output_directory = var.output_directory
  vm_name          = "vzrep.raw"
}

build {
  sources = ["source.qemu.vzrep"]

  provisioner "file" {
    source      = "${var.stage_dir}/"
    destination = "/tmp/vzrep-stage"
  }

  provisioner "shell" {
    execute_command = "echo '${var.ssh_password}' | sudo -S sh -eu '{{ .Path }}'"
    inline = [
      "sh /tmp/vzrep-stage/provision.sh /tmp/vzrep-stage",
      "rm -rf /tmp/vzrep-stage",
    ]
  }

  post-processor "shell-local" {
    inline = ["python3 -m appliance.image.ovf ${var.output_directory}/vzrep.raw ${var.output_directory}/ova"]
  }

  post-processor "checksum" {
    checksum_types = ["sha256"]
    output         = "${var.output_directory}/{{.BuildName}}.{{.ChecksumType}}"
  }
}
