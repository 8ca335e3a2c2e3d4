#!/usr/bin/env bash
# Mount benchmark (issue 3): sequential and random reads of a 2 GiB backed-up image through the FUSE mount,
# next to the raw image from the page cache, in one run. Prints a table; paste it into BENCHMARKS.md.
#   bench/mount/run.sh [SIZE_MiB]    (root; needs build/restorefs; python3 for the latency probe)
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-2048}
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make build first" >&2; exit 1; }
work=$(mktemp -d /var/tmp/restorefs-bench.XXXXXX)
mnt=$work/mnt
cleanup() { "$cli" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$mnt"

echo "making a ${size_mib} MiB mixed image (random, text-like, zero regions)…" >&2
python3 - "$work/disk.img" "$size_mib" <<'PY'
import os, sys, random
path, mib = sys.argv[1], int(sys.argv[2])
random.seed(1)
words = [b"alpha", b"backup", b"chunk", b"restore", b"datastore", b"kernel", b"vm", b"disk", b"\n"]
with open(path, "wb") as f:
    for i in range(mib):
        kind = i % 4
        if kind == 0:
            f.write(os.urandom(1 << 20))
        elif kind == 1:
            buf = bytearray()
            while len(buf) < (1 << 20):
                buf += random.choice(words) + b" "
            f.write(bytes(buf[: 1 << 20]))
        elif kind == 2 and (i // 4) % 3 == 0:
            f.write(bytes(1 << 20))
        else:
            f.write(os.urandom(1 << 19) + bytes(1 << 19))
PY
t0=$(date +%s.%N)
"$cli" backup --store "$work/store" --group vm/900 --time 2026-11-01T00:00:00Z drive-scsi0="$work/disk.img" >/dev/null 2>&1
t1=$(date +%s.%N)
"$cli" mount "$work/store" "$mnt" --no-vm
img=$mnt/snapshots/vm/900/2026-11-01T00:00:00Z/drive-scsi0.img
pid=$(cat "${XDG_RUNTIME_DIR:-/run}/restorefs/mounts/"*"$(basename "$mnt")".pid 2>/dev/null || pgrep -f "mount $work/store" | head -1)

rate() { # bytes seconds
  python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:8.0f} MB/s')" "$1" "$2"
}
timed_read() { # file -> seconds
  local s e; s=$(date +%s.%N); dd if="$1" of=/dev/null bs=1M status=none; e=$(date +%s.%N)
  python3 -c "print(float('$e') - float('$s'))"
}
bytes=$(stat -c %s "$work/disk.img")

sync; echo 3 > /proc/sys/vm/drop_caches
cold=$(timed_read "$img")
warm=$(timed_read "$img")
cat "$work/disk.img" > /dev/null
raw=$(timed_read "$work/disk.img")

# Flatness: the last 256 MiB read as fast as the first (cold).
echo 3 > /proc/sys/vm/drop_caches
first=$( { s=$(date +%s.%N); dd if="$img" of=/dev/null bs=1M count=256 status=none; e=$(date +%s.%N); python3 -c "print(float('$e')-float('$s'))"; } )
last=$( { s=$(date +%s.%N); dd if="$img" of=/dev/null bs=1M skip=$((size_mib - 256)) count=256 status=none; e=$(date +%s.%N); python3 -c "print(float('$e')-float('$s'))"; } )

latency() { # file label
  python3 - "$1" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
random.seed(7)
samples = []
for _ in range(400):
    off = random.randrange(0, size - 4096) & ~4095
    t = time.perf_counter(); os.pread(fd, 4096, off); samples.append((time.perf_counter() - t) * 1000)
samples.sort()
print(f"p50 {samples[len(samples)//2]:.3f} ms  p99 {samples[int(len(samples)*0.99)]:.3f} ms")
PY
}
echo 3 > /proc/sys/vm/drop_caches
cold_lat=$(latency "$img")
warm_lat=$(latency "$img")
rss=$(grep VmHWM /proc/"$pid"/status 2>/dev/null | awk '{print $2/1024 " MiB"}' || echo "n/a")

echo
echo "| what (${size_mib} MiB image, $(nproc) cores) | result |"
echo "|---|---|"
echo "| backup (first run) | $(rate "$bytes" "$(python3 -c "print($t1-$t0)")") |"
echo "| mount, sequential, cold chunk + page cache | $(rate "$bytes" "$cold") |"
echo "| mount, sequential, warm (page cache) | $(rate "$bytes" "$warm") |"
echo "| raw image file from page cache (baseline) | $(rate "$bytes" "$raw") |"
echo "| mount, first 256 MiB / last 256 MiB, cold | $(rate $((256<<20)) "$first") / $(rate $((256<<20)) "$last") |"
echo "| mount, random 4 KiB, cold | $cold_lat |"
echo "| mount, random 4 KiB, warm | $warm_lat |"
echo "| peak RSS of the mount process | $rss |"
for tool in borg restic squashfuse; do
  command -v $tool >/dev/null 2>&1 || echo "| $tool | not installed (apt-get install borgbackup restic squashfuse to compare) |"
done
