#!/usr/bin/env bash
# Installs what RestoreFs needs to build, test and run on a Debian 12 machine, skipping what is present.
set -euo pipefail

packages=(
  fuse3            # fusermount3 for unprivileged mounts
  qemu-system-x86  # the restore VM
  qemu-utils       # qemu-img / qemu-nbd: NBD interop tests and benchmarks
  libnbd-bin       # nbdinfo, nbdcopy
  xfsprogs btrfs-progs dosfstools mtools gdisk lvm2 e2fsprogs ntfs-3g  # test disk images
  busybox-static cpio lz4 xz-utils kmod  # restore image build
  gcc-12 make libc6-dev binutils  # the restore VM's ZFS modules, compiled from zfs-dkms against its kernel's headers
  fdisk cryptsetup-bin exfatprogs  # partition tables, LUKS and exFAT in the daemon's disk tests
  exfat-fuse       # mount.exfat-fuse: exFAT on the host (its kernel has no exfat) in the fidelity tests
  rsync zstd file util-linux
  libssl3          # libcrypto.so.3: the fast AES-256-GCM path of encrypted backups
  acl attr         # setfacl/getfattr: xattr and ACL fidelity tests of the daemon
  libcap2-bin      # setcap: file capabilities in the pxar tests
  time             # /usr/bin/time: peak RSS of the CLI in the hostile-datastore tests
  thin-provisioning-tools  # thin_restore: the LVM-thin test disk's pool metadata
  python3-cryptography  # AES-XTS: LUKS test volumes made without device-mapper (LuksUnlockTests)
  reiserfsprogs jfsutils f2fs-tools  # the older file systems' test disk (scripts/make-legacy-disk.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v dotnet >/dev/null 2>&1; then
  echo "install-deps: the .NET 10 SDK is required (dotnet on PATH)" >&2
  exit 1
fi

# S3 datastores: a single-node Ceph + radosgw for the tests (scripts/ceph-rgw.sh). Installing the four packages
# without Recommends took 53 s here (about 75 MB download); nothing is started by the packages.
ceph_missing=()
# python3-boto3: the stock client bench/s3 compares the mount with.
for p in ceph-mon ceph-osd radosgw ceph-common curl openssl python3-boto3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || ceph_missing+=("$p")
done
if [ ${#ceph_missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${ceph_missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${ceph_missing[@]}" >/dev/null
fi
