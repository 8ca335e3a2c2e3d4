#!/usr/bin/env bash
# files/ benchmark (issues 5 and 6): a backed-up GPT/ext4 disk with a 200 MiB tree of small files and one 100 MiB
# file, browsed through the mount's files/ (restore VM), next to libguestfs guestmount on the same raw image in the
# same run (when installed: apt-get install libguestfs-tools; LIBGUESTFS_BACKEND=direct).
#   bench/files/run.sh            (root; needs make build, qemu-system-x86)
set -euo pipefail
cd "$(dirname "$0")/../.."
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make build first" >&2; exit 1; }
work=$(mktemp -d /var/tmp/restorefs-bench-files.XXXXXX)
export XDG_RUNTIME_DIR=$work/run; mkdir -p "$XDG_RUNTIME_DIR"
mnt=$work/mnt; gmnt=$work/gmnt
cleanup() {
  "$cli" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true
  guestunmount "$gmnt" >/dev/null 2>&1 || umount -l "$gmnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$mnt" "$gmnt" "$work/src/tree"
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])) / 1e6:.0f} MB/s')" "$1" "$2" "$3"; }

echo "making the source tree (200 MiB of small files, one 100 MiB file)…" >&2
python3 - "$work/src" <<'PY'
import os, random, sys
root = sys.argv[1]
r = random.Random(1)
total = 0
d = 0
while total < 200 * 1024 * 1024:
    path = os.path.join(root, "tree", f"d{d // 100:03d}")
    os.makedirs(path, exist_ok=True)
    size = r.randint(4 * 1024, 48 * 1024)
    with open(os.path.join(path, f"f{d:05d}.txt"), "wb") as f:
        f.write(os.urandom(size // 2) + bytes(size - size // 2))
    total += size
    d += 1
# One directory of 20,000 small files (1-4 KiB), as a mail spool or a cache directory has them.
many = os.path.join(root, "many")
os.makedirs(many)
for i in range(20000):
    with open(os.path.join(many, f"m{i:05d}"), "wb") as f:
        f.write(os.urandom(r.randint(1024, 4096)))
with open(os.path.join(root, "big.bin"), "wb") as f:
    f.write(os.urandom(100 * 1024 * 1024))
PY
tree_bytes=$(du -sb "$work/src/tree" | cut -f1)
bash scripts/make-disk-image.sh "$work/disk.img" 512 "$work/src" >/dev/null
"$cli" backup --store "$work/store" --group vm/1 --time 2026-01-01T00:00:00Z drive-scsi0="$work/disk.img" >/dev/null 2>&1
"$cli" mount "$work/store" "$mnt" ${MOUNT_OPTS:-} >/dev/null 2>&1
fs=$mnt/snapshots/vm/1/2026-01-01T00:00:00Z/files/drive-scsi0.img/part/1
sync; echo 3 > /proc/sys/vm/drop_caches

t0=$(now); ls "$fs" >/dev/null; t1=$(now)
ls -la "$fs/tree/d010" >/dev/null; t2=$(now)
ls -la "$fs/tree/d010" >/dev/null; t3=$(now)
cp -a "$fs/tree" "$work/copy-tree"; t4=$(now)
cat "$fs/big.bin" > /dev/null; t5=$(now)
rsync -aHAX "$fs/tree/" "$work/rsync-tree/"; t6=$(now)
ls -la "$fs/many" > /dev/null; t7=$(now)
cp -a "$fs/many" "$work/copy-many-1"; t8=$(now)
find "$fs/many" -type f -exec cat {} + > /dev/null; t9=$(now)
cp -a "$fs/many" "$work/copy-many-2"; t10=$(now)
diff -rq "$work/src/many" "$work/copy-many-1" >/dev/null && diff -rq "$work/src/tree" "$work/rsync-tree" >/dev/null || { echo "bench: copied data differs!" >&2; exit 1; }
mount_pid=$(pgrep -f "restorefs mount $work/store" | head -1)
mount_rss=$(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/"$mount_pid"/status)
rm -rf "$work/rsync-tree" "$work/copy-many-1" "$work/copy-many-2"
cmp -s "$work/src/big.bin" "$fs/big.bin" && diff -rq "$work/src/tree" "$work/copy-tree" >/dev/null || { echo "bench: copied data differs!" >&2; exit 1; }
vm=$("$cli" vm status --json | python3 -c "import json,sys; v=json.load(sys.stdin)[0]; print(v['pid'], v['accelerator'])")
pid=${vm% *}; accel=${vm#* }
rss=$(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/"$pid"/status)
rm -rf "$work/copy-tree"

g_first="n/a"; g_tree="n/a"; g_big="n/a"
if command -v guestmount >/dev/null; then
  sync; echo 3 > /proc/sys/vm/drop_caches
  # Where our probe found KVM unusable, libguestfs must not try it either (QEMU aborts on this nested KVM).
  settings=""; [ -f "$XDG_RUNTIME_DIR/restorefs/kvm-unusable" ] && settings=force_tcg
  # supermin builds libguestfs' appliance from the host's kernel; a machine without one in /boot (a container)
  # gets the Debian kernel package the restore image was built from.
  if ! ls /boot/vmlinuz-* >/dev/null 2>&1 && [ -z "${SUPERMIN_KERNEL:-}" ]; then
    deb=$(ls build/restore-image/.cache/debs/linux-image-*.deb 2>/dev/null | head -1)
    if [ -n "$deb" ]; then
      dpkg-deb -x "$deb" "$work/kernel"
      kver=$(basename "$(ls -d "$work"/kernel/lib/modules/* | head -1)")
      depmod -b "$work/kernel" "$kver"
      export SUPERMIN_KERNEL=$(ls "$work"/kernel/boot/vmlinuz-* | head -1)
      export SUPERMIN_MODULES=$work/kernel/lib/modules/$kver
      # supermin also lists the host's /lib/modules, which such a machine lacks: an empty one will do.
      [ -d /lib/modules ] || { echo "bench: creating an empty /lib/modules for supermin" >&2; mkdir -p /lib/modules; }
    fi
  fi
  g0=$(now)
  if LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=$settings guestmount -a "$work/disk.img" -m /dev/sda1 --ro "$gmnt"; then
    ls "$gmnt" >/dev/null; g1=$(now)
    cp -a "$gmnt/tree" "$work/copy-tree-g"; g2=$(now)
    cat "$gmnt/big.bin" > /dev/null; g3=$(now)
    g_first="$(secs "$g0" "$g1") s"; g_tree=$(rate "$tree_bytes" "$g1" "$g2"); g_big=$(rate $((100 << 20)) "$g2" "$g3")
  else
    g_first="guestmount failed"
  fi
else
  echo "guestmount not installed (apt-get install libguestfs-tools) — no baseline" >&2
fi

echo
echo "| what ($(nproc) cores, restore VM under $accel) | RestoreFs files/ | guestmount (baseline) |"
echo "|---|---|---|"
echo "| first ls, cold (VM start included) | $(secs "$t0" "$t1") s | $g_first |"
echo "| ls -la of a 100-entry directory, first / cached | $(secs "$t1" "$t2") s / $(secs "$t2" "$t3") s | |"
echo "| cp -a of a $((tree_bytes >> 20)) MiB tree of small files | $(rate "$tree_bytes" "$t3" "$t4") | $g_tree |"
echo "| cat of a 100 MiB file | $(rate $((100 << 20)) "$t4" "$t5") | $g_big |"
echo "| rsync -aHAX of the same tree | $(rate "$tree_bytes" "$t5" "$t6") | |"
echo "| 20,000-file directory: ls -la, first | $(secs "$t6" "$t7") s | |"
echo "| 20,000-file directory: cp -a right after the ls / after a cat of every file | $(secs "$t7" "$t8") s / $(secs "$t9" "$t10") s | |"
echo "| mount process peak RSS (VmHWM) | $mount_rss | |"
echo "| restore VM RSS (QEMU) | $rss | |"
