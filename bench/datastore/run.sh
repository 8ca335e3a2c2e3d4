#!/usr/bin/env bash
# Datastore benchmark (issue 2): a 1 GiB mixed image — backup throughput (first run, second run with every chunk
# present), then sequential read through ImageReader from a cold chunk cache, next to reading the raw image from
# the page cache and `zstd -d` of the same chunks, in one run.   bench/datastore/run.sh [SIZE_MiB]
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make build first" >&2; exit 1; }
dotnet build bench/datastore -c Release -o build/bench-datastore --nologo -v quiet >/dev/null
work=$(mktemp -d /var/tmp/restorefs-bench-ds.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work/disk.img" "$size_mib" <<'PY'
import os, sys, random
path, mib = sys.argv[1], int(sys.argv[2])
random.seed(1)
words = [b"alpha", b"backup", b"chunk", b"restore", b"datastore", b"kernel", b"vm", b"disk", b"\n"]
text = bytearray()
while len(text) < (1 << 20):
    text += random.choice(words) + b" "
with open(path, "wb") as f:
    for i in range(mib):
        k = i % 4
        f.write(os.urandom(1 << 20) if k == 0 else bytes(text[: 1 << 20]) if k == 1 else os.urandom(1 << 19) + bytes(1 << 19) if k == 2 else bytes(text[:1 << 19]) + os.urandom(1 << 19))
PY
secs() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:.0f} MB/s')" "$1" "$2"; }
bytes=$(stat -c %s "$work/disk.img")
t0=$(date +%s.%N); "$cli" backup --store "$work/store" --group vm/1 --time 2026-01-01T00:00:00Z d="$work/disk.img" >/dev/null 2>&1; t1=$(date +%s.%N)
"$cli" backup --store "$work/store" --group vm/1 --time 2026-01-02T00:00:00Z d="$work/disk.img" >/dev/null 2>&1; t2=$(date +%s.%N)
sync; echo 3 > /proc/sys/vm/drop_caches
reader=$(dotnet build/bench-datastore/ReaderBench.dll "$work/store" vm/1/2026-01-01T00:00:00Z d.img)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
random_cold=$(dotnet build/bench-datastore/ReaderBench.dll "$work/store" vm/1/2026-01-01T00:00:00Z d.img random)
random_warm=$(dotnet build/bench-datastore/ReaderBench.dll "$work/store" vm/1/2026-01-01T00:00:00Z d.img random)
# zstd -d of the same compressed chunks (payload after the 12-byte blob header), decompression only.
mkdir "$work/frames"
n=0; for f in $(find "$work/store/.chunks" -type f); do if [ "$(head -c 8 "$f" | xxd -p)" = "31b958426fb6a37f" ]; then tail -c +13 "$f" > "$work/frames/$n.zst"; n=$((n+1)); fi; done
cat "$work"/frames/*.zst > /dev/null
zin=$(du -cb "$work"/frames/*.zst | tail -1 | cut -f1)
cat "$work"/frames/*.zst > "$work/all.zst"; cat "$work/all.zst" > /dev/null
t3=$(date +%s.%N); zstd -q -d -c "$work/all.zst" > /dev/null; t4=$(date +%s.%N)
zout=$((n * 4 * 1024 * 1024))
cat "$work/disk.img" > /dev/null
t5=$(date +%s.%N); cat "$work/disk.img" > /dev/null; t6=$(date +%s.%N)
echo "| what (${size_mib} MiB mixed image, $(nproc) cores) | result |"
echo "|---|---|"
echo "| backup, first run (all chunks new) | $(mbps "$bytes" "$(secs "$t0" "$t1")") |"
echo "| backup, second run (all chunks present) | $(mbps "$bytes" "$(secs "$t1" "$t2")") |"
echo "| ImageReader sequential, cold chunk cache | $reader |"
echo "| ImageReader 4 KiB read per chunk, shuffled, chunk files not in page cache | $random_cold |"
echo "| ImageReader 4 KiB read per chunk, shuffled, chunk files in page cache | $random_warm |"
echo "| zstd -d of the same $n compressed chunks (one zstd process, page cache) | $(mbps "$zout" "$(secs "$t3" "$t4")") of output |"
echo "| raw image from the page cache (cat) | $(mbps "$bytes" "$(secs "$t5" "$t6")") |"
