#!/usr/bin/env bash
# Makes a ZFS test disk in OUTDIR. The host kernel has no ZFS, so the pool is made inside a VM booted from the restore
# image (its kernel and its ZFS addon) with a small /init of our own in place of the daemon:
#   zfs.img   GPT: partition 1 holds pool "tank" (one vdev, ashift 12, lz4, xattr=sa) with the datasets
#               tank                 files at its root
#               tank/home            files, a hard link, symbolic links, modes 0000/4755/1777
#               tank/home/alice      a nested dataset
#               tank/data            canmount=off, mountpoint=none (a container, as Proxmox's rpool/data)
#               tank/data/www        mounted elsewhere (mountpoint=/srv/www)
#               tank/vol             a 32 MiB ZFS volume holding an ext4
#               tank/hidden          a ZFS volume with volmode=none (ZFS makes no device for it)
#             The pool is left imported, not exported: as in a backup of a running system.
#   expected/<entry>/   each dataset's tree (entry = dataset name with / as +), expected/tank+vol/ the ext4's tree
# Usage: make-zfs-disk.sh OUTDIR IMAGEDIR   (IMAGEDIR: vmlinux and initramfs.img of make restore-image, with ZFS)
set -euo pipefail
. "$(dirname "$0")/guest-vm.sh"
out=${1:?usage: make-zfs-disk.sh OUTDIR IMAGEDIR}
image=${2:?usage: make-zfs-disk.sh OUTDIR IMAGEDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.ext4 qemu-system-x86_64 lz4 cpio python3 rsync; do
  command -v "$tool" >/dev/null || { echo "make-zfs-disk: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
[ -f "$image/vmlinux" ] && [ -f "$image/initramfs.img" ] || { echo "make-zfs-disk: no restore image in $image (make restore-image)" >&2; exit 1; }
lz4 -dc "$image/initramfs.img" | cpio -t --quiet 2>/dev/null | grep -qx zfs-addon.tar.gz \
  || { echo "make-zfs-disk: the restore image in $image has no ZFS addon" >&2; exit 1; }
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap '[ -n "${MAKE_ZFS_KEEP:-}" ] || rm -rf "$work"' EXIT
prng() { python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($1).randbytes($2))"; }

# The trees as they are laid out in the VM (mount points), with whole-second times (the payload is a plain tar).
lay=$work/layout
mkdir -p "$lay"/tank/home/alice/docs "$lay"/tank/home/bob "$lay"/tank/etc "$lay"/srv/www/deep/er
echo "pool root file" > "$lay/tank/README"
printf 'hostname=zfs-guest\n' > "$lay/tank/etc/config"
prng 21 300000 > "$lay/tank/etc/blob.bin"
echo "bob's file" > "$lay/tank/home/bob/notes.txt"
ln "$lay/tank/home/bob/notes.txt" "$lay/tank/home/bob/notes-hardlink.txt"
ln -s notes.txt "$lay/tank/home/bob/link-relative"
ln -s /etc/passwd "$lay/tank/home/bob/link-absolute"
prng 22 1500000 > "$lay/tank/home/bob/big.bin"
echo secret > "$lay/tank/home/bob/zero-mode"; chmod 0000 "$lay/tank/home/bob/zero-mode"
echo suid > "$lay/tank/home/bob/setuid"; chmod 4755 "$lay/tank/home/bob/setuid"
mkdir "$lay/tank/home/bob/sticky"; chmod 1777 "$lay/tank/home/bob/sticky"
chown 1001:1001 "$lay/tank/home/bob/notes.txt"
for i in $(seq 1 60); do echo "alice $i" > "$lay/tank/home/alice/docs/f$i.txt"; done
prng 23 700000 > "$lay/tank/home/alice/photo.raw"
echo "<h1>served from tank/data/www</h1>" > "$lay/srv/www/index.html"
prng 24 200000 > "$lay/srv/www/deep/er/asset.bin"
python3 - "$lay" <<'EOF'
import os, sys
t = 1700000000
for root, dirs, files in os.walk(sys.argv[1], topdown=False):
    for n in files + dirs:
        os.utime(os.path.join(root, n), (t, t), follow_symlinks=False)
        t += 7
EOF
# busybox tar sets no symlink times and writes a directory's time before its contents: a script sets them after.
python3 - "$lay" > "$lay/fix-times.sh" <<'PY'
import os, shlex, sys
base = sys.argv[1]
lines = []
for root, dirs, files in os.walk(base, topdown=False):
    for n in files + dirs:
        p = os.path.join(root, n)
        if os.path.islink(p) or os.path.isdir(p):
            lines.append(f"touch -h -d @{int(os.lstat(p).st_mtime)} {shlex.quote('/' + os.path.relpath(p, base))}")
print("\n".join(lines))
PY
( cd "$lay" && tar --format=gnu --numeric-owner -cf "$work/payload.tar" tank srv fix-times.sh )

exp=$out/expected
rm -rf "$exp"; mkdir -p "$exp"
# Each dataset alone: its own tree without the directories where child datasets are mounted.
rsync -aH --exclude=/home "$lay/tank/" "$exp/tank/"
rsync -aH --exclude=/alice "$lay/tank/home/" "$exp/tank+home/"
rsync -aH "$lay/tank/home/alice/" "$exp/tank+home+alice/"
rsync -aH "$lay/srv/www/" "$exp/tank+data+www/"
mkdir -p "$exp/tank+vol/deep"
echo "inside an ext4 on a ZFS volume" > "$exp/tank+vol/hello.txt"
prng 25 400000 > "$exp/tank+vol/deep/data.bin"
mkfs.ext4 -q -F -L zvol-ext4 -d "$exp/tank+vol" "$work/vol.ext4" 24M

img=$out/zfs.img
rm -f "$img"; truncate -s 256M "$img"
sgdisk -U 2d4e6f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f -n 1:2048:0 -t 1:bf01 -c 1:zfs "$img" >/dev/null

# The VM's /init: make the pool, fill it, sync, power off.
mkdir -p "$work/overlay"
cat > "$work/overlay/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo "MAKE-ZFS-FAILED: $*" > /dev/console; poweroff -f; }
while read -r m; do [ -n "$m" ] && modprobe -q "$m"; done < /etc/modules.early
tar -xzf /zfs-addon.tar.gz -C / || fail "unpack the addon"
modprobe zfs zfs_arc_max=67108864 zfs_arc_min=33554432 || fail "modprobe zfs"
# virtio-mmio disks may enumerate in any order: find them by serial
for i in $(seq 1 100); do [ -c /dev/zfs ] && [ "$(ls /sys/block | grep -c "^vd")" = 3 ] && break; sleep 0.1; done
for d in /sys/block/vd*; do eval "disk_$(cat "$d/serial")=/dev/${d##*/}"; done
for i in $(seq 1 100); do [ -b "${disk_pool}1" ] && break; sleep 0.1; done
zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O xattr=sa -O mountpoint=/tank tank "${disk_pool}1" || fail "zpool create"
zfs create tank/home && zfs create tank/home/alice || fail "zfs create home"
zfs create -o canmount=off -o mountpoint=none tank/data && zfs create -o mountpoint=/srv/www tank/data/www || fail "zfs create data"
zfs create -V 32M -o volblocksize=16k tank/vol || fail "zfs create vol"
zfs create -V 8M -o volmode=none tank/hidden || fail "zfs create hidden"
tar -xf "$disk_payload" -C / || fail "payload"
sh /fix-times.sh || fail "times"
for i in $(seq 1 100); do [ -b /dev/zd0 ] && break; sleep 0.1; done
dd if="$disk_vol" of=/dev/zd0 bs=1M 2>/dev/null || fail "zvol"
zpool sync tank; sync
zfs list -o name,used,mountpoint > /dev/console
echo "MAKE-ZFS-OK" > /dev/console
poweroff -f
EOF
chmod 755 "$work/overlay/init"
echo "make-zfs-disk: making the pool in a VM (TCG: about a minute)" >&2
GUEST_VM_TIMEOUT=${MAKE_ZFS_TIMEOUT:-600} GUEST_VM_QUIET=${MAKE_ZFS_QUIET-quiet} \
  guest_vm make-zfs-disk "$image" "$work" MAKE-ZFS-OK pool="$img" payload="$work/payload.tar:ro" vol="$work/vol.ext4:ro" \
  || { echo "make-zfs-disk: the VM did not make the pool" >&2; exit 1; }
grep -A12 "^NAME" "$work/console.log" | head -12 >&2 || true
echo "make-zfs-disk: $img" >&2
