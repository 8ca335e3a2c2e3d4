#!/usr/bin/env bash
# Makes two test disks of one VM with Linux software RAID (md) across them, in OUTDIR. The host kernel has no md, so
# the arrays are made inside a VM booted from the restore image (its kernel, its mdadm and lvm) with a small /init of
# our own in place of the daemon:
#   md-a.img, md-b.img   GPT, five partitions each (six on md-a); partition N of both disks makes one array:
#     1  md "boot"     RAID1, metadata 1.0 (superblock at the end, as /boot often is): ext4
#     2  md "system"   RAID1, metadata 1.2: an LVM physical volume, VG vgraid with LV root (ext4)
#     3  md "scratch"  RAID0, metadata 1.2, 64 KiB chunks: ext4 (files larger than a chunk are striped over both disks)
#     4  md3           RAID1, metadata 0.90 (no name: it is known by its minor): ext4
#     5  md "data"     RAID5 of three members (partition 5 of both disks and partition 6 of md-a), metadata 1.2,
#                      partitioned: a GPT with partition 1 ext4 (md/data-part1),
#                      ext4 (a backup of md-a alone holds two of three: it starts degraded, rebuilding from parity)
#     7  LVM physical volumes of VG vgmirror (no md): LV mirrored is an LVM RAID1 (lvcreate --type raid1, dm-raid) with
#        ext4
#     8  btrfs over both disks (no md: its own RAID1 for data and metadata), made on the host through loop devices
#     9  (md-a only) LUKS2, passphrase "raid and crypt", holding an LVM physical volume: VG vgcrypt, LV home (ext4) —
#        the encrypted-LVM layout of the Debian and Ubuntu installers
#   The arrays are left running, not stopped: as in a backup of a running system.
#   expected/{boot,root,scratch,md3,data,mirrored,btrfs,crypthome}/   the tree each file system holds
# Usage: make-md-disk.sh OUTDIR IMAGEDIR   (IMAGEDIR: vmlinux and initramfs.img of make restore-image)
set -euo pipefail
. "$(dirname "$0")/guest-vm.sh"
out=${1:?usage: make-md-disk.sh OUTDIR IMAGEDIR}
image=${2:?usage: make-md-disk.sh OUTDIR IMAGEDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.ext4 mkfs.btrfs btrfs losetup qemu-system-x86_64 lz4 cpio python3; do
  command -v "$tool" >/dev/null || { echo "make-md-disk: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
[ -f "$image/vmlinux" ] && [ -f "$image/initramfs.img" ] || { echo "make-md-disk: no restore image in $image (make restore-image)" >&2; exit 1; }
lz4 -dc "$image/initramfs.img" | cpio -t --quiet 2>/dev/null | grep -qx sbin/mdadm \
  || { echo "make-md-disk: the restore image in $image has no mdadm" >&2; exit 1; }
mkdir -p "$out"; out=$(cd "$out" && pwd)
[ "$(id -u)" = 0 ] || { echo "make-md-disk: needs root (loop devices and a mount for the btrfs)" >&2; exit 1; }
work=$(mktemp -d)
loops=(); mnt=""
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; fi
  for l in "${loops[@]}"; do btrfs device scan --forget "$l" 2>/dev/null || true; losetup -d "$l" 2>/dev/null || true; done
  [ -n "${MAKE_MD_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
export E2FSPROGS_FAKE_TIME=1714557600
prng() { python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($1).randbytes($2))"; }

exp=$out/expected
rm -rf "$exp"; mkdir -p "$exp"/{boot,root,scratch,md3,data,mirrored,btrfs,crypthome}
t=$exp/boot
mkdir -p "$t/grub"
echo "menuentry 'Debian' { linux /vmlinuz root=/dev/mapper/vgraid-root }" > "$t/grub/grub.cfg"
prng 31 900000 > "$t/initrd.img-6.1.0"
ln -s initrd.img-6.1.0 "$t/initrd.img"
t=$exp/root
mkdir -p "$t/etc" "$t/home/admin/docs" "$t/var/log"
echo "raid-guest" > "$t/etc/hostname"
printf 'ARRAY /dev/md/boot metadata=1.0\nARRAY /dev/md/system metadata=1.2\n' > "$t/etc/mdadm.conf"
echo "kept on a mirror" > "$t/home/admin/docs/report.txt"; chmod 600 "$t/home/admin/docs/report.txt"
echo "grüße" > "$t/home/admin/Grüße.txt"
prng 32 2500000 > "$t/var/log/big.log"
for i in $(seq 1 40); do echo "entry $i" > "$t/var/log/f$i.log"; done
t=$exp/scratch
mkdir -p "$t/build"
prng 33 3000000 > "$t/build/striped.bin"    # 3 MB: 46 chunks of 64 KiB, alternating between the disks
echo "scratch space" > "$t/README"
chown -R 1234:1234 "$t/build"
echo "from an array made in 2008" > "$exp/md3/old.txt"; chmod 0444 "$exp/md3/old.txt"
mkdir -p "$exp/data/db"; prng 34 1200000 > "$exp/data/db/table.ibd"; echo "parity" > "$exp/data/db/NOTE"
prng 35 700000 > "$exp/mirrored/image.qcow2"; ln -s image.qcow2 "$exp/mirrored/current"
mkdir -p "$exp/crypthome/alice/.ssh"; echo "ssh-ed25519 AAAA alice" > "$exp/crypthome/alice/.ssh/authorized_keys"
chmod 700 "$exp/crypthome/alice/.ssh"; chown -R 1000:1000 "$exp/crypthome/alice"
mkdir -p "$exp/btrfs/photos/2024"; prng 36 1500000 > "$exp/btrfs/photos/2024/img_0001.raw"; echo "two copies" > "$exp/btrfs/README"
python3 - "$exp" <<'EOF'
import os, sys
t = 1700000000
for root, dirs, files in os.walk(sys.argv[1], topdown=False):
    for n in files + dirs:
        os.utime(os.path.join(root, n), (t, t), follow_symlinks=False)
        t += 11
EOF
mkfs.ext4 -q -F -L boot -d "$exp/boot" "$work/boot.ext4" 24M
mkfs.ext4 -q -F -L root -d "$exp/root" "$work/root.ext4" 40M
mkfs.ext4 -q -F -L scratch -d "$exp/scratch" "$work/scratch.ext4" 64M
mkfs.ext4 -q -F -L legacy -d "$exp/md3" "$work/md3.ext4" 8M
mkfs.ext4 -q -F -L data -d "$exp/data" "$work/data.part1" 12M
truncate -s 14336K "$work/data.ext4"   # the whole RAID5 (two data members of 7 MiB): a GPT, partition 1 from 1 MiB
sgdisk -n 1:2048:0 -t 1:8300 -c 1:data "$work/data.ext4" >/dev/null
dd if="$work/data.part1" of="$work/data.ext4" bs=1M seek=1 conv=notrunc 2>/dev/null
mkfs.ext4 -q -F -L mirrored -d "$exp/mirrored" "$work/mirrored.ext4" 8M
mkfs.ext4 -q -F -L crypthome -d "$exp/crypthome" "$work/crypthome.ext4" 8M

for d in a b; do
  img=$out/md-$d.img
  rm -f "$img"; truncate -s 400M "$img"
  sgdisk -n 1:2048:+32M -t 1:fd00 -c 1:boot -n 2:0:+64M -t 2:fd00 -c 2:system -n 3:0:+40M -t 3:fd00 -c 3:scratch -n 4:0:+16M -t 4:fd00 -c 4:legacy -n 5:0:+8M -t 5:fd00 -c 5:data "$img" >/dev/null
done
sgdisk -n 6:0:+8M -t 6:fd00 -c 6:data -n 7:0:+16M -t 7:8e00 -c 7:mirror "$out/md-a.img" >/dev/null
sgdisk -n 7:0:+16M -t 7:8e00 -c 7:mirror "$out/md-b.img" >/dev/null
for d in a b; do sgdisk -n 8:0:+140M -t 8:8300 -c 8:btrfs "$out/md-$d.img" >/dev/null; done
sgdisk -n 9:0:+32M -t 9:8309 -c 9:crypt "$out/md-a.img" >/dev/null

# The VM's /init: make the arrays and the volume group, write the file systems into them, sync, power off.
mkdir -p "$work/overlay"
cat > "$work/overlay/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo "MAKE-MD-FAILED: $*" > /dev/console; poweroff -f; }
while read -r m; do [ -n "$m" ] && modprobe -q "$m"; done < /etc/modules.early
for m in crc32c_generic md-mod raid0 raid1 raid456 dm-raid dm-crypt xts aesni-intel algif_skcipher; do modprobe "$m" || fail "modprobe $m"; done
# virtio-mmio disks may enumerate in any order: find them by serial
for i in $(seq 1 100); do [ "$(ls /sys/block | grep -c "^vd")" = 9 ] && break; sleep 0.1; done
for d in /sys/block/vd*; do eval "disk_$(cat "$d/serial")=/dev/${d##*/}"; done
for i in $(seq 1 100); do [ -b "${disk_a}9" ] && [ -b "${disk_b}8" ] && break; sleep 0.1; done
mk() { dev=$1; shift; mdadm --create "$dev" --run --assume-clean --homehost=raid-guest "$@" 2>&1 | tail -1 > /dev/console; [ -b "$dev" ] || fail "mdadm --create $dev"; }
mk /dev/md0 --metadata=1.0 --level=1 --raid-devices=2 --name=boot "${disk_a}1" "${disk_b}1"
mk /dev/md1 --metadata=1.2 --level=1 --raid-devices=2 --name=system "${disk_a}2" "${disk_b}2"
mk /dev/md2 --metadata=1.2 --level=0 --chunk=64 --raid-devices=2 --name=scratch "${disk_a}3" "${disk_b}3"
mk /dev/md3 --metadata=0.90 --level=1 --raid-devices=2 "${disk_a}4" "${disk_b}4"
mk /dev/md4 --metadata=1.2 --level=5 --chunk=64 --raid-devices=3 --name=data "${disk_a}5" "${disk_b}5" "${disk_a}6"
conf='devices { filter = [ "a|^/dev/md1$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } backup { backup = 0 archive = 0 }'
lvm pvcreate -q --config "$conf" /dev/md1 || fail "pvcreate"
lvm vgcreate -q --config "$conf" -s 4M vgraid /dev/md1 || fail "vgcreate"
lvm lvcreate -q --config "$conf" -y -Wn -Zn -L 40M -n root vgraid || fail "lvcreate"
lvm vgmknodes --config "$conf" vgraid >/dev/null 2>&1
conf='devices { filter = [ "a|^/dev/vd[ab]7$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } backup { backup = 0 archive = 0 }'
lvm pvcreate -q --config "$conf" "${disk_a}7" "${disk_b}7" || fail "pvcreate mirror"
lvm vgcreate -q --config "$conf" -s 1M vgmirror "${disk_a}7" "${disk_b}7" || fail "vgcreate mirror"
lvm lvcreate -q --config "$conf" -y -Wn -Zn --type raid1 -m 1 --nosync -L 8M -n mirrored vgmirror || fail "lvcreate raid1"
lvm vgmknodes --config "$conf" vgmirror >/dev/null 2>&1
dd if="$disk_mirrored" of=/dev/mapper/vgmirror-mirrored bs=1M 2>/dev/null || fail "mirrored"
printf 'raid and crypt' | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- "${disk_a}9" || fail "luksFormat"
printf 'raid and crypt' | cryptsetup open --key-file=- "${disk_a}9" crypt || fail "luksOpen"
conf='devices { filter = [ "a|^/dev/mapper/crypt$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } backup { backup = 0 archive = 0 }'
lvm pvcreate -q --config "$conf" /dev/mapper/crypt || fail "pvcreate crypt"
lvm vgcreate -q --config "$conf" -s 1M vgcrypt /dev/mapper/crypt || fail "vgcreate crypt"
lvm lvcreate -q --config "$conf" -y -Wn -Zn -L 8M -n home vgcrypt || fail "lvcreate crypt"
lvm vgmknodes --config "$conf" vgcrypt >/dev/null 2>&1
dd if="$disk_crypthome" of=/dev/mapper/vgcrypt-home bs=1M 2>/dev/null || fail "crypthome"
dd if="$disk_boot" of=/dev/md0 bs=1M 2>/dev/null || fail "boot"
dd if="$disk_root" of=/dev/mapper/vgraid-root bs=1M 2>/dev/null || fail "root"
dd if="$disk_scratch" of=/dev/md2 bs=1M 2>/dev/null || fail "scratch"
dd if="$disk_md3" of=/dev/md3 bs=1M 2>/dev/null || fail "md3"
dd if="$disk_data" of=/dev/md4 bs=1M 2>/dev/null || fail "data"
sync
cat /proc/mdstat > /dev/console
echo "MAKE-MD-OK" > /dev/console
poweroff -f
EOF
chmod 755 "$work/overlay/init"
echo "make-md-disk: making the arrays in a VM (TCG: under a minute)" >&2
GUEST_VM_TIMEOUT=${MAKE_MD_TIMEOUT:-600} GUEST_VM_QUIET=${MAKE_MD_QUIET-quiet} \
  guest_vm make-md-disk "$image" "$work" MAKE-MD-OK a="$out/md-a.img" b="$out/md-b.img" boot="$work/boot.ext4:ro" \
    root="$work/root.ext4:ro" scratch="$work/scratch.ext4:ro" md3="$work/md3.ext4:ro" data="$work/data.ext4:ro" \
    mirrored="$work/mirrored.ext4:ro" crypthome="$work/crypthome.ext4:ro" \
  || { echo "make-md-disk: the VM did not make the arrays" >&2; exit 1; }
grep -A8 "^Personalities" "$work/console.log" | head -12 >&2 || true

# The btrfs RAID1 over partition 8 of both disks, on the host (its kernel has btrfs).
for d in a b; do
  start=$(sgdisk -i 8 "$out/md-$d.img" | awk '/^First sector/ {print $3}')
  end=$(sgdisk -i 8 "$out/md-$d.img" | awk '/^Last sector/ {print $3}')
  loops+=("$(losetup -f --show -o $((start * 512)) --sizelimit $(((end - start + 1) * 512)) "$out/md-$d.img")")
done
mkfs.btrfs -q -f -d raid1 -m raid1 -L twocopies -U 5d0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b "${loops[@]}" >/dev/null
mnt=$work/btrfs-mnt; mkdir -p "$mnt"
mount -t btrfs -o "device=${loops[0]},device=${loops[1]}" "${loops[0]}" "$mnt"
cp -a "$exp/btrfs/." "$mnt/"
umount "$mnt"; mnt=""
echo "make-md-disk: $out/md-a.img $out/md-b.img" >&2
