#!/usr/bin/env bash
# Same-run peer comparison (issue 16): one GPT/ext4 disk image backed up and mounted by RestoreFs, borg (4 MiB fixed
# chunks), restic and squashfuse (zstd, 1 MiB blocks); prints one table, RestoreFs first, ratios in the last column,
# then where a cold random read of RestoreFs goes (bench/peers/ChunkSplit: disk, CRC, zstd, SHA-256 of one chunk).
#   bench/peers/run.sh [SIZE_MiB]     (root; needs build/restorefs; installs the peers when missing)
# Mount ready and the first 4 KiB read are taken with the tool's own files warm and its repository evicted from the
# page cache; every other read figure after dropping all caches. The image is SIZE_MiB (default 2048): system trees (copies of /usr/share and /usr/lib), logs, incompressible data
# (600/2048 of it) and the rest zeros (about 940/2048), all scaled to SIZE_MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-2048}
samples=${RANDOM_SAMPLES:-300}
cli=$PWD/build/restorefs
probe=$PWD/bench/peers/probe.py
[ -x "$cli" ] || { echo "run make cli first" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (loop devices, FUSE, drop_caches)" >&2; exit 1; }
dotnet build bench/peers/ChunkSplit -c Release -o build/bench-chunksplit --nologo -v quiet >/dev/null

need=()
command -v borg >/dev/null || need+=(borgbackup)
command -v restic >/dev/null || need+=(restic)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v squashfuse >/dev/null || need+=(squashfuse)
/usr/bin/python3 -c 'import llfuse' 2>/dev/null || /usr/bin/python3 -c 'import pyfuse3' 2>/dev/null || need+=(python3-llfuse python3-pyfuse3)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/restorefs-peers.XXXXXX)
img=$work/disk.img
mnt=$work/mnt
loop=
restic_pid=
cleanup() {
  set +e
  mountpoint -q "$work/fs" 2>/dev/null && umount "$work/fs"
  [ -n "$loop" ] && losetup -d "$loop"
  "$cli" umount "$mnt" >/dev/null 2>&1
  [ -n "$restic_pid" ] && kill "$restic_pid" 2>/dev/null
  mountpoint -q "$mnt" 2>/dev/null && { fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; }
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$mnt" "$work/fs"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
scale() { echo $(( size_mib * $1 / 2048 )); }

# --- the image -------------------------------------------------------------------------------------------------
echo "making a ${size_mib} MiB GPT/ext4 image…" >&2
truncate -s "${size_mib}M" "$img"
echo 'label: gpt
start=2048, type=linux' | sfdisk -q "$img"
# The partition through a loop device of its own range (no udev needed for partition nodes).
loop=$(losetup --show -f -o $((1 << 20)) --sizelimit $(((size_mib - 2) << 20)) "$img")
mkfs.ext4 -q -F -L bench "$loop"
mount "$loop" "$work/fs"
trees_mib=$(scale 380); logs_mib=$(scale 64); random_mib=$(scale 600)
mkdir -p "$work/fs/usr" "$work/fs/var/log" "$work/fs/data"
# System trees: the first trees_mib of a tar stream of /usr/share and /usr/lib (a truncated stream ends in an error).
tar -C / -cf - usr/share usr/lib 2>/dev/null | head -c "$((trees_mib << 20))" | tar -C "$work/fs" -xf - 2>/dev/null || true
python3 - "$work/fs/var/log" "$logs_mib" <<'PY'
import random, sys, os
d, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(3)
units = ["sshd", "kernel", "systemd", "cron", "pvedaemon", "nginx", "postfix/smtpd"]
msgs = ["Accepted publickey for root from 10.0.%d.%d port %d", "Started Session %d of user root.",
        "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none. (%d,%d,%d)",
        "connect from unknown[192.168.%d.%d] port %d", "GET /api2/json/nodes/%d/status HTTP/1.1 200 %d (%d)"]
per = max(1, mib // 8) << 20
def msg(m):
    return m % tuple(rng.randint(0, 65535) for _ in range(m.count("%d")))
for n in range(8):
    with open(os.path.join(d, f"syslog.{n}"), "w") as f:
        size = 0
        while size < per:
            line = "Nov %2d %02d:%02d:%02d pve %s[%d]: %s\n" % (rng.randint(1, 30), rng.randint(0, 23), rng.randint(0, 59),
                rng.randint(0, 59), rng.choice(units), rng.randint(100, 99999),
                msg(rng.choice(msgs)))
            f.write(line); size += len(line)
PY
for ((i = 0; i < random_mib; i += 64)); do
  n=$(( random_mib - i < 64 ? random_mib - i : 64 ))
  head -c "$((n << 20))" /dev/urandom > "$work/fs/data/blob.$i"
done
umount "$work/fs"; losetup -d "$loop"; loop=
bytes=$(stat -c %s "$img")
nblocks=$(python3 "$probe" map "$img" "$work/data.map")
echo "image: $(du -m "$img" | cut -f1) MiB allocated of ${size_mib} MiB, $((nblocks / 16)) MiB in non-zero 64 KiB blocks" >&2

# --- backups ---------------------------------------------------------------------------------------------------
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_REPO=$work/borg
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
borg init -e none >/dev/null 2>&1
restic init -q >/dev/null
# Our datastore's layout (its 65,536 chunk directories, as PBS makes them) is made untimed, as the peers' repositories
# are by their init: a tiny backup into the new store.
head -c 4096 /dev/urandom > "$work/tiny.img"
"$cli" backup --store "$work/store" --group vm/1 --time 2026-11-01T00:00:00Z layout="$work/tiny.img" >/dev/null 2>&1
timed() { # command… -> elapsed seconds (the image is in the page cache first)
  cat "$img" > /dev/null
  /usr/bin/time -f %e -o "$work/t" "$@" >/dev/null 2>"$work/backup.err" || { cat "$work/backup.err" >&2; return 1; }
  cat "$work/t"
}
declare -A backup
echo "backing up…" >&2
backup[restorefs]=$(timed "$cli" backup --store "$work/store" --group vm/900 --time 2026-11-01T00:00:00Z drive-scsi0="$img")
backup[borg]=$(timed borg create --chunker-params fixed,4194304 ::img "$img")
backup[restic]=$(timed restic backup -q "$img")
backup[squashfuse]=$(timed mksquashfs "$img" "$work/img.sqfs" -comp zstd -b 1M -noappend -quiet -no-progress)

# --- mounts ----------------------------------------------------------------------------------------------------
rel=${img#/}
file_of() {
  case $1 in
    restorefs) echo "snapshots/vm/900/2026-11-01T00:00:00Z/drive-scsi0.img" ;;
    borg) echo "$rel" ;;
    restic) echo "snapshots/latest/$rel" ;;
    squashfuse) echo "disk.img" ;;
  esac
}
mount_cmd() {
  case $1 in
    restorefs) echo "$cli" mount "$work/store" "$mnt" --no-vm ;;
    borg) echo borg mount -f ::img "$mnt" ;;
    restic) echo restic mount --no-default-permissions "$mnt" ;;
    squashfuse) echo squashfuse -f "$work/img.sqfs" "$mnt" ;;
  esac
}
repo_of() {
  case $1 in
    restorefs) echo "$work/store" ;;
    borg) echo "$work/borg" ;;
    restic) echo "$work/restic" ;;
    squashfuse) echo "$work/img.sqfs" ;;
  esac
}
warm_binary() {
  case $1 in
    restorefs) "$cli" --help >/dev/null ;;
    borg) borg --version >/dev/null ;;
    restic) restic version >/dev/null ;;
    squashfuse) squashfuse --help >/dev/null 2>&1 || true ;;
  esac
}
declare -A ready first seq_cold seq_warm rnd rnd_warm hwm
daemon_pid=
do_mount() { # tool -> sets last_ready/last_first, daemon_pid
  local out
  # shellcheck disable=SC2046
  out=$(python3 "$probe" ready "$mnt" "$(file_of "$1")" -- $(mount_cmd "$1"))
  read -r last_ready last_first daemon_pid <<<"$out"
  if [ "$1" = restorefs ]; then daemon_pid=$(pgrep -n -f -- "mount $work/store $mnt --foreground"); fi
  [ "$1" = restic ] && restic_pid=$daemon_pid
  return 0
}
do_umount() { # tool
  local kb
  kb=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null || echo 0)
  [ "${kb:-0}" -gt "${hwm[$1]:-0}" ] && hwm[$1]=$kb
  case $1 in
    restorefs) "$cli" umount "$mnt" >/dev/null ;;
    restic) kill -INT "$daemon_pid" ;;
    *) fusermount3 -u "$mnt" ;;
  esac
  for _ in $(seq 200); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$daemon_pid" 2>/dev/null && { kill "$daemon_pid"; sleep 0.5; }
  mountpoint -q "$mnt" && umount -l "$mnt"
  [ "$1" = restic ] && restic_pid=
  return 0
}
dd_rate() { # file -> MB/s
  dd if="$1" of=/dev/null bs=1M 2>&1 | awk -v b="$bytes" '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); printf "%.0f", b / s / 1e6}'
}
tools=(restorefs borg restic squashfuse)
for t in "${tools[@]}"; do
  echo "measuring $t…" >&2
  # Mount ready and first read: the tool's own files warm (a mount before), its repository cold (evicted).
  warm_binary "$t"; do_mount "$t"; do_umount "$t"
  sync; python3 "$probe" evict "$(repo_of "$t")"
  do_mount "$t"; ready[$t]=$last_ready; first[$t]=$last_first
  drop
  seq_cold[$t]=$(dd_rate "$mnt/$(file_of "$t")")
  do_umount "$t"
  do_mount "$t"  # fresh mount, repository in the page cache
  seq_warm[$t]=$(dd_rate "$mnt/$(file_of "$t")")
  do_umount "$t"
  do_mount "$t"
  drop
  rnd[$t]=$(python3 "$probe" random "$mnt/$(file_of "$t")" "$work/data.map" "$samples" 7)
  do_umount "$t"
  # The same reads with the repository in the page cache (fresh mount): the difference to the cold row is disk I/O.
  find "$(repo_of "$t")" -type f -exec cat {} + > /dev/null
  do_mount "$t"
  rnd_warm[$t]=$(python3 "$probe" random "$mnt/$(file_of "$t")" "$work/data.map" "$samples" 7)
  do_umount "$t"
done

# --- the table -------------------------------------------------------------------------------------------------
ratio() { # higher|lower ours peers… -> "ours ÷ best peer"
  python3 - "$@" <<'PY'
import sys
better, ours, *peers = sys.argv[1:]
vals = [float(p) for p in peers if p not in ("", "—")]
best = max(vals) if better == "higher" else min(vals)
print(f"{float(ours) / best:.2f}× ({'higher' if better == 'higher' else 'lower'} is better)")
PY
}
mbs() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:.0f}')" "$bytes" "$1"; }
row() { # label better values…
  local label=$1 better=$2; shift 2
  local r; r=$(ratio "$better" "$1" "${@:2}")
  echo "| $label | $1 | $2 | $3 | $4 | $r |"
}
p50() { echo "${rnd[$1]% *}"; }
p99() { echo "${rnd[$1]#* }"; }
w50() { echo "${rnd_warm[$1]% *}"; }
w99() { echo "${rnd_warm[$1]#* }"; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1024:.0f}')" "${hwm[$1]:-0}"; }
echo
echo "${size_mib} MiB GPT/ext4 image, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $samples random reads"
echo
echo "| figure | RestoreFs | borg mount (4 MiB fixed chunks) | restic mount | squashfuse (zstd, 1 MiB blocks) | RestoreFs ÷ best peer |"
echo "|---|---|---|---|---|---|"
row "sequential read, cold (MB/s)" higher "${seq_cold[restorefs]}" "${seq_cold[borg]}" "${seq_cold[restic]}" "${seq_cold[squashfuse]}"
row "sequential, repository in page cache, fresh mount (MB/s)" higher "${seq_warm[restorefs]}" "${seq_warm[borg]}" "${seq_warm[restic]}" "${seq_warm[squashfuse]}"
row "random 4 KiB on data blocks, cold, p50 (ms)" lower "$(p50 restorefs)" "$(p50 borg)" "$(p50 restic)" "$(p50 squashfuse)"
row "random 4 KiB on data blocks, cold, p99 (ms)" lower "$(p99 restorefs)" "$(p99 borg)" "$(p99 restic)" "$(p99 squashfuse)"
row "random 4 KiB, repository in page cache, fresh mount, p50 (ms)" lower "$(w50 restorefs)" "$(w50 borg)" "$(w50 restic)" "$(w50 squashfuse)"
row "random 4 KiB, repository in page cache, fresh mount, p99 (ms)" lower "$(w99 restorefs)" "$(w99 borg)" "$(w99 restic)" "$(w99 squashfuse)"
row "peak RSS of the daemon (MiB)" lower "$(mib restorefs)" "$(mib borg)" "$(mib restic)" "$(mib squashfuse)"
row "mount ready (ms)" lower "${ready[restorefs]}" "${ready[borg]}" "${ready[restic]}" "${ready[squashfuse]}"
row "first 4 KiB read of a fresh mount (ms)" lower "${first[restorefs]}" "${first[borg]}" "${first[restic]}" "${first[squashfuse]}"
row "backup of the image (MB/s; squashfuse: mksquashfs)" higher "$(mbs "${backup[restorefs]}")" "$(mbs "${backup[borg]}")" "$(mbs "${backup[restic]}")" "$(mbs "${backup[squashfuse]}")"
echo
best=$(python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$(p50 borg)" "$(p50 restic)")
echo "Where a cold random 4 KiB read of RestoreFs goes: each step of decoding one chunk timed alone, over the chunks"
echo "that hold the random reads' blocks (ms; RestoreFs's p50 in the table: $(p50 restorefs) ms; the aim, 0.75× the better of"
echo "borg and restic: $(python3 -c "print(f'{0.75 * $best:.2f}')") ms):"
echo
echo "| step | median (ms) | p90 (ms) |"
echo "|---|---|---|"
dotnet build/bench-chunksplit/ChunkSplit.dll "$work/store" "$work/store/vm/900/2026-11-01T00:00:00Z/drive-scsi0.img.fidx" "$work/data.map" "$samples" 7
