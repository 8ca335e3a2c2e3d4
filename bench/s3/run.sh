#!/usr/bin/env bash
# S3 benchmark (issue 15): cold sequential read of a backed-up image through the mount from a local Ceph RGW
# (scripts/ceph-rgw.sh), next to the same image from a local datastore and a plain parallel GET of the same chunk
# objects with boto3 (Debian's python3-boto3), then the same read again with a warm local chunk cache.
# Prints MB/s side by side, the chunk GETs per MiB the mount sent (counted in the gateway's request log) and the
# median latency of cold random 4 KiB reads (64 reads, each in a chunk of its own, fresh mount, empty chunk cache).
# RUNS repeats the measurements on the same data (the backups are made once); each run prints its own block with
# the load average, so ratios are taken within one run.
#   bench/s3/run.sh [SIZE_MiB] [RUNS]   (root; needs build/restorefs, Ceph RGW and python3-boto3 from scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
runs=${2:-1}
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make cli first" >&2; exit 1; }
/usr/bin/python3 -c 'import boto3' 2>/dev/null || { echo "python3-boto3 is missing (scripts/install-deps.sh)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/restorefs-bench-s3.XXXXXX)
rgw=$work/rgw
bucket=restorefs-bench
time=2026-11-01T00:00:00Z
cleanup() {
  for m in "$work/mnt-local" "$work/mnt-s3"; do "$cli" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true; done
  scripts/ceph-rgw.sh stop "$rgw" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mnt-local" "$work/mnt-s3"

echo "starting Ceph RGW…" >&2
scripts/ceph-rgw.sh start "$rgw" >/dev/null
eval "$(scripts/ceph-rgw.sh env "$rgw" admin | sed 's/^/export /')"
scripts/ceph-rgw.sh bucket "$rgw" "$bucket" >/dev/null
rgwlog=$rgw/log/ceph-client.rgw.a.log

echo "making a ${size_mib} MiB random image and backing it up locally and to s3://$bucket/store…" >&2
head -c $((size_mib << 20)) /dev/urandom > "$work/disk.img"
"$cli" backup --store "$work/store" --group vm/900 --time "$time" drive-scsi0="$work/disk.img" >/dev/null 2>&1
"$cli" backup --store "s3://$bucket/store" --group vm/900 --time "$time" drive-scsi0="$work/disk.img" >/dev/null 2>&1
rm -f "$work/disk.img"
bytes=$((size_mib << 20))

secs() { python3 -c "print(float('$2') - float('$1'))"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:8.0f} MB/s')" "$1" "$2"; }
timed_read() { local s e; s=$(date +%s.%N); dd if="$1" of=/dev/null bs=1M status=none; e=$(date +%s.%N); secs "$s" "$e"; }
chunk_gets() { local n; n=$(grep -c "GET /$bucket/store/.chunks/" "$rgwlog" 2>/dev/null) || true; echo "${n:-0}"; }

random_p50() { # FILE: median ms of 64 cold 4 KiB preads, each in a different chunk
  /usr/bin/python3 - "$1" "$bytes" <<'PY'
import os, random, sys, time
path, size = sys.argv[1], int(sys.argv[2])
chunk = 4 << 20
rnd = random.Random(15)
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
lat = []
for c in rnd.sample(range(size // chunk), min(64, size // chunk)):
    off = c * chunk + rnd.randrange(chunk // 4096) * 4096
    t = time.monotonic()
    assert len(os.pread(fd, 4096, off)) == 4096
    lat.append(time.monotonic() - t)
lat.sort()
print(f"{lat[len(lat) // 2] * 1000:.1f}")
PY
}

run_once() {
local load_before; load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -rf "$work/cache" "$work/cache-random"

# Local datastore, cold page cache.
"$cli" mount "$work/store" "$work/mnt-local" --no-vm
sync; echo 3 > /proc/sys/vm/drop_caches
local_s=$(timed_read "$work/mnt-local/snapshots/vm/900/$time/drive-scsi0.img")
"$cli" umount "$work/mnt-local"
"$cli" mount "$work/store" "$work/mnt-local" --no-vm
sync; echo 3 > /proc/sys/vm/drop_caches
local_random=$(random_p50 "$work/mnt-local/snapshots/vm/900/$time/drive-scsi0.img")
"$cli" umount "$work/mnt-local"

# Mount from RGW with an empty chunk cache: cold.
"$cli" mount "s3://$bucket/store" "$work/mnt-s3" --no-vm --cache-dir "$work/cache" --cache-size 4G
img=$work/mnt-s3/snapshots/vm/900/$time/drive-scsi0.img
before=$(chunk_gets)
sync; echo 3 > /proc/sys/vm/drop_caches
cold_s=$(timed_read "$img")
after=$(chunk_gets)
"$cli" umount "$work/mnt-s3"

# Again with the chunk cache filled (a new mount, so nothing is in the mount's memory).
"$cli" mount "s3://$bucket/store" "$work/mnt-s3" --no-vm --cache-dir "$work/cache" --cache-size 4G
sync; echo 3 > /proc/sys/vm/drop_caches
warm_s=$(timed_read "$img")
"$cli" umount "$work/mnt-s3"

# Random 4 KiB reads from RGW: a new mount with an empty chunk cache of its own.
"$cli" mount "s3://$bucket/store" "$work/mnt-s3" --no-vm --cache-dir "$work/cache-random" --cache-size 4G
sync; echo 3 > /proc/sys/vm/drop_caches
rbefore=$(chunk_gets)
s3_random=$(random_p50 "$img")
rafter=$(chunk_gets)
"$cli" umount "$work/mnt-s3"

# The endpoint's limit: the same chunk objects with 8 parallel boto3 GETs.
plain=$(/usr/bin/python3 - "$bucket" <<'PY'
import os, sys, time, boto3
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
bucket = sys.argv[1]
# Debian's boto3 predates AWS_ENDPOINT_URL: pass the endpoint explicitly.
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(max_pool_connections=16, s3={"addressing_style": "path"}))
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="store/.chunks/"):
    keys += [o["Key"] for o in page.get("Contents", [])]
def get(key):
    return len(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
start = time.monotonic()
with ThreadPoolExecutor(8) as pool:
    total = sum(pool.map(get, keys))
print(f"{total} {time.monotonic() - start}")
PY
)
plain_bytes=${plain% *}; plain_s=${plain#* }

gets=$((after - before))
pct() { python3 -c "import sys; print(f'{100 * (float(sys.argv[1]) / float(sys.argv[2])) / (float(sys.argv[3]) / float(sys.argv[4])):.0f} %')" "$@"; }
echo
echo "S3 datastore, ${size_mib} MiB random image, sequential dd bs=1M (load before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores)"
printf '%-50s %s\n' "local datastore, cold page cache" "$(rate "$bytes" "$local_s")"
printf '%-50s %s  (%s of boto3)\n' "mount from RGW, cold (empty chunk cache)" "$(rate "$bytes" "$cold_s")" "$(pct "$bytes" "$cold_s" "$plain_bytes" "$plain_s")"
printf '%-50s %s  (%s of local)\n' "mount from RGW, warm chunk cache" "$(rate "$bytes" "$warm_s")" "$(pct "$bytes" "$warm_s" "$bytes" "$local_s")"
printf '%-50s %s\n' "boto3, 8 parallel GETs of the chunk objects" "$(rate "$plain_bytes" "$plain_s")"
printf '%-50s %s\n' "chunk GETs per MiB read (cold mount)" "$(python3 -c "print(f'{$gets / $size_mib:.3f} ({$gets} GETs, {$size_mib // 4} chunks)')")"
printf '%-50s %s ms (local datastore %s ms; %s GETs for %s reads)\n' "random 4 KiB read, cold, p50 (mount from RGW)" "$s3_random" "$local_random" "$((rafter - rbefore))" "$(( size_mib / 4 < 64 ? size_mib / 4 : 64 ))"
}

for _ in $(seq "$runs"); do run_once; done
