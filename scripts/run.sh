#!/usr/bin/env bash
# `make run`: mounts STORE (or the demo datastore, made on first use) on MOUNTPOINT and shows what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-}
mnt=${2:-demo/mnt}
if [ -z "$store" ]; then
  bash scripts/make-demo.sh demo/store
  store=demo/store
fi
mkdir -p "$mnt"
if grep -q " $(realpath "$mnt") .* - fuse" /proc/self/mountinfo 2>/dev/null; then
  build/restorefs umount "$mnt" || true
fi
build/restorefs mount "$store" "$mnt"
echo
echo "mounted $store on $mnt:"
find "$mnt/snapshots" -maxdepth 5 | head -30
echo
echo "try:  ls -l $mnt/snapshots/vm/100/*/   cp $mnt/snapshots/vm/100/<time>/drive-scsi0.img /tmp/"
echo "      ls $mnt/snapshots/vm/100/<time>/files/drive-scsi0.img/part/1/"
echo "      ls -l $mnt/snapshots/ct/101/*/root.pxar/home/demo/   (a container backup: no VM needed)"
echo "stop: build/restorefs umount $mnt"
