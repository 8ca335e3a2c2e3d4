#!/usr/bin/env bash
# NBD benchmark (issue 4): a backed-up 2 GiB image exported by our server (the mount's <disk>.img.nbd) read with
# qemu-img convert and nbdcopy, next to qemu-nbd serving the raw image file and our FUSE read of the same image,
# in one run.   bench/nbd/run.sh [SIZE_MiB]     (root; needs qemu-utils, libnbd-bin)
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-2048}
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make build first" >&2; exit 1; }
work=$(mktemp -d /var/tmp/restorefs-bench-nbd.XXXXXX)
mnt=$work/mnt
qpid=""
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; "$cli" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$mnt"
python3 - "$work/disk.img" "$size_mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(mib):
        # a quarter of the image is unallocated (all-zero 4 MiB chunks), as on real VM disks
        f.write(bytes(1 << 20) if (i // 4) % 4 == 3 else os.urandom(1 << 19) + bytes(1 << 19))
PY
"$cli" backup --store "$work/store" --group vm/1 --time 2026-01-01T00:00:00Z d="$work/disk.img" >/dev/null 2>&1
"$cli" mount "$work/store" "$mnt" --no-vm
snap=$mnt/snapshots/vm/1/2026-01-01T00:00:00Z
uri=$(cat "$snap/d.img.nbd")
bytes=$(stat -c %s "$work/disk.img")
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "print(f'{$bytes / ($e - $s) / 1e6:.0f} MB/s')"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

qemu-nbd -r -t -f raw -k "$work/qemu-nbd.sock" -x disk "$work/disk.img" & qpid=$!
sleep 1
quri="nbd+unix:///disk?socket=$work/qemu-nbd.sock"
cold; ours_convert=$(timed qemu-img convert -f raw -O raw "$uri" "$work/out1.raw"); rm -f "$work/out1.raw"
cat "$work/disk.img" > /dev/null; theirs_convert=$(timed qemu-img convert -f raw -O raw "$quri" "$work/out2.raw"); rm -f "$work/out2.raw"
cold; ours_copy=$(timed nbdcopy --connections=4 "$uri" null:)
cat "$work/disk.img" > /dev/null; theirs_copy=$(timed nbdcopy --connections=4 "$quri" null:)
cold; fuse=$(timed dd if="$snap/d.img" of=/dev/null bs=1M)
holes=$(nbdinfo --map "$uri" | awk '$3 == 3 {s += $2} END {print s + 0}')
echo "| what (${size_mib} MiB image, 25% zero chunks, $(nproc) cores) | result |"
echo "|---|---|"
echo "| qemu-img convert -O raw from our export (cold chunk cache) | $ours_convert |"
echo "| qemu-img convert -O raw from qemu-nbd on the raw file (page cache) | $theirs_convert |"
echo "| nbdcopy, 4 connections, from our export (cold) | $ours_copy |"
echo "| nbdcopy, 4 connections, from qemu-nbd on the raw file (page cache) | $theirs_copy |"
echo "| our FUSE read of the same image (cold) | $fuse |"
echo "| bytes reported as holes by base:allocation | $holes of $bytes |"
