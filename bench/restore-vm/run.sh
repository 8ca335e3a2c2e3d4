#!/usr/bin/env bash
# Restore VM benchmark (issues 5 and 13): cold start to the first answered listing (3 boots with a plain ext4 disk,
# 3 with an LVM disk) and where it goes (the guest's boot steps from the daemon's status), QEMU's memory, `read`
# throughput of a 100 MiB file and `extract` (tar) throughput of a tree of small files, straight from the daemon's
# API through the channel proxy — next to reading the same disk image raw from the page cache, in one run.
#   bench/restore-vm/run.sh        (root; needs make build, qemu-system-x86)
set -euo pipefail
cd "$(dirname "$0")/../.."
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make build first" >&2; exit 1; }
work=$(mktemp -d /var/tmp/restorefs-bench-vm.XXXXXX)
export XDG_RUNTIME_DIR=$work/run; mkdir -p "$XDG_RUNTIME_DIR"
mnt=$work/mnt
cleanup() { "$cli" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$mnt" "$work/src/tree"
python3 - "$work/src" <<'PY'
import os, random, sys
r = random.Random(2); root = sys.argv[1]; total = 0; i = 0
while total < 64 << 20:
    d = os.path.join(root, "tree", f"d{i // 100:03d}"); os.makedirs(d, exist_ok=True)
    n = r.randint(2048, 32768); open(os.path.join(d, f"f{i}"), "wb").write(os.urandom(n)); total += n; i += 1
open(os.path.join(root, "big.bin"), "wb").write(os.urandom(100 << 20))
PY
bash scripts/make-disk-image.sh "$work/disk.img" 256 "$work/src" >/dev/null
"$cli" backup --store "$work/store" --group vm/1 --time 2026-01-01T00:00:00Z drive-scsi0="$work/disk.img" >/dev/null 2>&1
# A disk with LVM as well (GPT: ext4, vfat, and an LVM PV holding an xfs LV), from the test-disk script.
bash scripts/make-test-disks.sh "$work/disks" >/dev/null
"$cli" backup --store "$work/store" --group vm/2 --time 2026-01-01T00:00:00Z drive-scsi0="$work/disks/multi.img" >/dev/null 2>&1
"$cli" mount "$work/store" "$mnt" >/dev/null 2>&1
map=$XDG_RUNTIME_DIR/restorefs/restore-vms.json
# boot NAME PATH-IN-MOUNT: three cold starts, each on a fresh mount (nothing listed before: a listing also fetches its
# subdirectories ahead), timed from `ls PATH` until it returns; after each, the VM's status gives the guest's steps.
# Prints one line per boot: "total init modules daemon listening scanned" (seconds; the guest's on its own clock).
boot() {
  local path=$1 s e vmdir
  for i in 1 2 3; do
    "$cli" vm stop --all >/dev/null 2>&1 || true
    "$cli" umount "$mnt" >/dev/null 2>&1; "$cli" mount "$work/store" "$mnt" >/dev/null 2>&1
    s=$(date +%s.%N); ls "$mnt/$path" >/dev/null; e=$(date +%s.%N)
    vmdir=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['Directory'])" "$map")
    curl -sf --unix-socket "$vmdir/api.sock" "http://vm/api2/json/status" \
      | python3 -c "import json, sys; b = json.load(sys.stdin)['data'].get('boot', {}); t = $e - $s
print(f'{t:.2f}', *(f\"{b.get(k, -1):.2f}\" for k in ('init', 'modules', 'daemon', 'listening', 'scanned')))"
  done
}
plain=$(boot snapshots/vm/1/2026-01-01T00:00:00Z/files/drive-scsi0.img/part/1/tree/d001)
lvm=$(boot snapshots/vm/2/2026-01-01T00:00:00Z/files/drive-scsi0.img/lvm/vgtest/data)
"$cli" vm stop --all >/dev/null 2>&1 || true
"$cli" umount "$mnt" >/dev/null 2>&1; "$cli" mount "$work/store" "$mnt" >/dev/null 2>&1
disk=$mnt/snapshots/vm/1/2026-01-01T00:00:00Z/files/drive-scsi0.img
ls "$disk/part/1/tree/d001" >/dev/null
ticket=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['Ticket'])" "$map")
vmdir=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['Directory'])" "$map")
pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['Pid'])" "$map")
accel=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['Accelerator'])" "$map")
api() { curl -sf --unix-socket "$vmdir/api.sock" -H "Authorization: $ticket" "http://vm/api2/json/$1" -o /dev/null; }
b64() { printf '%s' "$1" | base64 -w0 | sed 's/+/%2B/g; s/\//%2F/g; s/=/%3D/g'; }
big=$(b64 drive-scsi0.img.fidx/part/1/big.bin)
s=$(date +%s.%N)
for off in $(seq 0 4 99); do api "read?path=$big&offset=$((off << 20))&length=$((4 << 20))"; done
e=$(date +%s.%N); read_rate=$(python3 -c "print(f'{(100 << 20) / ($e - $s) / 1e6:.0f} MB/s')")
tree_bytes=$(du -sb "$work/src/tree" | cut -f1)
s=$(date +%s.%N); api "extract?path=$(b64 drive-scsi0.img.fidx/part/1/tree)&format=tar"; e=$(date +%s.%N)
tar_rate=$(python3 -c "print(f'{$tree_bytes / ($e - $s) / 1e6:.0f} MB/s')")
rss=$(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/"$pid"/status)
cat "$work/disk.img" >/dev/null; s=$(date +%s.%N); cat "$work/disk.img" >/dev/null; e=$(date +%s.%N)
raw=$(python3 -c "import os; print(f'{os.path.getsize(\"$work/disk.img\") / ($e - $s) / 1e6:.0f} MB/s')")
echo
echo "| what ($(nproc) cores, $accel) | result |"
echo "|---|---|"
echo "| start → first answered request, plain disk (3 boots, through files/) | $(echo "$plain" | cut -d' ' -f1 | tr '\n' ' ')s |"
echo "| start → first answered request, LVM (xfs on an LV; 3 boots) | $(echo "$lvm" | cut -d' ' -f1 | tr '\n' ' ')s |"
echo "| QEMU resident memory after mounting one ext4 partition | $rss |"
echo "| read of a 100 MiB file, 4 MiB requests, one at a time | $read_rate |"
echo "| extract (tar) of a $((tree_bytes >> 20)) MiB tree of 2–32 KiB files | $tar_rate |"
echo "| baseline: the raw disk image from the page cache | $raw |"
echo
echo "Where a cold start goes (median of the 3 boots; the guest's steps on its own clock, from the daemon's status):"
echo
python3 - "$plain" "$lvm" <<'PY'
import statistics, sys
def split(text):
    rows = [[float(x) for x in line.split()] for line in text.strip().splitlines()]
    m = [statistics.median(r[i] for r in rows) for i in range(6)]
    total, init, modules, daemon, listening, scanned = m
    steps = [("QEMU start, kernel and initramfs load, the host's part and the listing (the rest)", total - max(listening, scanned)),
             ("kernel start → /init (initramfs unpacked)", init),
             ("/init → early modules loaded", modules - init),
             ("→ daemon started", daemon - modules),
             ("→ daemon listening", listening - daemon),
             ("→ disks scanned (from daemon start, in parallel)", scanned - daemon),
             ("first answer, host wall clock", total)]
    return steps
p, l = split(sys.argv[1]), split(sys.argv[2])
print("| step | plain disk | LVM |")
print("|---|---|---|")
for (name, a), (_, b) in zip(p, l):
    print(f"| {name} | {a:.2f} s | {b:.2f} s |")
PY
