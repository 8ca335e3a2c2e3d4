#!/usr/bin/env bash
# Makes a test disk with the older Linux file systems of long-lived servers, in OUTDIR. The file systems are made on
# the host (mkfs) and filled inside a VM booted from the restore image (the host kernel mounts none of them), with a
# small /init of our own in place of the daemon:
#   legacy.img   GPT: 1 ReiserFS 3.6 (SUSE's old default), 2 JFS, 3 F2FS — each holding the same tree
#   expected/tree/   that tree (whole-second times; modes, owners, a symbolic link, a non-ASCII name, 1.2 MB of data)
# Usage: make-legacy-disk.sh OUTDIR IMAGEDIR   (IMAGEDIR: vmlinux and initramfs.img of make restore-image)
set -euo pipefail
. "$(dirname "$0")/guest-vm.sh"
out=${1:?usage: make-legacy-disk.sh OUTDIR IMAGEDIR}
image=${2:?usage: make-legacy-disk.sh OUTDIR IMAGEDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.reiserfs mkfs.jfs mkfs.f2fs qemu-system-x86_64 lz4 cpio python3; do
  command -v "$tool" >/dev/null || { echo "make-legacy-disk: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
[ -f "$image/vmlinux" ] && [ -f "$image/initramfs.img" ] || { echo "make-legacy-disk: no restore image in $image (make restore-image)" >&2; exit 1; }
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap '[ -n "${MAKE_LEGACY_KEEP:-}" ] || rm -rf "$work"' EXIT
prng() { python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($1).randbytes($2))"; }

t=$out/expected/tree
rm -rf "$out/expected"; mkdir -p "$t/etc/sysconfig" "$t/home/tux/mail" "$t/srv/www"
echo "sles9-server" > "$t/etc/HOSTNAME"
echo 'ROOTFS="reiserfs"' > "$t/etc/sysconfig/storage"
echo "Grüße aus Nürnberg" > "$t/home/tux/mail/Grüße.txt"
echo "private" > "$t/home/tux/mail/inbox"; chmod 600 "$t/home/tux/mail/inbox"
chown -R 1000:100 "$t/home/tux"
prng 41 1200000 > "$t/srv/www/archive.tar"
ln -s archive.tar "$t/srv/www/latest"
python3 - "$t" <<'EOF'
import os, sys
t = 1100000000
for root, dirs, files in os.walk(sys.argv[1], topdown=False):
    for n in files + dirs:
        os.utime(os.path.join(root, n), (t, t), follow_symlinks=False)
        t += 13
EOF
# busybox tar sets no symlink times and writes a directory's time before its contents: a script sets them after.
python3 - "$t" > "$work/fix-times.sh" <<'PY'
import os, shlex, sys
base = sys.argv[1]
for root, dirs, files in os.walk(base, topdown=False):
    for n in files + dirs:
        p = os.path.join(root, n)
        if os.path.islink(p) or os.path.isdir(p):
            print(f"touch -h -d @{int(os.lstat(p).st_mtime)} \"$1\"/{shlex.quote(os.path.relpath(p, base))}")
PY
( cd "$t" && tar --format=gnu --numeric-owner -cf "$work/payload.tar" . )

img=$out/legacy.img
rm -f "$img"; truncate -s 256M "$img"
sgdisk -n 1:2048:+64M -t 1:8300 -c 1:reiserfs -n 2:0:+32M -t 2:8300 -c 2:jfs -n 3:0:+64M -t 3:8300 -c 3:f2fs "$img" >/dev/null
part() { sgdisk -i "$1" "$img" | awk '/^First sector/ {f=$3} /^Last sector/ {l=$3} END {print f, l - f + 1}'; }
for n in 1 2 3; do
  read -r first count < <(part "$n")
  truncate -s $((count * 512)) "$work/p$n"
  case $n in
    1) mkfs.reiserfs -q -ff -l oldsrv "$work/p$n" >/dev/null 2>&1 ;;
    2) mkfs.jfs -q -L oldsrv "$work/p$n" >/dev/null ;;
    3) mkfs.f2fs -q -l oldsrv "$work/p$n" >/dev/null ;;
  esac
  dd if="$work/p$n" of="$img" bs=512 seek="$first" conv=notrunc,sparse status=none
done

mkdir -p "$work/overlay"
cp "$work/fix-times.sh" "$work/overlay/fix-times.sh"
cat > "$work/overlay/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
fail() { echo "MAKE-LEGACY-FAILED: $*" > /dev/console; poweroff -f; }
while read -r m; do [ -n "$m" ] && modprobe -q "$m"; done < /etc/modules.early
for m in crc32c_generic crc32_generic reiserfs jfs f2fs; do modprobe "$m" || fail "modprobe $m"; done
for i in $(seq 1 100); do [ "$(ls /sys/block | grep -c "^vd")" = 2 ] && break; sleep 0.1; done
for d in /sys/block/vd*; do eval "disk_$(cat "$d/serial")=/dev/${d##*/}"; done
for i in $(seq 1 100); do [ -b "${disk_legacy}3" ] && break; sleep 0.1; done
mkdir -p /fill
for p in 1:reiserfs 2:jfs 3:f2fs; do
  n=${p%%:*}; type=${p#*:}
  mount -t "$type" "${disk_legacy}$n" /fill || fail "mount $type"
  tar -xf "$disk_payload" -C /fill || fail "payload into $type"
  sh /fix-times.sh /fill || fail "times on $type"
  umount /fill || fail "umount $type"
done
sync
echo "MAKE-LEGACY-OK" > /dev/console
poweroff -f
EOF
chmod 755 "$work/overlay/init"
echo "make-legacy-disk: filling the file systems in a VM (TCG: under a minute)" >&2
GUEST_VM_TIMEOUT=${MAKE_LEGACY_TIMEOUT:-600} GUEST_VM_QUIET=${MAKE_LEGACY_QUIET-quiet} \
  guest_vm make-legacy-disk "$image" "$work" MAKE-LEGACY-OK legacy="$img" payload="$work/payload.tar:ro" \
  || { echo "make-legacy-disk: the VM did not fill the file systems" >&2; exit 1; }
echo "make-legacy-disk: $img" >&2
