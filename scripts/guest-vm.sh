# Sourced by the test-disk scripts that need a guest kernel (md, ZFS, file systems the host cannot mount):
#   guest_vm NAME IMAGEDIR WORK MARKER DISK...
# boots the restore image's kernel with WORK/overlay (its own /init in place of the daemon's) added to the initramfs,
# each DISK "SERIAL=FILE" (writable) or "SERIAL=FILE:ro" as a virtio disk; the console goes to WORK/console.log, and
# it succeeds when the /init wrote MARKER to it. GUEST_VM_TIMEOUT (s, default 600) bounds the run; GUEST_VM_QUIET
# (default "quiet") is on the kernel command line.
guest_vm() {
  local name=$1 image=$2 work=$3 marker=$4; shift 4
  lz4 -dc "$image/initramfs.img" > "$work/initrd.cpio"
  ( cd "$work/overlay" && find . | cpio -o -H newc --quiet -R 0:0 ) >> "$work/initrd.cpio"
  local drives=() i=0 d serial file ro
  for d in "$@"; do
    serial=${d%%=*}; file=${d#*=}; ro=""
    case $file in *:ro) file=${file%:ro}; ro=",readonly=on" ;; esac
    drives+=(-drive "file=$file,format=raw,if=none$ro,id=d$i" -device "virtio-blk-device,drive=d$i,serial=$serial")
    i=$((i + 1))
  done
  # microvm has no PIT/HPET to calibrate the TSC against under TCG: give the host's frequency, as the mount does.
  local khz
  khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
  timeout "${GUEST_VM_TIMEOUT:-600}" qemu-system-x86_64 -machine microvm,pit=off,pic=off,rtc=on -accel tcg,tb-size=128 -cpu max -smp 2 -m 512 \
    -nodefaults -no-user-config -no-reboot -display none -monitor none \
    -kernel "$image/vmlinux" -initrd "$work/initrd.cpio" \
    -append "console=ttyS0 panic=-1 ${GUEST_VM_QUIET-quiet} tsc=reliable mitigations=off${khz:+ tsc_early_khz=$khz}" \
    -serial "file:$work/console.log" -device virtio-rng-device "${drives[@]}" \
    || echo "$name: QEMU ended with $?" >&2
  if ! grep -q "$marker" "$work/console.log"; then
    tail -40 "$work/console.log" >&2
    return 1
  fi
}
