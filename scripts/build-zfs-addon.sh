#!/bin/bash
# Builds OpenZFS for the restore VM's kernel: the modules, compiled from Debian's zfs-dkms source against that
# kernel's headers, and the zpool/zfs tools. Debian ships ZFS in its "contrib" component only, so the package lists
# are fetched with the machine's own apt sources, their components widened to "main contrib", into a private
# directory (the machine's apt configuration is not changed). The build is cached by the content of its inputs.
# Usage: scripts/build-zfs-addon.sh KVER CACHE
#   KVER   the restore kernel's release (e.g. 6.1.0-57-amd64)
#   CACHE  where downloads and builds are kept
# Prints the directory of the finished addon: modules/*.ko and tools/ (sbin/zpool, sbin/zfs, lib/…).
set -euo pipefail
kver=${1:?usage: $0 KVER CACHE}
cache=${2:?usage: $0 KVER CACHE}
temps=()
trap 'rm -rf "${temps[@]}"' EXIT
log() { echo "[zfs-addon] $*" >&2; }
debs=$cache/zfs-debs
mkdir -p "$debs"

zfs_pkgs=(zfs-dkms zfsutils-linux libzfs4linux libnvpair3linux libuutil3linux)
have() { ls "$debs/${1}"_*.deb >/dev/null 2>&1; }
missing=()
for p in "${zfs_pkgs[@]}" "linux-headers-$kver"; do have "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt=$(mktemp -d); temps+=("$apt")
    mkdir -p "$apt/lists/partial" "$apt/sources.list.d"
    # The machine's sources with contrib added to every entry that has main.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && sed -E '/^Components:/ { / contrib( |$)/! s/( main)( |$)/\1 contrib\2/ }' "$f" > "$apt/sources.list.d/$(basename "$f")"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && sed -E '/^deb(-src)? / { / contrib( |$)/! s/( main)( |$)/\1 contrib\2/ }' "$f" > "$apt/sources.list.d/$(basename "$f").list"
    done
    opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt/sources.list.d" -o "Dir::State::lists=$apt/lists"
          -o "APT::Sandbox::User=root")
    log "fetching package lists with contrib (private, for this download only)"
    apt-get -q "${opts[@]}" update >&2
    headers=("linux-headers-$kver")
    headers+=($(apt-cache "${opts[@]}" depends "linux-headers-$kver" | awk '/Depends: linux-(headers|kbuild)-/ {print $2}'))
    log "downloading ${zfs_pkgs[*]} ${headers[*]}"
    ( cd "$debs" && apt-get -q "${opts[@]}" download "${zfs_pkgs[@]}" "${headers[@]}" >&2 )
fi

# Inputs of the build: the ZFS packages, the kernel's header packages and this script.
header_debs=$(ls "$debs"/linux-headers-"$kver"_*.deb)
common=$(dpkg-deb -f "$header_debs" Depends | tr ',' '\n' | grep -o 'linux-headers-[^ ]*-common' | head -1)
kbuild=$(dpkg-deb -f "$header_debs" Depends | tr ',' '\n' | grep -o 'linux-kbuild-[^ ]*' | head -1)
inputs=("$header_debs" $(ls "$debs/${common}"_*.deb "$debs/${kbuild}"_*.deb))
for p in "${zfs_pkgs[@]}"; do inputs+=($(ls "$debs/${p}"_*.deb)); done
hash=$( { sha256sum "${inputs[@]}" | cut -d' ' -f1; sha256sum < "$0"; echo "$kver"; } | sha256sum | cut -c1-16)
out=$cache/zfs-$hash
if [ -f "$out/done" ]; then
    log "up to date ($out)"; echo "$out"; exit 0
fi

start=$(date +%s)
work=$(mktemp -d); temps+=("$work")
for d in "${inputs[@]}"; do dpkg-deb -x "$d" "$work/root"; done
src=$(ls -d "$work"/root/usr/src/zfs-*)
obj=$work/root/usr/src/linux-headers-$kver
srcdir=$work/root/usr/src/$common
# The headers' Makefile includes the common tree by its installed path; point it at the unpacked one.
sed -i "s#/usr/src/$common#$srcdir#" "$obj/Makefile"
# Progress while configure and make run (minutes, with their output in logs).
( while sleep 30; do log "still building ($(( $(date +%s) - start )) s)"; done ) >/dev/null &
ticker=$!
trap 'kill "$ticker" 2>/dev/null; rm -rf "${temps[@]}"' EXIT
log "configuring $(basename "$src") for $kver (the kernel interface checks take minutes)"
( cd "$src" && ./configure --with-config=kernel --with-linux="$srcdir" --with-linux-obj="$obj" > "$work/configure.log" 2>&1 ) \
    || { tail -20 "$work/configure.log" >&2; log "configure failed"; exit 1; }
log "compiling the modules"
make -C "$src/module" -j"$(nproc)" > "$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; log "make failed"; exit 1; }

rm -rf "$out.new"; mkdir -p "$out.new/modules" "$out.new/tools"
find "$src/module" -name '*.ko' -exec cp {} "$out.new/modules/" \;
strip --strip-debug "$out.new"/modules/*.ko
for p in zfsutils-linux libzfs4linux libnvpair3linux libuutil3linux; do dpkg-deb -x "$(ls "$debs/${p}"_*.deb)" "$work/tools"; done
mkdir -p "$out.new/tools/sbin" "$out.new/tools/lib"
cp "$work/tools/sbin/zpool" "$work/tools/sbin/zfs" "$out.new/tools/sbin/"
cp -a "$work"/tools/lib/x86_64-linux-gnu/lib{zfs,zfs_core,nvpair,uutil}.so.* "$out.new/tools/lib/"
touch "$out.new/done"
rm -rf "$out"; mv "$out.new" "$out"
log "built in $(( $(date +%s) - start ))s: $(ls "$out/modules" | tr '\n' ' ')($(du -sh "$out/modules" | cut -f1))"
echo "$out"
