#!/usr/bin/env bash
# pxar benchmark (issue 14): one tree of copies of /usr backed up with restorefs (pxar v1 + catalog, and split v2),
# borg and restic (each into its own repository), then mounted fresh by each: first `ls` of the root and of a deep
# directory, `find | wc -l`, `cp -a` of a subtree (into a tmpfs), peak RSS of the mount process. RestoreFs first; last,
# the same copy straight from the source tree in the page cache (the floor of the copy).
#   bench/pxar/run.sh                 (root; needs make cli; apt-get install borgbackup python3-llfuse restic)
#   FILES=200000 bench/pxar/run.sh    (copies of /usr until about FILES entries; default 200000)
#   SUB=usr0/doc bench/pxar/run.sh    (the subtree to copy; default: the directory of the first copy with the most entries)
set -euo pipefail
cd "$(dirname "$0")/../.."
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make cli first" >&2; exit 1; }
want=${FILES:-200000}
from=${FROM:-/usr}   # what to copy (FROM=/usr/include FILES=20000 for a quick run)
work=$(mktemp -d /var/tmp/restorefs-bench-pxar.XXXXXX)
export XDG_RUNTIME_DIR=$work/run; mkdir -p "$XDG_RUNTIME_DIR"
pids=()
cleanup() {
  for m in "$work"/mnt-*; do
    [ -d "$m" ] || continue
    mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${copydir:-}" ] && mountpoint -q "$copydir" && umount "$copydir"
  rm -rf "$work"
}
trap cleanup EXIT
# Copies go to a tmpfs: the figure is then the mount's side of `cp -a` (lookups, opens, reads, xattrs), not the time
# this machine's disk takes to create thousands of files, which is the same for every tool and hides their differences.
copydir=$work/copy; mkdir -p "$copydir"; mount -t tmpfs -o size=50% restorefs-bench "$copydir"
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f ms", (b - a) * 1000 }'; }

echo "making the source tree (copies of $from until about $want entries)…" >&2
src=$work/src; mkdir -p "$src"
n=0; i=0
while [ "$n" -lt "$want" ]; do
  cp -a --one-file-system "$from" "$src/usr$i" 2>/dev/null || true
  n=$(find "$src" | wc -l); i=$((i + 1))
done
entries=$(find "$src" | wc -l)
deep=$(cd "$src" && find . -mindepth 6 -type d | awk -F/ '{ print NF, $0 }' | sort -n | tail -1 | cut -d' ' -f2-)
# The subtree to copy: SUB (a path below the tree), else the directory of the first copy with the most entries below it
# (with FROM=/usr/share: its man pages, 25,000 entries) — a restore of a directory as an admin makes it, not a handful
# of files whose copy takes a few milliseconds whatever the tool.
if [ -n "${SUB:-}" ]; then
  sub=$SUB
else
  sub=usr0/$(cd "$src/usr0" && for d in */; do printf '%s %s\n' "$(find "$d" | wc -l)" "${d%/}"; done | sort -n | tail -1 | cut -d' ' -f2-)
fi
echo "tree: $entries entries ($(du -sh "$src" | cut -f1)), deep directory $deep, subtree $sub: $(find "$src/$sub" | wc -l) entries ($(du -sh "$src/$sub" | cut -f1))" >&2

time_backup() { local t0; t0=$(now); "$@" >/dev/null 2>&1; ms "$t0" "$(now)"; }
b_rfs=$(time_backup "$cli" backup --store "$work/store" --group host/bench --time 2026-01-01T00:00:00Z root.pxar="$src")
b_rfs2=$(time_backup "$cli" backup --store "$work/store" --group host/bench2 --time 2026-01-01T00:00:00Z --split-archive root.pxar="$src")
export BORG_PASSPHRASE="" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg init -e none "$work/borg" >/dev/null 2>&1
b_borg=$(time_backup bash -c "cd '$src' && borg create '$work/borg::bench' .")
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic
restic init >/dev/null 2>&1
b_restic=$(time_backup bash -c "cd '$src' && restic backup --quiet .")

# mount_and_measure NAME ROOT-INSIDE-MOUNT COMMAND… : COMMAND mounts on $mnt in the foreground (backgrounded here).
measure() {
  local name=$1 inner=$2; shift 2
  local mnt=$work/mnt-$name; mkdir -p "$mnt"
  sync; echo 3 > /proc/sys/vm/drop_caches
  "$@" "$mnt" > "$work/$name.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  for _ in $(seq 3000); do mountpoint -q "$mnt" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if ! mountpoint -q "$mnt"; then
    printf '%-22s did not mount: %s\n' "$name" "$(tail -1 "$work/$name.log")"; return 0
  fi
  local root=$mnt/$inner
  local t0 t1 t2 t3 t4 count
  # A mount may show its mount point before its archive (restic loads its index first): the first `ls` counts from
  # the mount point's appearance until the tree's root lists.
  t0=$(now)
  for _ in $(seq 1200); do [ -d "$root/usr0" ] || [ -d "$root$src/usr0" ] && break; sleep 0.05; done
  [ -d "$root/usr0" ] || [ ! -d "$root$src/usr0" ] || root=$root$src   # restic keeps absolute paths
  ls "$root" >/dev/null || echo "$name: ls of the root failed" >&2; t1=$(now)
  ls "$root/$deep" >/dev/null || echo "$name: ls of $deep failed" >&2; t2=$(now)
  count=$(find "$root/" | wc -l); t3=$(now)   # the slash: restic's snapshots/latest is a symlink
  cp -a "$root/$sub" "$copydir/$name" || echo "$name: cp -a failed" >&2; t4=$(now)
  local rss; rss=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' /proc/"$pid"/status 2>/dev/null || echo "?")
  # Page faults of the mount process over the whole measure (fresh pages: on a virtual machine a large part of a walk).
  local faults; faults=$(awk '{ print $10 }' /proc/"$pid"/stat 2>/dev/null || echo "?")
  printf '%-22s %12s %12s %10s %12s %12s %10s %10s\n' "$name" "$(ms "$t0" "$t1")" "$(ms "$t1" "$t2")" "$count" "$(ms "$t2" "$t3")" "$(ms "$t3" "$t4")" "$rss" "$faults"
  fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "${copydir:?}/$name"
}

echo "backup: restorefs v1 $b_rfs, restorefs split $b_rfs2, borg $b_borg, restic $b_restic"
printf '%-22s %12s %12s %10s %12s %12s %10s %10s\n' mount "first ls /" "first ls deep" entries "find|wc -l" "cp -a sub" "peak RSS" "faults"
measure restorefs-v1 snapshots/host/bench/2026-01-01T00:00:00Z/root.pxar "$cli" mount --foreground --no-vm "$work/store"
measure restorefs-split snapshots/host/bench2/2026-01-01T00:00:00Z/root.pxar "$cli" mount --foreground --no-vm "$work/store"
measure borg . borg mount -f "$work/borg::bench"
measure restic snapshots/latest restic mount --no-default-permissions
# The copy's floor in the same run: the source subtree itself, its files in the page cache, copied into the same tmpfs.
find "$src/$sub" -type f -exec cat {} + > /dev/null 2>&1 || true
t0=$(now); cp -a "$src/$sub" "$copydir/source"; t1=$(now); rm -rf "${copydir:?}/source"
printf '%-22s %12s %12s %10s %12s %12s\n' "source tree (cached)" "" "" "" "" "$(ms "$t0" "$t1")"
