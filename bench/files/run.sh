#!/usr/bin/env bash
# files/ benchmark (issues 5, 6, 12): a backed-up GPT/ext4 disk with a 200 MiB tree of small files, a directory of
# 20,000 small files and one 100 MiB file, browsed through the mount's files/ (restore VM), next to libguestfs
# guestmount on the same raw image in the same run, with the same steps (when installed: apt-get install
# libguestfs-tools; LIBGUESTFS_BACKEND=direct); then memory after browsing eight snapshots, on both.
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
  # Only what is still mounted: guestunmount retries for about half a minute on a directory that is not.
  for d in "$gmnt" "$work"/g[0-9]; do mountpoint -q "$d" 2>/dev/null && { guestunmount "$d" >/dev/null 2>&1 || umount -l "$d" 2>/dev/null || true; }; done
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
# One sequence of steps, run on RestoreFs' files/ and on guestmount alike; prints "name seconds" lines.
#   steps DIR (the file system's root)
steps() {
  local fs=$1 out=$2 t
  mark() { t=$(now); }
  lap() { echo "$1 $(secs "$t" "$(now)")" >> "$out"; t=$(now); }
  sync; echo 3 > /proc/sys/vm/drop_caches
  mark; ls "$fs" >/dev/null; lap first_ls
  ls -la "$fs/tree/d010" >/dev/null; lap ls_100
  ls -la "$fs/tree/d010" >/dev/null; lap ls_100_cached
  cp -a "$fs/tree" "$work/copy-tree"; lap cp_tree
  cat "$fs/big.bin" > /dev/null; lap cat_big
  rsync -aHAX "$fs/tree/" "$work/rsync-tree/"; lap rsync_tree
  ls -la "$fs/many" > /dev/null; lap ls_many
  sync; echo 3 > /proc/sys/vm/drop_caches; mark
  cp -a "$fs/many" "$work/copy-many-1"; lap cp_many_after_ls
  find "$fs/many" -type f -exec cat {} + > /dev/null; mark
  cp -a "$fs/many" "$work/copy-many-2"; lap cp_many_after_cat
  diff -rq "$work/src/many" "$work/copy-many-1" >/dev/null && diff -rq "$work/src/tree" "$work/rsync-tree" >/dev/null \
    && diff -rq "$work/src/tree" "$work/copy-tree" >/dev/null && cmp -s "$work/src/big.bin" "$fs/big.bin" \
    || { echo "bench: copied data differs!" >&2; exit 1; }
  rm -rf "$work/rsync-tree" "$work/copy-many-1" "$work/copy-many-2" "$work/copy-tree"
}
# Browsing one snapshot's files for the memory phase: a find of the tree and a cat of one of its directories.
browse() { find "$1/tree" | wc -l >/dev/null; cat "$1"/tree/d000/* > /dev/null; }
rss_mib() { awk '/^VmRSS/ {s += $2} END {printf "%.0f", s / 1024}' "$@" 2>/dev/null; }
hwm_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
qemu_rss() { local p f=(); for p in "$@"; do f+=("/proc/$p/status"); done; [ ${#f[@]} -gt 0 ] && rss_mib "${f[@]}" || echo 0; }
get() { awk -v k="$2" '$1 == k {print $2}' "$1"; }
# libguestfs' appliances: every QEMU that is not one of our restore VMs (their command lines name the disk's overlay,
# not the image; ours are stopped before guestmount runs).
appliances() { local p; for p in $(pgrep -f qemu-system || true); do grep -qa restorefs-vm "/proc/$p/cmdline" 2>/dev/null || echo "$p"; done; }

"$cli" mount "$work/store" "$mnt" ${MOUNT_OPTS:-} >/dev/null 2>&1
ours=$work/ours.txt; : > "$ours"
steps "$mnt/snapshots/vm/1/2026-01-01T00:00:00Z/files/drive-scsi0.img/part/1" "$ours"
mount_pid=$(pgrep -f "restorefs mount $work/store" | head -1)
echo "mount_hwm $(hwm_mib "$mount_pid")" >> "$ours"
vm=$("$cli" vm status --json | python3 -c "import json,sys; v=json.load(sys.stdin)[0]; print(v['pid'], v['accelerator'])")
accel=${vm#* }
echo "qemu_rss $(qemu_rss "${vm% *}")" >> "$ours"

# Memory after browsing eight snapshots one after another (same disk under eight backup times: deduplicated).
echo "backing up seven more snapshots…" >&2
for i in 2 3 4 5 6 7 8; do
  "$cli" backup --store "$work/store" --group vm/1 --time "2026-01-0${i}T00:00:00Z" drive-scsi0="$work/disk.img" >/dev/null 2>&1
done
"$cli" umount "$mnt" >/dev/null 2>&1
"$cli" mount "$work/store" "$mnt" ${MOUNT_OPTS:-} >/dev/null 2>&1
mount_pid=$(pgrep -f "restorefs mount $work/store" | head -1)
t=$(now)
for i in 1 2 3 4 5 6 7 8; do browse "$mnt/snapshots/vm/1/2026-01-0${i}T00:00:00Z/files/drive-scsi0.img/part/1"; done
echo "eight_browse $(secs "$t" "$(now)")" >> "$ours"
pids=$("$cli" vm status --json | python3 -c "import json,sys; print(' '.join(str(v['pid']) for v in json.load(sys.stdin)))")
echo "eight_mount_rss $(rss_mib /proc/"$mount_pid"/status) eight_mount_hwm $(hwm_mib "$mount_pid")" | tr ' ' '\n' | paste - - -d' ' >> "$ours"
# shellcheck disable=SC2086
echo "eight_qemu_rss $(qemu_rss $pids) eight_vms $(wc -w <<<"$pids")" | tr ' ' '\n' | paste - - -d' ' >> "$ours"
"$cli" vm stop --all >/dev/null 2>&1; sleep 35 # the mount releases a stopped VM's state at its next sweep (30 s)
echo "eight_mount_rss_after_stop $(rss_mib /proc/"$mount_pid"/status)" >> "$ours"
"$cli" umount "$mnt" >/dev/null 2>&1

theirs=$work/guestmount.txt; : > "$theirs"
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
  export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=$settings
  # The appliance is built once (cached by libguestfs): not part of the figures.
  guestmount -a "$work/disk.img" -m /dev/sda1 --ro "$gmnt" && guestunmount "$gmnt"
  t=$(now)
  if guestmount -a "$work/disk.img" -m /dev/sda1 --ro --pid-file "$work/gm.pid" "$gmnt"; then
    echo "start $(secs "$t" "$(now)")" >> "$theirs"
    steps "$gmnt" "$theirs"
    gm=$(cat "$work/gm.pid")
    echo "mount_hwm $(hwm_mib "$gm")" >> "$theirs"
    echo "qemu_rss $(qemu_rss $(appliances))" >> "$theirs"
    guestunmount "$gmnt"
    # Eight snapshots: one guestmount (and one appliance) each, as a user would browse them.
    t=$(now); gms=()
    for i in 1 2 3 4 5 6 7 8; do
      mkdir -p "$work/g$i"
      guestmount -a "$work/disk.img" -m /dev/sda1 --ro --pid-file "$work/g$i.pid" "$work/g$i"
      browse "$work/g$i"; gms+=("/proc/$(cat "$work/g$i.pid")/status")
    done
    echo "eight_browse $(secs "$t" "$(now)")" >> "$theirs"
    echo "eight_mount_rss $(rss_mib "${gms[@]}")" >> "$theirs"
    echo "eight_qemu_rss $(qemu_rss $(appliances))" >> "$theirs"
    for i in 1 2 3 4 5 6 7 8; do guestunmount "$work/g$i"; done
  else
    echo "start failed" >> "$theirs"
  fi
else
  echo "guestmount not installed (apt-get install libguestfs-tools) — no baseline" >&2
fi

o() { get "$ours" "$1"; }
g() { local v; v=$(get "$theirs" "$1"); echo "${v:-n/a}"; }
mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:.0f} MB/s' if sys.argv[2] not in ('', 'n/a') else 'n/a')" "$1" "$2"; }
echo
echo "| what ($(nproc) cores, restore VM under $accel) | RestoreFs files/ | guestmount (baseline) |"
echo "|---|---|---|"
echo "| first ls, cold (VM start included; guestmount: its start + first ls) | $(o first_ls) s | $(python3 -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]):.2f} s')" "$(g start)" "$(g first_ls)" 2>/dev/null || echo n/a) |"
echo "| ls -la of a 100-entry directory, first / cached | $(o ls_100) s / $(o ls_100_cached) s | $(g ls_100) s / $(g ls_100_cached) s |"
echo "| cp -a of a $((tree_bytes >> 20)) MiB tree of small files | $(mb "$tree_bytes" "$(o cp_tree)") | $(mb "$tree_bytes" "$(g cp_tree)") |"
echo "| cat of a 100 MiB file | $(mb $((100 << 20)) "$(o cat_big)") | $(mb $((100 << 20)) "$(g cat_big)") |"
echo "| rsync -aHAX of the same tree | $(mb "$tree_bytes" "$(o rsync_tree)") | $(mb "$tree_bytes" "$(g rsync_tree)") |"
echo "| 20,000-file directory: ls -la, first | $(o ls_many) s | $(g ls_many) s |"
echo "| 20,000-file directory: cp -a right after the ls (page cache dropped) / after a cat of every file | $(o cp_many_after_ls) s / $(o cp_many_after_cat) s | $(g cp_many_after_ls) s / $(g cp_many_after_cat) s |"
echo "| mount process peak RSS (VmHWM) / restore VM (QEMU) RSS, one snapshot | $(o mount_hwm) MiB / $(o qemu_rss) MiB | $(g mount_hwm) MiB / $(g qemu_rss) MiB |"
echo "| eight snapshots browsed one after another (find + cat of 100 files each): time | $(o eight_browse) s | $(g eight_browse) s |"
echo "| … RSS of the mount process(es) / of the QEMUs ($(o eight_vms) VMs running at the end for RestoreFs) | $(o eight_mount_rss) MiB (peak $(o eight_mount_hwm)) / $(o eight_qemu_rss) MiB | $(g eight_mount_rss) MiB / $(g eight_qemu_rss) MiB |"
echo "| … RSS of the mount process after vm stop --all | $(o eight_mount_rss_after_stop) MiB | |"
