#!/usr/bin/env bash
# Encrypted backups against plain ones (issue 17), in one run:
#  1. AES-256-GCM throughput of each path (OpenSSL libcrypto, managed BouncyCastle) on 4 MiB chunks, next to
#     `openssl speed -evp aes-256-gcm` (16384-byte blocks);
#  2. the same mixed image backed up plain and with a key file, in rounds with the order alternating: `restorefs
#     backup` time, cold sequential read through the mount (page cache dropped, dd bs=1M), `restorefs restore` to
#     /dev/null, cold random 4 KiB reads; encrypted/plain ratios (throughput: plain time / encrypted time) of the
#     medians and per round, plus the encrypted read forced onto the managed path.
#   [ROUNDS=5] bench/crypto/run.sh [SIZE_MiB]    (root for drop_caches and FUSE; needs build/restorefs from `make cli`)
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
dotnet build/bench-crypto/CipherBench.dll 1
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
head -c 1M /dev/urandom > "$work/tiny.img"
"$cli" key create --kdf none "$work/key.json" >/dev/null
snap=vm/900/2026-11-01T00:00:00Z

# CPU seconds (user + system) of a process so far, from /proc/PID/stat.
cpu_of() { python3 -c "import os, sys; f = open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')', 1)[1].split(); print((int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))" "$1"; }
# command... -> "wall_s cpu_s" (cpu from /usr/bin/time: user + system of the process and its threads)
timed() {
  local t0 t1
  t0=$(now); /usr/bin/time -f "%U %S" -o "$work/time" "$@" >/dev/null 2>&1; t1=$(now)
  echo "$(secs "$t0" "$t1") $(awk '{print $1 + $2}' "$work/time")"
}
# store keyargs... -> "wall_s cpu_s" of a cold dd through a fresh mount (cpu: the mount's server process)
mount_read() {
  local store=$1 pid c0 c1 t0 t1; shift
  "$cli" mount "$store" "$mnt" --no-vm "$@" >/dev/null 2>&1
  pid=$(pgrep -n -f -- "mount $store $mnt --foreground")
  sync; echo 3 > /proc/sys/vm/drop_caches
  c0=$(cpu_of "$pid"); t0=$(now)
  dd if="$mnt/snapshots/$snap/drive-scsi0.img" of=/dev/null bs=1M status=none
  t1=$(now); c1=$(cpu_of "$pid")
  "$cli" umount "$mnt" >/dev/null
  echo "$(secs "$t0" "$t1") $(python3 -c "print(f'{$c1 - $c0:.2f}')")"
}
# store keyargs... -> "p50_ms mean_ms": 4 KiB reads at random places of 64 distinct chunks through a fresh mount,
# page cache dropped first (each read decodes a chunk nobody read before: the cold random-read latency)
random_read() {
  local store=$1; shift
  "$cli" mount "$store" "$mnt" --no-vm "$@" >/dev/null 2>&1
  sync; echo 3 > /proc/sys/vm/drop_caches
  python3 - "$mnt/snapshots/$snap/drive-scsi0.img" <<'PY'
import os, random, statistics, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
chunk = 4 << 20
r = random.Random(7)
chunks = r.sample(range(size // chunk), min(64, size // chunk))
times = []
for c in chunks:
    offset = c * chunk + r.randrange(0, chunk // 4096) * 4096
    t0 = time.perf_counter()
    os.pread(fd, 4096, offset)
    times.append((time.perf_counter() - t0) * 1000)
print(f"{statistics.median(times):.2f} {statistics.mean(times):.2f}")
PY
  "$cli" umount "$mnt" >/dev/null
}
# mode (plain|encrypted) -> "backup_wall backup_cpu read_wall read_cpu restore_wall restore_cpu", on a new store
measure() {
  local mode=$1 store=$work/store-$1 keyargs=() b r rs
  [ "$mode" = plain ] || keyargs=(--keyfile "$work/key.json")
  rm -rf "$store"
  # The datastore's layout (65536 chunk directories) first, untimed: on a file system that just deleted many
  # inodes (an earlier round), ext4's inode allocator makes those mkdirs cost seconds of system time.
  "$cli" backup --store "$store" --group vm/1 --time 2026-11-01T00:00:00Z "${keyargs[@]}" layout="$work/tiny.img" >/dev/null 2>&1
  # Nothing of an earlier step may still be on its way to the disk while this one is timed.
  sync
  cat "$work/disk.img" > /dev/null
  b=$(timed "$cli" backup --store "$store" --group vm/900 --time 2026-11-01T00:00:00Z "${keyargs[@]}" drive-scsi0="$work/disk.img")
  sync
  r=$(mount_read "$store" "${keyargs[@]}")
  sync; echo 3 > /proc/sys/vm/drop_caches
  rs=$(timed "$cli" restore "$store" "$snap" drive-scsi0.img /dev/null "${keyargs[@]}")
  echo "$b $r $rs"
}
# Five rounds after an untimed one (the first backup and read after the image was written ran up to 1.5× the CPU of
# later ones here, whichever side went first). In each, both sides are backed up into new stores, read through the
# mount and restored, then read at random; plain goes first in the odd rounds and encrypted in the even ones, so that
# neither side always runs right after the other side's deletes. Figures are medians over the rounds; the ratios
# are also given round by round.
rounds=${ROUNDS:-5}
measure plain >/dev/null; measure encrypted >/dev/null
rounds_p=() rounds_e=() random_p=() random_e=()
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="plain encrypted"; else order="encrypted plain"; fi
  for mode in $order; do
    if [ "$mode" = plain ]; then rounds_p+=("$(measure plain)"); else rounds_e+=("$(measure encrypted)"); fi
  done
  for mode in $order; do
    if [ "$mode" = plain ]; then
      random_p+=("$(random_read "$work/store-plain")")
    else
      random_e+=("$(random_read "$work/store-encrypted" --keyfile "$work/key.json")")
    fi
  done
  echo "round $round: plain ${rounds_p[-1]} ${random_p[-1]} / encrypted ${rounds_e[-1]} ${random_e[-1]}" >&2
done
med() { python3 -c "import statistics, sys; v = [l.split() for l in sys.argv[2:]]; print(f'{statistics.median(float(x[int(sys.argv[1])]) for x in v):.3f}')" "$@"; }
# column -> "r1 r2 r3": plain time / encrypted time per round, in percent
per_round() { python3 -c "import sys; c = int(sys.argv[1]); n = (len(sys.argv) - 2) // 2; p, e = sys.argv[2:2 + n], sys.argv[2 + n:]; print(' / '.join(f'{float(a.split()[c]) / float(b.split()[c]) * 100:.0f}' for a, b in zip(p, e)))" "$1" "${rounds_p[@]}" "${rounds_e[@]}"; }
pb=$(med 0 "${rounds_p[@]}"); pbc=$(med 1 "${rounds_p[@]}"); pr=$(med 2 "${rounds_p[@]}"); prc=$(med 3 "${rounds_p[@]}")
prs=$(med 4 "${rounds_p[@]}"); prsc=$(med 5 "${rounds_p[@]}")
eb=$(med 0 "${rounds_e[@]}"); ebc=$(med 1 "${rounds_e[@]}"); er=$(med 2 "${rounds_e[@]}"); erc=$(med 3 "${rounds_e[@]}")
ers=$(med 4 "${rounds_e[@]}"); ersc=$(med 5 "${rounds_e[@]}")
prr50=$(med 0 "${random_p[@]}"); prrm=$(med 1 "${random_p[@]}")
err50=$(med 0 "${random_e[@]}"); errm=$(med 1 "${random_e[@]}")
gaps=$(python3 -c "import sys; n = (len(sys.argv) - 1) // 2; p, e = sys.argv[1:1 + n], sys.argv[1 + n:]; print(' / '.join(f'{float(b.split()[0]) - float(a.split()[0]):+.2f}' for a, b in zip(p, e)))" "${random_p[@]}" "${random_e[@]}")
# The encrypted cold read once more, forced onto the managed (BouncyCastle) path.
read -r mr mrc <<<"$(RESTOREFS_CRYPTO=managed mount_read "$work/store-encrypted" --keyfile "$work/key.json")"

echo "## ${size_mib} MiB mixed image, plain vs encrypted (same run, medians of $rounds rounds)"
echo
echo "MB/s of image bytes by wall time (ratio: plain time / encrypted time, of the medians and round by round), and"
echo "CPU seconds spent (user + system)."
echo
echo "| what | plain MB/s | encrypted MB/s | encrypted/plain | rounds (%) | plain CPU s | encrypted CPU s | encrypted, managed path |"
echo "|---|---|---|---|---|---|---|---|"
echo "| restorefs backup | $(mbps "$bytes" "$pb") | $(mbps "$bytes" "$eb") | $(ratio "$pb" "$eb") | $(per_round 0) | $pbc | $ebc | |"
echo "| cold sequential read through the mount (dd bs=1M) | $(mbps "$bytes" "$pr") | $(mbps "$bytes" "$er") | $(ratio "$pr" "$er") | $(per_round 2) | $prc | $erc | $(mbps "$bytes" "$mr") MB/s, $mrc CPU s |"
echo "| restorefs restore to /dev/null (cold) | $(mbps "$bytes" "$prs") | $(mbps "$bytes" "$ers") | $(ratio "$prs" "$ers") | $(per_round 4) | $prsc | $ersc | |"
echo
echo "Random 4 KiB cold reads through the mount (64 distinct chunks, one read each, page cache dropped first; medians"
echo "of $rounds rounds):"
echo
echo "| | plain | encrypted | encrypted − plain | rounds (ms) |"
echo "|---|---|---|---|---|"
echo "| median latency | $prr50 ms | $err50 ms | $(python3 -c "print(f'{$err50 - $prr50:+.2f} ms')") | $gaps |"
echo "| mean latency | $prrm ms | $errm ms | $(python3 -c "print(f'{$errm - $prrm:+.2f} ms')") | |"
