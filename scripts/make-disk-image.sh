#!/usr/bin/env bash
# Makes a raw disk image with a GPT and one ext4 partition holding a small tree of real files, without root:
#   make-disk-image.sh OUTPUT.img [SIZE_MiB] [SOURCE_DIR]
# The tree is SOURCE_DIR when given, else a generated one (text files, a symlink, odd modes, a larger binary file).
set -euo pipefail
out=${1:?usage: make-disk-image.sh OUTPUT.img [SIZE_MiB] [SOURCE_DIR]}
size_mib=${2:-64}
src=${3:-}
for tool in sgdisk mkfs.ext4; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] || { echo "make-disk-image: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin:/sbin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$src" ]; then
  src="$work/tree"
  mkdir -p "$src/etc" "$src/home/admin/docs" "$src/var/log" "$src/srv/data"
  echo "demo-vm" > "$src/etc/hostname"
  printf 'root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/bash\n' > "$src/etc/passwd"
  printf '127.0.0.1 localhost\n127.0.1.1 demo-vm\n' > "$src/etc/hosts"
  for i in $(seq 1 50); do echo "log line $i of the demo VM" >> "$src/var/log/syslog"; done
  echo "Quarterly numbers, restored from a backup." > "$src/home/admin/docs/report.txt"
  chmod 600 "$src/home/admin/docs/report.txt"
  ln -s ../../etc/hostname "$src/home/admin/hostname-link"
  head -c $((8 * 1024 * 1024)) /dev/urandom > "$src/srv/data/blob.bin"
  for i in $(seq 1 200); do echo "small file $i" > "$src/srv/data/file-$i.txt"; done
fi

part_mib=$((size_mib - 2))
truncate -s "${part_mib}M" "$work/part.img"
mkfs.ext4 -q -F -L demo-root -d "$src" "$work/part.img"
rm -f "$out"
truncate -s "${size_mib}M" "$out"
sgdisk -n 1:2048:+${part_mib}M -t 1:8300 -c 1:root "$out" >/dev/null
dd if="$work/part.img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
echo "$out: ${size_mib} MiB, GPT, partition 1 ext4 (${part_mib} MiB)"
