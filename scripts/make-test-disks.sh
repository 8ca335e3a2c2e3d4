#!/usr/bin/env bash
# Makes the restore-daemon test disks in OUTDIR (as root: loop devices for LVM, a loop mount to fill the xfs, FUSE for
# ntfs-3g; no device-mapper needed):
#   multi.img    GPT: 1 ext4 (files, symlinks, a subdir, a non-ASCII and a non-UTF-8 name), 2 vfat (filled with
#                mtools), 3 LVM PV → VG vgtest, LV data (xfs with files) — the LV is made without activation and the
#                xfs written at the LV's first physical extent
#   bare.img     ext4 on the whole disk, no partition table
#   garbage.img  pseudo-random bytes (fixed seed), no table, no file system
#   ntfs.img     NTFS on the whole disk (mkntfs, filled through ntfs-3g)
#   expected/{ext4,vfat,xfs,bare,ntfs}/  the trees each file system holds, for comparisons
#   expected/MANIFEST  one line per entry: volume, type (d f l), mode, size, sha256 or link target, path
#   expected/LAYOUT    the volumes, their byte offsets in their image and their types
# File contents, names, times and UUIDs are fixed, so the files are the same on every run (the images' bytes are
# not: mkfs and LVM stamp creation times).
set -euo pipefail
out=${1:?usage: make-test-disks.sh OUTDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.ext4 mkfs.vfat mcopy mkfs.xfs lvm losetup mkntfs ntfs-3g python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "make-test-disks: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "make-test-disks: needs root (loop devices for LVM, a loop mount for xfs, ntfs-3g)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
loop=""; mnt=""; lvmconf=""
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; fi
  if [ -n "$loop" ]; then
    lvm vgremove -f -y --config "$lvmconf" vgtest >/dev/null 2>&1 || true
    losetup -d "$loop" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
export LVM_SUPPRESS_FD_WARNINGS=1
export E2FSPROGS_FAKE_TIME=1714557600 # 2024-05-01T10:00:00Z in the ext4 superblocks
stamp=2024-05-01T10:00:00Z

# prng SEED BYTES > FILE: the same bytes for the same seed
prng() { python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($1).randbytes($2))"; }

exp=$out/expected
rm -rf "$exp"; mkdir -p "$exp"/{ext4,vfat,xfs,bare,ntfs}

# ext4 tree: modes, symlinks, nested dirs, odd names
t=$exp/ext4
mkdir -p "$t/etc" "$t/home/admin/docs" "$t/srv/many" "$t/empty"
echo "test-vm" > "$t/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/bash\n' > "$t/etc/passwd"
echo "secret report" > "$t/home/admin/docs/report.txt"; chmod 600 "$t/home/admin/docs/report.txt"
ln -s ../../etc/hostname "$t/home/admin/hostname-link"
ln -s /etc/shadow "$t/home/admin/absolute-link"
ln -s ../../../../../../etc "$t/home/admin/escape-link"
echo "grüße" > "$t/home/admin/Grüße.txt"
printf 'latin-1 name\n' > "$t/home/admin/caf$(printf '\xe9').txt"
prng 1 3000000 > "$t/srv/random.bin"
for i in $(seq 1 300); do echo "small file $i" > "$t/srv/many/f$i.txt"; done

t=$exp/vfat
mkdir -p "$t/EFI/BOOT"
echo "vfat file" > "$t/readme.txt"
prng 2 200000 > "$t/EFI/BOOT/bootx64.efi"

t=$exp/xfs
mkdir -p "$t/data/deep/er"
echo "on lvm and xfs" > "$t/data/hello.txt"
prng 3 1500000 > "$t/data/deep/er/blob.bin"

t=$exp/bare
mkdir -p "$t/root"
echo "a bare file system" > "$t/root/note.txt"

t=$exp/ntfs
mkdir -p "$t/Users/admin/Documents"
echo "from windows" > "$t/Users/admin/Documents/note.txt"
prng 4 700000 > "$t/Users/admin/data.bin"

# Fixed times everywhere (vfat keeps 2-second steps: an even second), the one the tests look for on etc/hostname.
find "$exp" -exec touch -h -d 2024-04-01T08:00:00Z {} +
touch -d "$stamp" "$exp/ext4/etc/hostname"

# The manifest: what each volume must show.
manifest() { # VOLUME DIR
  (cd "$2" && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r p; do
    if [ -L "$p" ]; then printf '%s\tl\t%s\t%s\t%s\t%s\n' "$1" "$(stat -c %a "$p")" "$(stat -c %s "$p")" "$(readlink "$p")" "${p#./}"
    elif [ -d "$p" ]; then printf '%s\td\t%s\t0\t-\t%s\n' "$1" "$(stat -c %a "$p")" "${p#./}"
    else printf '%s\tf\t%s\t%s\t%s\t%s\n' "$1" "$(stat -c %a "$p")" "$(stat -c %s "$p")" "$(sha256sum < "$p" | cut -d' ' -f1)" "${p#./}"
    fi
  done)
}
{
  printf '# volume\ttype\tmode\tsize\tsha256|target|-\tpath\n'
  manifest multi/part/1 "$exp/ext4"
  manifest multi/part/2 "$exp/vfat"
  manifest multi/lvm/vgtest/data "$exp/xfs"
  manifest bare/raw "$exp/bare"
  manifest ntfs/raw "$exp/ntfs"
} > "$work/MANIFEST"

# file systems for the partitions
truncate -s 40M "$work/ext4.img"
mkfs.ext4 -q -F -L test-ext4 -U 6c3b1c6e-3f0e-4d8e-9a51-1b6f2a7e0c01 -E hash_seed=0b8d5c2e-1a2b-4c3d-8e9f-001122334455 \
  -d "$exp/ext4" "$work/ext4.img"
truncate -s 16M "$work/vfat.img"
mkfs.vfat -n TESTVFAT -i 5e5f0a01 "$work/vfat.img" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -m -i "$work/vfat.img" "$exp/vfat/readme.txt" "$exp/vfat/EFI" ::/
# xfs needs 300 MiB at least; the image is sparse (a few MiB on disk).
truncate -s 320M "$work/xfs.img"
mkfs.xfs -q -f -L test-xfs -m uuid=2f0c1b4a-8d3e-4f5a-9b6c-7d8e9f0a1b2c "$work/xfs.img"
mnt=$work/mnt; mkdir -p "$mnt"
# nouuid: the xfs has a fixed UUID, and XFS refuses a second mount of the same UUID — another instance of this
# script (test fixtures run in parallel) may have its copy mounted right now.
mount -o loop,nouuid "$work/xfs.img" "$mnt"; cp -a "$exp/xfs/." "$mnt/"; umount "$mnt"; mnt=""

# multi.img: GPT, 1 MiB alignment; partition 3 holds the PV
img=$out/multi.img
rm -f "$img"; truncate -s 400M "$img"
sgdisk -U 8e6b1d2c-0f3a-4b5c-9d7e-1f2a3b4c5d6e \
  -n 1:2048:+40M -t 1:8300 -c 1:root -u 1:0a1b2c3d-0001-4000-8000-000000000001 \
  -n 2:0:+16M -t 2:0700 -c 2:efi -u 2:0a1b2c3d-0002-4000-8000-000000000002 \
  -n 3:0:0 -t 3:8e00 -c 3:lvm -u 3:0a1b2c3d-0003-4000-8000-000000000003 "$img" >/dev/null
first() { sgdisk -i "$1" "$img" | awk '/First sector/ {print $3}'; }
last() { sgdisk -i "$1" "$img" | awk '/Last sector/ {print $3}'; }
start1=$(first 1); start2=$(first 2); start3=$(first 3); end3=$(last 3)
dd if="$work/ext4.img" of="$img" bs=512 seek="$start1" conv=notrunc,sparse status=none
dd if="$work/vfat.img" of="$img" bs=512 seek="$start2" conv=notrunc,sparse status=none

# LVM on partition 3 through a loop device over its range; lvcreate without device-mapper (--driverloaded n).
loop=$(losetup -f --show -o $((start3 * 512)) --sizelimit $(((end3 - start3 + 1) * 512)) "$img")
lvmconf="devices { filter = [ \"a|^$loop\$|\", \"r|.*|\" ] global_filter = [ \"a|^$loop\$|\", \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } backup { backup = 0 archive = 0 }"
lvm pvcreate -q --config "$lvmconf" --uuid TESTPV-0000-0000-0000-0000-0000-000001 --norestorefile "$loop" >/dev/null
lvm vgcreate -q --config "$lvmconf" -s 4M vgtest "$loop" 2>&1 >/dev/null | { grep -v "NOT backed up" >&2 || true; }
lvm lvcreate -q --config "$lvmconf" --driverloaded n --activate n --zero n --wipesignatures n -L 320M -n data vgtest >/dev/null 2>&1 \
  || { lvm lvcreate --config "$lvmconf" --driverloaded n --activate n --zero n --wipesignatures n -L 320M -n data vgtest >&2; exit 1; }
pe_start=$(lvm pvs --config "$lvmconf" --readonly --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
extent=$(lvm vgs --config "$lvmconf" --readonly --noheadings --units b --nosuffix -o vg_extent_size vgtest | tr -d ' ')
ranges=$(lvm lvs --config "$lvmconf" --readonly --noheadings -o seg_pe_ranges vgtest/data | tr -d ' ')
case $ranges in
  "$loop":*-*) first_pe=${ranges#"$loop":}; first_pe=${first_pe%-*}; last_pe=${ranges##*-} ;;
  *) echo "make-test-disks: unexpected LV layout '$ranges' (one linear segment wanted)" >&2; exit 1 ;;
esac
[ $(( (last_pe - first_pe + 1) * extent )) -ge $(stat -c %s "$work/xfs.img") ] || { echo "make-test-disks: LV smaller than the xfs" >&2; exit 1; }
losetup -d "$loop"; loop=""
lv_offset=$(( start3 * 512 + pe_start + first_pe * extent ))
dd if="$work/xfs.img" of="$img" bs=512 seek=$(( lv_offset / 512 )) conv=notrunc,sparse status=none
# Read it back: the xfs must be there, whole, at the LV's offset.
check=$(losetup -r -f --show -o "$lv_offset" --sizelimit "$(stat -c %s "$work/xfs.img")" "$img")
mnt=$work/check; mkdir -p "$mnt"
if mount -o ro,norecovery,nouuid "$check" "$mnt"; then
  diff -r "$exp/xfs" "$mnt" >/dev/null || { echo "make-test-disks: the xfs at the LV offset differs from expected/xfs" >&2; umount "$mnt"; losetup -d "$check"; exit 1; }
  umount "$mnt"
else
  echo "make-test-disks: cannot mount the xfs back from offset $lv_offset" >&2; losetup -d "$check"; exit 1
fi
mnt=""; losetup -d "$check"

# bare.img: ext4 on the whole disk
truncate -s 32M "$work/bare-fs.img"
mkfs.ext4 -q -F -L test-bare -U 6c3b1c6e-3f0e-4d8e-9a51-1b6f2a7e0c02 -E hash_seed=0b8d5c2e-1a2b-4c3d-8e9f-001122334456 \
  -d "$exp/bare" "$work/bare-fs.img"
mv "$work/bare-fs.img" "$out/bare.img"

# ntfs.img
truncate -s 32M "$out/ntfs.img"
mkntfs -q -F -Q -L TESTNTFS "$out/ntfs.img" >/dev/null 2>&1
mnt=$work/ntfs; mkdir -p "$mnt"
ntfs-3g "$out/ntfs.img" "$mnt"; cp -r "$exp/ntfs/." "$mnt/"; umount "$mnt"; mnt=""

prng 7 $((4 * 1024 * 1024)) > "$out/garbage.img"

mv "$work/MANIFEST" "$exp/MANIFEST"
{
  printf '# image\tvolume\toffset\tbytes\ttype\n'
  printf 'multi.img\tpart/1\t%s\t%s\text4\n' $((start1 * 512)) $(( ($(last 1) - start1 + 1) * 512 ))
  printf 'multi.img\tpart/2\t%s\t%s\tvfat\n' $((start2 * 512)) $(( ($(last 2) - start2 + 1) * 512 ))
  printf 'multi.img\tpart/3\t%s\t%s\tLVM2_member\n' $((start3 * 512)) $(( (end3 - start3 + 1) * 512 ))
  printf 'multi.img\tlvm/vgtest/data\t%s\t%s\txfs\n' "$lv_offset" $(( (last_pe - first_pe + 1) * extent ))
  printf 'bare.img\traw\t0\t%s\text4\n' "$(stat -c %s "$out/bare.img")"
  printf 'ntfs.img\traw\t0\t%s\tntfs\n' "$(stat -c %s "$out/ntfs.img")"
  printf 'garbage.img\t-\t0\t%s\t-\n' "$(stat -c %s "$out/garbage.img")"
} > "$exp/LAYOUT"
echo "test disks in $out: multi.img (ext4, vfat, LVM vgtest/data xfs), bare.img, garbage.img, ntfs.img"
