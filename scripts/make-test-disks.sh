#!/usr/bin/env bash
# Makes the restore-daemon test disks in OUTDIR (root: loop devices for LVM and for filling xfs):
#   multi.img    GPT: 1 ext4 (files, symlinks, a non-ASCII and a non-UTF-8 name), 2 vfat, 3 LVM PV → VG vgtest,
#                LV data (xfs with files)
#   bare.img     ext4 on the whole disk, no partition table
#   garbage.img  pseudo-random bytes, no table, no file system
#   ntfs.img     NTFS on the whole disk (mkntfs, filled through ntfs-3g)
#   expected/{ext4,vfat,xfs,bare}/  the trees each file system holds, for comparisons
# No device-mapper is needed: the LV is created without activation and the xfs is written at its physical extent.
set -euo pipefail
out=${1:?usage: make-test-disks.sh OUTDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.ext4 mkfs.vfat mcopy mkfs.xfs lvm losetup mkntfs ntfs-3g; do
  command -v "$tool" >/dev/null || { echo "make-test-disks: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
loop=""; mnt=""
cleanup() {
  [ -n "$mnt" ] && umount "$mnt" 2>/dev/null || true
  [ -n "$loop" ] && { lvm vgremove -f -y --config "$lvmconf" vgtest >/dev/null 2>&1 || true; losetup -d "$loop" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
export LVM_SUPPRESS_FD_WARNINGS=1

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
head -c 3000000 /dev/urandom > "$t/srv/random.bin"
for i in $(seq 1 300); do echo "small file $i" > "$t/srv/many/f$i.txt"; done
touch -d 2024-05-01T10:00:00Z "$t/etc/hostname"

t=$exp/vfat
mkdir -p "$t/EFI/BOOT"
echo "vfat file" > "$t/readme.txt"
head -c 200000 /dev/urandom > "$t/EFI/BOOT/bootx64.efi"

t=$exp/xfs
mkdir -p "$t/data/deep/er"
echo "on lvm and xfs" > "$t/data/hello.txt"
head -c 1500000 /dev/urandom > "$t/data/deep/er/blob.bin"

t=$exp/bare
mkdir -p "$t/root"
echo "a bare file system" > "$t/root/note.txt"

t=$exp/ntfs
mkdir -p "$t/Users/admin/Documents"
echo "from windows" > "$t/Users/admin/Documents/note.txt"
head -c 700000 /dev/urandom > "$t/Users/admin/data.bin"

# partition images
truncate -s 40M "$work/ext4.img"; mkfs.ext4 -q -F -d "$exp/ext4" "$work/ext4.img"
truncate -s 16M "$work/vfat.img"; mkfs.vfat -n TESTVFAT "$work/vfat.img" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$work/vfat.img" "$exp/vfat/readme.txt" "$exp/vfat/EFI" ::/
truncate -s 320M "$work/xfs.img"; mkfs.xfs -q -f "$work/xfs.img"
mnt=$work/mnt; mkdir -p "$mnt"
mount -o loop "$work/xfs.img" "$mnt"; cp -a "$exp/xfs/." "$mnt/"; umount "$mnt"; mnt=""

# multi.img: 1 MiB alignment; partition 3 holds the PV
img=$out/multi.img
rm -f "$img"; truncate -s 400M "$img"
sgdisk -n 1:2048:+40M -t 1:8300 -n 2:0:+16M -t 2:0700 -n 3:0:0 -t 3:8e00 "$img" >/dev/null
dd if="$work/ext4.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
start2=$(sgdisk -i 2 "$img" | awk '/First sector/ {print $3}')
dd if="$work/vfat.img" of="$img" bs=512 seek="$start2" conv=notrunc,sparse status=none
start3=$(sgdisk -i 3 "$img" | awk '/First sector/ {print $3}')
end3=$(sgdisk -i 3 "$img" | awk '/Last sector/ {print $3}')
loop=$(losetup -f --show -o $((start3 * 512)) --sizelimit $(((end3 - start3 + 1) * 512)) "$img")
lvmconf="devices { filter = [ \"a|^$loop\$|\", \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }"
lvm pvcreate -q --config "$lvmconf" "$loop" >/dev/null
lvm vgcreate -q --config "$lvmconf" vgtest "$loop" >/dev/null
# lvcreate insists on device-mapper even with --activate n: add the LV to the VG's metadata and restore it.
lvm vgcfgbackup -q --config "$lvmconf" -f "$work/vg.cfg" vgtest >/dev/null
extent=$(lvm vgs --config "$lvmconf" --noheadings --units b --nosuffix -o vg_extent_size vgtest | tr -d ' ')
python3 - "$work/vg.cfg" $(( 320 * 1024 * 1024 / extent )) <<'PY'
import random, string, sys
path, extents = sys.argv[1], int(sys.argv[2])
text = open(path).read()
r = random.Random(3)
uid = "-".join("".join(r.choice(string.ascii_letters + string.digits) for _ in range(n)) for n in (6, 4, 4, 4, 4, 4, 6))
lv = f"""
logical_volumes {{
data {{
id = "{uid}"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1714557600
creation_host = "restorefs-test"
segment_count = 1
segment1 {{
start_extent = 0
extent_count = {extents}
type = "striped"
stripe_count = 1
stripes = [
"pv0", 0
]
}}
}}
}}
"""
end = text.rindex("}")          # the end of the VG section
text = text[:end] + lv + text[end:]
open(path, "w").write(text)
PY
lvm vgcfgrestore -q --config "$lvmconf" -f "$work/vg.cfg" vgtest >/dev/null 2>&1
lvm lvs --config "$lvmconf" --noheadings -o lv_name,lv_size vgtest | grep -q data || { echo "make-test-disks: the LV was not created" >&2; exit 1; }
pe_start=$(lvm pvs --config "$lvmconf" --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
first_pe=0
losetup -d "$loop"; loop=""
dd if="$work/xfs.img" of="$img" bs=512 seek=$(( start3 + (pe_start + first_pe * extent) / 512 )) conv=notrunc,sparse status=none

truncate -s 32M "$work/bare-fs.img"; mkfs.ext4 -q -F -d "$exp/bare" "$work/bare-fs.img"
mv "$work/bare-fs.img" "$out/bare.img"
truncate -s 32M "$out/ntfs.img"
mkntfs -q -F -Q -L TESTNTFS "$out/ntfs.img" >/dev/null
mnt=$work/ntfs; mkdir -p "$mnt"
ntfs-3g "$out/ntfs.img" "$mnt"; cp -r "$exp/ntfs/." "$mnt/"; umount "$mnt"; mnt=""
python3 -c "import random,sys; r=random.Random(7); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(4*1024*1024)))" > "$out/garbage.img"
echo "test disks in $out: multi.img (ext4, vfat, LVM vgtest/data xfs), bare.img, garbage.img, ntfs.img"
