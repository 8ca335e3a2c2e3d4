#!/usr/bin/env bash
# Encrypted backups against plain ones (issue 17), in one run:
#  1. AES-256-GCM throughput of each path (OpenSSL libcrypto, managed BouncyCastle) on 4 MiB chunks, next to
#     `openssl speed -evp aes-256-gcm` (16384-byte blocks);
#  2. the same mixed image backed up plain and with a key file: `restorefs backup` time, cold sequential read
#     through the mount (page cache dropped, dd bs=1M), `restorefs restore` to /dev/null; encrypted/plain ratios
#     (throughput: plain time / encrypted time), plus the encrypted read forced onto the managed path.
#   bench/crypto/run.sh [SIZE_MiB]    (root for drop_caches and FUSE; needs build/restorefs from `make cli`)
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
cli=$PWD/build/restorefs
[ -x "$cli" ] || { echo "run make cli first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (drop_caches, FUSE mount)" >&2; exit 1; }
dotnet build bench/crypto -c Release -o build/bench-crypto --nologo -v quiet >/dev/null
work=$(mktemp -d /var/tmp/restorefs-bench-crypto.XXXXXX)
mnt=$work/mnt
cleanup() { "$cli" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$mnt"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e6:.0f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" "$1" "$2"; }

echo "## cipher, 4 MiB chunks, one thread ($(nproc) cores shared; MB per CPU second as openssl speed counts, MB per wall second)"
echo
echo "| what | MB/s (CPU time) | MB/s (wall) |"
echo "|---|---|---|"
dotnet build/bench-crypto/CipherBench.dll 2
ossl=$(openssl speed -seconds 2 -bytes 16384 -evp aes-256-gcm 2>/dev/null | awk '/^AES-256-GCM/ {print $NF}')
echo "| openssl speed -evp aes-256-gcm, 16384-byte blocks | $(python3 -c "import sys; print(f'{float(sys.argv[1].rstrip(\"k\")) * 1000 / 1e6:.0f}')" "$ossl") | |"
echo

echo "making a ${size_mib} MiB mixed image (random, text-like, zero regions)…" >&2
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
        kind = i % 4
        if kind == 0:
            f.write(os.urandom(1 << 20))
        elif kind == 1:
            f.write(bytes(text[: 1 << 20]))
        elif kind == 2 and (i // 4) % 3 == 0:
            f.write(bytes(1 << 20))
        else:
            f.write(os.urandom(1 << 19) + bytes(1 << 19))
PY
bytes=$(stat -c %s "$work/disk.img")
"$cli" key create --kdf none "$work/key.json" >/dev/null
snap=vm/900/2026-11-01T00:00:00Z

# mode (plain|encrypted) -> "backup_s read_s restore_s"
measure() {
  local mode=$1 store=$work/store-$1 keyargs=() t0 t1 t2 t3 t4 t5
  [ "$mode" = plain ] || keyargs=(--keyfile "$work/key.json")
  cat "$work/disk.img" > /dev/null
  t0=$(now); "$cli" backup --store "$store" --group vm/900 --time 2026-11-01T00:00:00Z "${keyargs[@]}" drive-scsi0="$work/disk.img" >/dev/null 2>&1; t1=$(now)
  "$cli" mount "$store" "$mnt" --no-vm "${keyargs[@]}" >/dev/null 2>&1
  sync; echo 3 > /proc/sys/vm/drop_caches
  t2=$(now); dd if="$mnt/snapshots/$snap/drive-scsi0.img" of=/dev/null bs=1M status=none; t3=$(now)
  "$cli" umount "$mnt" >/dev/null
  sync; echo 3 > /proc/sys/vm/drop_caches
  t4=$(now); "$cli" restore "$store" "$snap" drive-scsi0.img /dev/null "${keyargs[@]}" >/dev/null 2>&1; t5=$(now)
  echo "$(secs "$t0" "$t1") $(secs "$t2" "$t3") $(secs "$t4" "$t5")"
}
read -r pb pr prs <<<"$(measure plain)"
read -r eb er ers <<<"$(measure encrypted)"
# The encrypted cold read once more, forced onto the managed (BouncyCastle) path.
RESTOREFS_CRYPTO=managed "$cli" mount "$work/store-encrypted" "$mnt" --no-vm --keyfile "$work/key.json" >/dev/null 2>&1
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); dd if="$mnt/snapshots/$snap/drive-scsi0.img" of=/dev/null bs=1M status=none; t1=$(now)
"$cli" umount "$mnt" >/dev/null
mr=$(secs "$t0" "$t1")

echo "## ${size_mib} MiB mixed image, plain vs encrypted (same run; MB/s of image bytes)"
echo
echo "| what | plain | encrypted (OpenSSL) | encrypted/plain | encrypted (managed) |"
echo "|---|---|---|---|---|"
echo "| restorefs backup | $(mbps "$bytes" "$pb") | $(mbps "$bytes" "$eb") | $(ratio "$pb" "$eb") | |"
echo "| cold sequential read through the mount (dd bs=1M) | $(mbps "$bytes" "$pr") | $(mbps "$bytes" "$er") | $(ratio "$pr" "$er") | $(mbps "$bytes" "$mr") |"
echo "| restorefs restore to /dev/null (cold) | $(mbps "$bytes" "$prs") | $(mbps "$bytes" "$ers") | $(ratio "$prs" "$ers") | |"
