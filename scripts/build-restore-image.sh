#!/bin/bash
# Builds the restore VM image (kernel + initramfs) from Debian packages, without installing anything.
# Usage: scripts/build-restore-image.sh OUTDIR DAEMON_BINARY
#   DAEMON_BINARY is the NativeAOT restore daemon (make daemon → build/daemon/restorefs-daemon).
set -euo pipefail
out=${1:?usage: $0 OUTDIR DAEMON_BINARY}
daemon=${2:?usage: $0 OUTDIR DAEMON_BINARY (make daemon builds it)}
[ -x "$daemon" ] || { echo "[restore-image] $daemon is not an executable" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd)
cache=${RESTOREFS_IMAGE_CACHE:-$out/.cache}
mkdir -p "$cache/debs"
start=$(date +%s)
log() { echo "[restore-image] $*" >&2; }

kver_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}' || true)
if [ -z "$kver_pkg" ]; then   # a fresh machine may have no package lists yet
    log "updating the package lists"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    kver_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}')
fi
[ -n "$kver_pkg" ] || { log "cannot resolve the bookworm kernel package"; exit 1; }
# lvm2 and the libraries it needs beyond a base Debian system (libc, libudev, libselinux… come from the host's
# loader resolution below)
# dmsetup: thin LVs are mapped from their pool's metadata into tables of linear/zero targets (no thin-pool target).
pkgs=("$kver_pkg" busybox-static lvm2 libdevmapper1.02.1 libdevmapper-event1.02.1 libaio1 ntfs-3g libntfs-3g89 dmsetup)
# LUKS (--guest-passphrase-file): cryptsetup and its libraries
pkgs+=(cryptsetup-bin libcryptsetup12 libargon2-1 libjson-c5 libpopt0)
# Linux software RAID (md): mdadm assembles arrays read-only; the md modules load only when a member is found
pkgs+=(mdadm)
log "packages: ${pkgs[*]}"
( cd "$cache/debs"
  for p in "${pkgs[@]}"; do
      ls "${p}"_*.deb >/dev/null 2>&1 || { log "downloading $p"; apt-get download -q "$p" >&2; }
  done )

# ZFS (Debian contrib, built for this kernel; minutes the first time, then cached by content). An image without it
# still works: a pool member is then reported as unsupported. RESTOREFS_ZFS=0 leaves it out.
zfs_addon=""
if [ "${RESTOREFS_ZFS:-1}" != 0 ]; then
    zfs_addon=$("$here/build-zfs-addon.sh" "${kver_pkg#linux-image-}" "$cache") \
        || { log "WARNING: no ZFS support in this image (the ZFS addon did not build; see above)"; zfs_addon=""; }
fi

# Content hash of every input decides whether anything must be rebuilt.
manifest=$( { for p in "${pkgs[@]}"; do sha256sum "$cache"/debs/"${p}"_*.deb | cut -d' ' -f1; done
              cat "$here"/restore-image/init "$here"/restore-image/modules.* "$0"
              basename "${zfs_addon:-no-zfs}"
              sha256sum < "$daemon"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/manifest" ] && [ "$(cat "$out/manifest")" = "$manifest" ] \
   && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.img" ]; then
    log "up to date ($manifest)"; exit 0
fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for p in "${pkgs[@]}"; do log "unpacking $p"; dpkg-deb -x "$cache"/debs/"${p}"_*.deb "$work/pkg"; done
kver=$(ls "$work/pkg/lib/modules")
cp "$work/pkg/boot/vmlinuz-$kver" "$out/vmlinuz.new"

log "extracting the uncompressed kernel ELF (PVH)"
off=$(grep -abo $'\xfd7zXZ\x00' "$out/vmlinuz.new" | head -1 | cut -d: -f1)
[ -n "$off" ] || { log "no xz stream in vmlinuz"; exit 1; }
tail -c +$((off + 1)) "$out/vmlinuz.new" | xz -dc 2>/dev/null > "$out/vmlinux.new" || true
[ "$(head -c 4 "$out/vmlinux.new" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || { log "extracted kernel is not ELF"; exit 1; }

root=$work/root; mods=$work/pkg/lib/modules/$kver
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt,lib/modules/$kver}
cp "$work/pkg/bin/busybox" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
cp "$here/restore-image/init" "$root/init"; chmod 755 "$root/init"
cp "$here"/restore-image/modules.early "$here"/restore-image/modules.late "$root/etc/"

log "resolving module dependencies"
depmod -b "$work/pkg" "$kver"
declare -A want
add() { # module name -> path plus its dependencies from modules.dep
    local name=${1//-/_} line path
    line=$(grep -E "/${name}\.ko(\.xz)?:|/${1}\.ko(\.xz)?:" "$mods/modules.dep" | head -1) || { log "module $1 missing"; return 0; }
    path=${line%%:*}; [ -n "${want[$path]:-}" ] && return 0; want[$path]=1
    for d in ${line#*:}; do add "$(basename "${d%.ko*}")"; done
}
while read -r m; do [ -n "$m" ] && add "$m"; done < <(cat "$here"/restore-image/modules.early "$here"/restore-image/modules.late "$here"/restore-image/modules.ondemand)
if [ -n "$zfs_addon" ]; then
    # The kernel modules the ZFS modules need join the image; the ZFS modules go to the addon after depmod.
    zfs_own=$(for ko in "$zfs_addon"/modules/*.ko; do basename "$ko" .ko; done)
    for ko in "$zfs_addon"/modules/*.ko; do
        for d in $(modinfo -F depends "$ko" | tr ',' ' '); do
            echo "$zfs_own" | grep -qx "$d" || add "$d"
        done
    done
fi
for path in "${!want[@]}"; do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
    case $path in
        *.xz) xz -dc "$mods/$path" > "$root/lib/modules/$kver/${path%.xz}" ;;
        *) cp "$mods/$path" "$root/lib/modules/$kver/$path" ;;
    esac
done
cp "$mods"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/" 2>/dev/null || true
if [ -n "$zfs_addon" ]; then
    mkdir -p "$root/lib/modules/$kver/extra"; cp "$zfs_addon"/modules/*.ko "$root/lib/modules/$kver/extra/"
fi
depmod -b "$root" "$kver"   # modules.dep of the chosen (uncompressed) set; busybox modprobe reads it
log "${#want[@]} modules"
copy_libs() { # binary [root]: copies the shared libraries it needs (the unpacked packages' first, else the host's)
    local lib into=${2:-$root} from=${3:-}
    for lib in $(LD_LIBRARY_PATH="${from:+$from:}$work/pkg/lib/x86_64-linux-gnu:$work/pkg/usr/lib/x86_64-linux-gnu" ldd "$1" 2>/dev/null | grep -o '/[^ ]*'); do
        local dest=${lib#"$work/pkg"}
        dest=${dest#"${from%/lib}"}
        dest=${dest/#\/usr\/lib\//\/lib\/}
        [ -e "$root$dest" ] && continue
        mkdir -p "$into$(dirname "$dest")"; [ -e "$into$dest" ] || cp -L "$lib" "$into$dest"
    done
}
install -m 755 "$daemon" "$root/restorefs-daemon"
copy_libs "$daemon"
lvm_bin=""
for candidate in "$work"/pkg/sbin/lvm "$work"/pkg/usr/sbin/lvm; do [ -x "$candidate" ] && { lvm_bin=$candidate; break; }; done
[ -n "$lvm_bin" ] || { log "lvm binary not found in lvm2"; exit 1; }
install -m 755 "$lvm_bin" "$root/sbin/lvm"
copy_libs "$lvm_bin"
for t in pvs lvs vgs vgchange vgmknodes vgscan lvchange; do ln -sf lvm "$root/sbin/$t"; done
dmsetup_bin=""
for candidate in "$work"/pkg/sbin/dmsetup "$work"/pkg/usr/sbin/dmsetup; do [ -x "$candidate" ] && { dmsetup_bin=$candidate; break; }; done
[ -n "$dmsetup_bin" ] || { log "dmsetup binary not found"; exit 1; }
install -m 755 "$dmsetup_bin" "$root/sbin/dmsetup"
copy_libs "$dmsetup_bin"
# NTFS: Debian 12's kernel has no ntfs3, so ntfs-3g over FUSE
ntfs_bin=""
for candidate in "$work"/pkg/bin/ntfs-3g "$work"/pkg/usr/bin/ntfs-3g; do [ -x "$candidate" ] && { ntfs_bin=$candidate; break; }; done
[ -n "$ntfs_bin" ] || { log "ntfs-3g binary not found"; exit 1; }
install -m 755 "$ntfs_bin" "$root/bin/ntfs-3g"
copy_libs "$ntfs_bin"
# LUKS: cryptsetup opens volumes read-only with a passphrase from the host (on its stdin)
crypt_bin=""
for candidate in "$work"/pkg/sbin/cryptsetup "$work"/pkg/usr/sbin/cryptsetup; do [ -x "$candidate" ] && { crypt_bin=$candidate; break; }; done
[ -n "$crypt_bin" ] || { log "cryptsetup binary not found in cryptsetup-bin"; exit 1; }
install -m 755 "$crypt_bin" "$root/sbin/cryptsetup"
copy_libs "$crypt_bin"
mdadm_bin=""
for candidate in "$work"/pkg/sbin/mdadm "$work"/pkg/usr/sbin/mdadm; do [ -x "$candidate" ] && { mdadm_bin=$candidate; break; }; done
[ -n "$mdadm_bin" ] || { log "mdadm binary not found"; exit 1; }
install -m 755 "$mdadm_bin" "$root/sbin/mdadm"
copy_libs "$mdadm_bin"
mkdir -p "$root/etc/lvm" "$root/run/lvm" "$root/run/cryptsetup" "$root/run/mdadm"
log "daemon $(du -h "$daemon" | cut -f1), lvm $(du -h "$lvm_bin" | cut -f1)"

if [ -n "$zfs_addon" ]; then
    # The ZFS addon: its modules (moved out of the image after depmod), zpool and zfs with the libraries the image
    # lacks; packed on their own and unpacked by the daemon only when it finds a pool member.
    addon=$work/addon
    mkdir -p "$addon/lib/modules/$kver" "$addon/sbin"
    mv "$root/lib/modules/$kver/extra" "$addon/lib/modules/$kver/extra"
    cp "$zfs_addon"/tools/sbin/zpool "$zfs_addon"/tools/sbin/zfs "$addon/sbin/"
    mkdir -p "$work/zfslib/lib"; cp -a "$zfs_addon"/tools/lib/. "$work/zfslib/lib/"
    for b in zpool zfs; do copy_libs "$addon/sbin/$b" "$addon" "$work/zfslib/lib"; done
    ( cd "$addon" && find . | LC_ALL=C sort | tar -c --no-recursion --owner=0 --group=0 -T - ) | gzip -6 > "$root/zfs-addon.tar.gz"
    log "ZFS addon: $(du -h "$root/zfs-addon.tar.gz" | cut -f1) packed ($(du -sh "$addon" | cut -f1) unpacked)"
fi
log "packing initramfs (cpio newc, lz4 legacy)"
( cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 ) | lz4 -l -q -c > "$out/initramfs.img.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"; mv "$out/vmlinux.new" "$out/vmlinux"; mv "$out/initramfs.img.new" "$out/initramfs.img"
echo "$manifest" > "$out/manifest"
log "done in $(( $(date +%s) - start ))s: initramfs $(du -h "$out/initramfs.img" | cut -f1), vmlinux $(du -h "$out/vmlinux" | cut -f1)"
