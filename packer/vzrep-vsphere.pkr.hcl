# Customer build inside their own vCenter (packer 1.6.6 syntax): installs Debian bookworm from the
# netinst ISO with packer/http/preseed.cfg, then runs the same provision script as `make appliance`.
# The VM gets the OVF's virtual hardware (2 vCPU, 2 GiB, pvscsi, vmxnet3). The vApp properties are
# defined by the OVF descriptor: re-pack the exported disk with `python -m appliance.image.ovf`.
#
#   packer build -var vcenter_server=vc.example.com -var vcenter_username=... -var vcenter_password=... \
#     -var datacenter=DC -var cluster=C -var datastore=DS -var network="VM Network" \
#     -var iso_path="[DS] iso/debian-12.8.0-amd64-netinst.iso" -var build_password=... \
#     packer/vzrep-vsphere.pkr.hcl

variable "vcenter_server" {
  type    = string
  default = "vcenter.example.com"
}

variable "vcenter_username" {
  type    = string
  default = "administrator@vsphere.local"
}

variable "vcenter_password" {
  type    = string
  default = ""
}

variable "insecure_connection" {
  type    = bool
  default = false
}

variable "datacenter" {
  type    = string
  default = "Datacenter"
}

variable "cluster" {
  type    = string
  default = "Cluster"
}

variable "datastore" {
  type    = string
  default = "datastore1"
}

variable "network" {
  type    = string
  default = "VM Network"
}

variable "iso_path" {
  type    = string
  default = "[datastore1] iso/debian-12-amd64-netinst.iso"
}

variable "build_username" {
  type    = string
  default = "vzbuild"
}

variable "build_password" {
  type    = string
  default = ""
}

variable "stage_dir" {
  type    = string
  default = "build/appliance/vzrep-stage"
}

variable "output_directory" {
  type    = string
  default = "build/packer-vsphere"
}

source "vsphere-iso" "vzrep" {
  vcenter_server      = var.vcenter_server
  username            = var.vcenter_username
  password            = var.vcenter_password
  insecure_connection = var.insecure_connection
  datacenter          = var.datacenter
  cluster             = var.cluster
  datastore           = var.datastore

  vm_name              = "vzrep-appliance-build"
  guest_os_type        = "debian11_64Guest"
  vm_version           = 13
  CPUs                 = 2
  RAM                  = 2048
  disk_controller_type = ["pvscsi"]
  storage {
    disk_size             = 8192
    disk_thin_provisioned = true
  }
  network_adapters {
    network      = var.network
    network_card = "vmxnet3"
  }

  iso_paths      = [var.iso_path]
  http_directory = "packer/http"
  boot_wait      = "5s"
  boot_command = [
    "<esc><wait>",
    "auto url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/preseed.cfg ",
    "passwd/username=${var.build_username} passwd/user-password=${var.build_password} ",
    "passwd/user-password-again=${var.build_password} ",
    "hostname=vzrep domain=localdomain interface=auto <enter>",
  ]

  ssh_username     = var.build_username
  ssh_password     = var.build_password
  ssh_timeout      = "60m"
  shutdown_command = "echo '${var.build_password}' | sudo -S sh -c 'userdel -f -r ${var.build_username}; shutdown -P now'"

  export {
    output_directory = var.output_directory
    force            = true
  }
}

build {
  sources = ["source.vsphere-iso.vzrep"]

  provisioner "file" {
    source      = "${var.stage_dir}/"
    destination = "/tmp/vzrep-stage"
  }

  provisioner "shell" {
    execute_command = "echo '${var.build_password}' | sudo -S sh -eu '{{ .Path }}'"
    inline = [
      "sh /tmp/vzrep-stage/provision.sh /tmp/vzrep-stage",
      "rm -rf /tmp/vzrep-stage",
    ]
  }

  post-processor "manifest" {
    output = "${var.output_directory}/packer-manifest.json"
  }
}
