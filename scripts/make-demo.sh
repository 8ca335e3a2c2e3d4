#!/usr/bin/env bash
# Makes a demo datastore under demo/store from a generated disk image (GPT, ext4 partition with real files):
# two snapshots of vm/100, the second after a change, so that dedup and several snapshots can be seen; and a
# container backup of a small generated root file system, ct/101, once as a single-file pxar archive and once split.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-demo/store}
cli=build/restorefs
[ -x "$cli" ] || { echo "make-demo: build/restorefs is missing; run make build" >&2; exit 1; }
if [ -f "$store/.demo-complete" ] && [ -d "$store/ct/101" ]; then
  echo "demo datastore exists: $store"
  exit 0
fi
mkdir -p demo
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "making a 256 MiB demo disk image (GPT + ext4)…"
bash scripts/make-disk-image.sh "$work/disk.img" 256 >/dev/null
cat > "$work/qemu-server.conf" <<'CONF'
boot: order=scsi0
cores: 2
memory: 2048
name: demo-vm
scsi0: local-lvm:vm-100-disk-0,size=256M
scsihw: virtio-scsi-pci
CONF
rm -rf "$store"
"$cli" backup --store "$store" --group vm/100 --time 2026-11-01T10:00:00Z --config "$work/qemu-server.conf" drive-scsi0="$work/disk.img"
printf 'second snapshot\n' | dd of="$work/disk.img" bs=1 seek=$((200 * 1024 * 1024)) conv=notrunc status=none
"$cli" backup --store "$store" --group vm/100 --time 2026-11-02T10:00:00Z --config "$work/qemu-server.conf" drive-scsi0="$work/disk.img"
echo "making a small container root file system…"
ct=$work/ct
mkdir -p "$ct/etc" "$ct/home/demo" "$ct/var/log" "$ct/usr/bin"
echo demo-ct > "$ct/etc/hostname"
printf 'PRETTY_NAME="RestoreFs demo container"\nID=demo\n' > "$ct/etc/os-release"
printf 'notes of the demo user\n' > "$ct/home/demo/notes.txt"
seq 1 2000 | sed 's/^/log line /' > "$ct/var/log/app.log"
printf '#!/bin/sh\necho hello\n' > "$ct/usr/bin/hello"; chmod 0755 "$ct/usr/bin/hello"
ln "$ct/usr/bin/hello" "$ct/usr/bin/hi"
ln -s ../usr/bin/hello "$ct/etc/hello-link"
chmod 0700 "$ct/home/demo"; chown -R 1000:1000 "$ct/home/demo" 2>/dev/null || true
setfattr -n user.demo -v "an extended attribute" "$ct/home/demo/notes.txt" 2>/dev/null || true
"$cli" backup --store "$store" --group ct/101 --time 2026-11-01T12:00:00Z root.pxar="$ct"
echo "a change" >> "$ct/home/demo/notes.txt"
"$cli" backup --store "$store" --group ct/101 --time 2026-11-02T12:00:00Z --split-archive root.pxar="$ct"
touch "$store/.demo-complete"
"$cli" snapshots "$store"
