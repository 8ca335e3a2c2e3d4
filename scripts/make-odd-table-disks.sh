#!/usr/bin/env bash
# Makes three test disks whose partitions a Linux kernel does not show by itself, in OUTDIR (root; the host's loop
# devices and ext4):
#   gpt4k.img   GPT written for 4 KiB logical sectors (a disk copied from a 4Kn drive, read through a virtual disk of
#               512-byte sectors): partition 1 ext4, partition 2 an LVM physical volume of VG vgodd with LV data (ext4)
#   nombr.img   GPT whose protective MBR was wiped (no boot signature; Linux then ignores the GPT): partition 1 ext4
#   badgpt.img  GPT whose primary copy is damaged (its entries fail their checksum; Linux then ignores the GPT, as
#               it reads the backup only when booted with "gpt"): partition 1 ext4, from the backup
#   expected/tree/   the tree every file system holds (modes, owners, times, a symbolic link, a non-ASCII name, 1 MB)
# Usage: make-odd-table-disks.sh OUTDIR
set -euo pipefail
out=${1:?usage: make-odd-table-disks.sh OUTDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sfdisk sgdisk mkfs.ext4 losetup pvcreate vgcreate vgcfgbackup vgcfgrestore python3; do
  command -v "$tool" >/dev/null || { echo "make-odd-table-disks: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
loops=()
cleanup() {
  mountpoint -q "$work/m" && umount "$work/m"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

t=$out/expected/tree
rm -rf "$out/expected"; mkdir -p "$t/etc" "$t/home/ana" "$t/srv"
echo "copied-from-4kn" > "$t/etc/hostname"
echo "olá" > "$t/home/ana/notícias.txt"; chown -R 1001:1001 "$t/home/ana"; chmod 700 "$t/home/ana"
python3 -c "import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes(1000000))" > "$t/srv/blob"
ln -s blob "$t/srv/current"
python3 - "$t" <<'EOF'
import os, sys
t = 1500000000
for root, dirs, files in os.walk(sys.argv[1], topdown=False):
    for n in files + dirs:
        os.utime(os.path.join(root, n), ns=(t * 10**9 + 123456789, t * 10**9 + 123456789), follow_symlinks=False)
        t += 17
EOF

# An ext4 of SIZE bytes holding the tree, as a file.
make_fs() { # file size blocksize
  rm -f "$1"; truncate -s "$2" "$1"
  mkfs.ext4 -q -F -b "$3" -L odd "$1"
  mkdir -p "$work/m"
  mount -o loop "$1" "$work/m"
  cp -a "$t/." "$work/m/"
  umount "$work/m"
}

# An LVM physical volume of 40 MiB as a file: VG vgodd with one linear LV "data" of 16 MiB at its first extent
# holding an ext4 with the tree. The host has no device-mapper, so the LV is written into the VG's metadata with
# vgcfgrestore (nothing is activated) and its file system is put where its extents lie (pe_start, 1 MiB).
lvm_quiet() { # lvm command…: its complaints about the missing device-mapper and the skipped metadata backup dropped
  { LVM_SUPPRESS_FD_WARNINGS=1 "$@" 2>&1 >/dev/null | { grep -v -e "device-mapper" -e "/dev/mapper/control" -e "libdevmapper" -e "Check that" -e "WARNING" || true; }; } >&2
}
make_pv() { # file
  rm -f "$1"; truncate -s 40M "$1"
  local loop config
  loop=$(losetup -f --show "$1"); loops+=("$loop")
  config="devices { filter = [ \"a|^$loop\$|\", \"r|.*|\" ] use_devicesfile = 0 } backup { backup = 0 archive = 0 }"
  lvm_quiet pvcreate -q -y --config "$config" "$loop"
  lvm_quiet vgcreate -q -s 4M --config "$config" vgodd "$loop"
  lvm_quiet vgcfgbackup -q --config "$config" -f "$work/vg.txt" vgodd
  python3 - "$work/vg.txt" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
lv = """
	logical_volumes {
		data {
			id = "Odd0Lv-Data-4Kn0-Gpt0-Test-Disk-000001"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 4
				type = "striped"
				stripe_count = 1
				stripes = [
					"pv0", 0
				]
			}
		}
	}
"""
end = text.rindex("}")
open(path, "w").write(text[:end] + lv + text[end:])
PY
  lvm_quiet vgcfgrestore -q --config "$config" -f "$work/vg.txt" vgodd
  lvm_quiet vgchange -an --config "$config" vgodd || true # a host with device-mapper may have activated it
  losetup -d "$loop"; loops=()
  make_fs "$work/lv" 16M 4096
  dd if="$work/lv" of="$1" bs=1M seek=1 conv=notrunc,sparse status=none
}

# 4 KiB sectors: partition 1 from sector 256 (1 MiB), 40 MiB; partition 2 after it, 40 MiB.
img=$out/gpt4k.img
rm -f "$img"; truncate -s 128M "$img"
loop=$(losetup -f --show -b 4096 "$img"); loops+=("$loop")
printf 'label: gpt\nunit: sectors\nstart=256, size=10240, type=L\nstart=10496, size=10240, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n' \
  | sfdisk -q "$loop" >/dev/null 2>&1 || true # the re-read fails on a loop
losetup -d "$loop"; loops=()
sfdisk -d "$img" 2>/dev/null | grep -q "^label: gpt" && { echo "make-odd-table-disks: gpt4k.img reads as a 512-byte-sector table" >&2; exit 1; }
make_fs "$work/p" 40M 4096
dd if="$work/p" of="$img" bs=4096 seek=256 conv=notrunc,sparse status=none
make_pv "$work/pv"
dd if="$work/pv" of="$img" bs=4096 seek=10496 conv=notrunc,sparse status=none

# A wiped protective MBR: partition 1 from sector 2048, 40 MiB.
img=$out/nombr.img
rm -f "$img"; truncate -s 64M "$img"
sgdisk -n 1:2048:+40M -t 1:8300 "$img" >/dev/null
make_fs "$work/p" 40M 1024
dd if="$work/p" of="$img" bs=512 seek=2048 conv=notrunc,sparse status=none
dd if=/dev/zero of="$img" bs=512 count=1 conv=notrunc status=none

# A damaged primary GPT (see above): one byte of its entries changed, the backup intact.
img=$out/badgpt.img
rm -f "$img"; truncate -s 64M "$img"
sgdisk -n 1:2048:+40M -t 1:8300 -c 1:data "$img" >/dev/null
make_fs "$work/p" 40M 1024
dd if="$work/p" of="$img" bs=512 seek=2048 conv=notrunc,sparse status=none
printf 'X' | dd of="$img" bs=1 seek=$((2 * 512 + 56)) conv=notrunc status=none # the first letter of the name
{ sgdisk -v "$img" 2>&1 || true; } | grep -q "Main partition table: ERROR" \
  || { echo "make-odd-table-disks: badgpt.img: sgdisk does not see a damaged primary table" >&2; sgdisk -v "$img" >&2; exit 1; }
echo "make-odd-table-disks: gpt4k.img, nombr.img and badgpt.img in $out"
