#!/usr/bin/env bash
# Makes an LVM-thin test disk in OUTDIR without device-mapper (as root: a loop device for LVM, a loop mount to fill
# the xfs):
#   thin.img   GPT: partition 1 an LVM PV → VG vgthin with a thin pool "pool" (64 KiB chunks) holding
#              thin LV "home" (ext4), thin LV "srv" (xfs) and thin snapshot "home-snap" of home (taken before home
#              changed: some chunks shared with home, some its own; activation-skip flag set, as lvcreate does)
#              and a plain linear LV "root" (ext4) next to the pool, as Proxmox lays out pve/root beside pve/data
#   expected/{home,home-snap,srv,root}/  the trees each LV holds
# LVM cannot create a thin pool without device-mapper, so the VG metadata is written as LVM text and restored with
# vgcfgrestore, the pool metadata is written by thin_restore from XML, and each file system image's non-zero chunks
# are placed at their data blocks (chunks equal in home and home-snap share one data block; zero chunks stay
# unmapped).
set -euo pipefail
out=${1:?usage: make-thin-disk.sh OUTDIR}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in sgdisk mkfs.ext4 mkfs.xfs lvm losetup thin_restore python3; do
  command -v "$tool" >/dev/null || { echo "make-thin-disk: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "make-thin-disk: needs root (a loop device for LVM, a loop mount for xfs)" >&2; exit 1; }
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
loop=""; mnt=""
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export LVM_SUPPRESS_FD_WARNINGS=1
export E2FSPROGS_FAKE_TIME=1714557600
prng() { python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($1).randbytes($2))"; }

exp=$out/expected
rm -rf "$exp"; mkdir -p "$exp"/{home,home-snap,srv,root}
# home-snap: the state when the snapshot was taken; home: changed afterwards (a file rewritten, one added, one removed)
t=$exp/home-snap
mkdir -p "$t/alice/docs" "$t/bob" "$t/many"
echo "alice's notes, version 1" > "$t/alice/docs/notes.txt"
prng 11 900000 > "$t/alice/photo.raw"
echo "bob was here" > "$t/bob/old.txt"; chmod 640 "$t/bob/old.txt"
ln -s ../alice/docs/notes.txt "$t/bob/notes-link"
for i in $(seq 1 40); do echo "small $i" > "$t/many/f$i"; done
cp -a "$t/." "$exp/home/"
t=$exp/home
echo "alice's notes, version 2 (after the snapshot)" > "$t/alice/docs/notes.txt"
prng 12 400000 > "$t/bob/new.bin"
rm "$t/bob/old.txt"
t=$exp/srv
mkdir -p "$t/www/deep"
echo "<h1>served from a thin LV</h1>" > "$t/www/index.html"
prng 13 1200000 > "$t/www/deep/archive.tar"
mkdir -p "$exp/root/etc"; echo "thin-host" > "$exp/root/etc/hostname"
find "$exp" -exec touch -h -d 2024-04-01T08:00:00Z {} +

chunk=$((64 * 1024))
truncate -s 64M "$work/home-snap.img"
mkfs.ext4 -q -F -L thin-home -U 7d1e2f3a-4b5c-4d6e-8f70-112233445566 -E hash_seed=1f2e3d4c-5b6a-4978-8a9b-aabbccddeeff \
  -d "$exp/home-snap" "$work/home-snap.img"
cp --sparse=always "$work/home-snap.img" "$work/home.img"
# home changes the copy in place (debugfs: no mount), so that unchanged chunks stay equal to the snapshot's
debugfs -w "$work/home.img" >/dev/null 2>&1 <<EOF
rm bob/old.txt
cd alice/docs
rm notes.txt
write $exp/home/alice/docs/notes.txt notes.txt
cd /bob
write $exp/home/bob/new.bin new.bin
EOF
truncate -s 8M "$work/root.img"
mkfs.ext4 -q -F -L thin-root -U 7d1e2f3a-4b5c-4d6e-8f70-665544332211 -E hash_seed=1f2e3d4c-5b6a-4978-8a9b-ffeeddccbbaa \
  -d "$exp/root" "$work/root.img"
truncate -s 320M "$work/srv.img"
mkfs.xfs -q -f -L thin-srv -m uuid=3a4b5c6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d "$work/srv.img"
mnt=$work/mnt; mkdir -p "$mnt"
mount -o loop "$work/srv.img" "$mnt"; cp -a "$exp/srv/." "$mnt/"; umount "$mnt"; mnt=""
# debugfs writes files with the current time and mode 0644 owned by root: make the expected tree say the same by
# reading the ext4 back through a loop mount
mnt=$work/mnt
for v in home home-snap root; do
  mount -o ro,loop,noload "$work/$v.img" "$mnt"
  rm -rf "$exp/$v"; mkdir -p "$exp/$v"; cp -a "$mnt/." "$exp/$v/"; rm -rf "$exp/$v/lost+found"
  umount "$mnt"
done
mnt=""

# The chunk layout: data blocks for every non-zero chunk; home-snap shares a block where its chunk equals home's.
python3 - "$work" "$chunk" <<'EOF'
import sys
work, chunk = sys.argv[1], int(sys.argv[2])
def chunks(name):
    with open(f"{work}/{name}.img", "rb") as f:
        data = f.read()
    return [data[i:i + chunk] for i in range(0, len(data), chunk)]
home, snap, srv = chunks("home"), chunks("home-snap"), chunks("srv")
zero = bytes(chunk)
blocks = []          # data block -> bytes
maps = {1: [], 2: [], 3: []}  # dev id -> [(virtual block, data block, time)]
for v, c in enumerate(snap):  # the snapshot's (older) state first: its chunks were written at time 0
    if c != zero:
        maps[3].append((v, len(blocks), 0)); blocks.append(c)
shared = {v: d for v, d, _ in maps[3]}
for v, c in enumerate(home):
    if c == zero:
        continue
    if v in shared and snap[v] == c:
        maps[1].append((v, shared[v], 0))
    else:
        maps[1].append((v, len(blocks), 1)); blocks.append(c)   # rewritten after the snapshot (time 1)
for v, c in enumerate(srv):
    if c != zero:
        maps[2].append((v, len(blocks), 0)); blocks.append(c)
with open(f"{work}/data.bin", "wb") as f:
    for b in blocks:
        f.write(b)
with open(f"{work}/nblocks", "w") as f:
    f.write(str(len(blocks)))
def device(dev, creation, snap_time, m):
    lines = [f'  <device dev_id="{dev}" mapped_blocks="{len(m)}" transaction="0" creation_time="{creation}" snap_time="{snap_time}">']
    for v, d, t in m:
        lines.append(f'    <single_mapping origin_block="{v}" data_block="{d}" time="{t}"/>')
    lines.append('  </device>')
    return "\n".join(lines)
with open(f"{work}/devices.xml", "w") as f:
    f.write(device(1, 0, 1, maps[1]) + "\n" + device(2, 0, 0, maps[2]) + "\n" + device(3, 1, 1, maps[3]) + "\n")
print(f"make-thin-disk: {len(blocks)} data blocks; mapped home {len(maps[1])}, srv {len(maps[2])}, home-snap {len(maps[3])}, shared {sum(1 for _, d, _ in maps[1] if any(d == s for s in shared.values()))}", file=sys.stderr)
EOF
nblocks=$(cat "$work/nblocks")

extent=$((4 * 1024 * 1024))
data_extents=$(( (nblocks * chunk + extent - 1) / extent + 1 ))
pool_blocks=$(( data_extents * extent / chunk ))
{
  printf '<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="%s">\n' "$pool_blocks"
  cat "$work/devices.xml"
  printf '</superblock>\n'
} > "$work/meta.xml"
truncate -s 4M "$work/tmeta.bin"
thin_restore -q -i "$work/meta.xml" -o "$work/tmeta.bin"

# thin.img: GPT, partition 1 = the PV (1 MiB alignment), big enough for spare + metadata + data extents
root_pe=$((data_extents + 2))
pv_mib=$(( (root_pe + 2) * 4 + 8 ))
img=$out/thin.img
rm -f "$img"; truncate -s $(( pv_mib + 2 ))M "$img"
sgdisk -U 5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d -n 1:2048:0 -t 1:8e00 -c 1:lvm -u 1:5a6b7c8d-0001-4a1b-8c2d-3e4f5a6b7c8d "$img" >/dev/null
start=$(sgdisk -i 1 "$img" | awk '/First sector/ {print $3}'); end=$(sgdisk -i 1 "$img" | awk '/Last sector/ {print $3}')
loop=$(losetup -f --show -o $((start * 512)) --sizelimit $(((end - start + 1) * 512)) "$img")
conf="devices { filter = [ \"a|^$loop\$|\", \"r|.*|\" ] global_filter = [ \"a|^$loop\$|\", \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } backup { backup = 0 archive = 0 }"
quiet() { "$@" >"$work/lvm.out" 2>&1 || { cat "$work/lvm.out" >&2; exit 1; }; }
quiet lvm pvcreate --config "$conf" --uuid THINPV-0000-0000-0000-0000-0000-000001 --norestorefile "$loop"
quiet lvm vgcreate --config "$conf" -s 4M vgthin "$loop"
quiet lvm vgcfgbackup --config "$conf" -f "$work/vg.txt" vgthin
pe_start=$(lvm pvs --config "$conf" --readonly --noheadings --units b --nosuffix -o pe_start "$loop" 2>/dev/null | tr -d ' ')
pe_count=$(lvm pvs --config "$conf" --readonly --noheadings -o pv_pe_count "$loop" 2>/dev/null | tr -d ' ')
[ "$pe_count" -ge $((root_pe + 2)) ] || { echo "make-thin-disk: PV too small ($pe_count extents)" >&2; exit 1; }
# The VG as lvcreate would have left it: pool (+ hidden _tmeta at extent 1, _tdata from extent 2, a metadata spare at
# extent 0), thin LVs 1 (home), 2 (srv), 3 (home-snap, origin home).
lv() { # NAME STATUS FLAGS EXTENTS SEGMENT-BODY
  printf '\t\t%s {\n\t\t\tid = "%s"\n\t\t\tstatus = [%s]\n\t\t\tflags = [%s]\n\t\t\tcreation_time = 1714557600\n\t\t\tcreation_host = "thin-test"\n\t\t\tsegment_count = 1\n\n\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = %s\n%s\n\t\t\t}\n\t\t}\n\n' \
    "$1" "$(printf 'THINLV-%04d-0000-0000-0000-0000-%06d' "$6" "$6")" "$2" "$3" "$4" "$5"
}
rw='"READ", "WRITE"'; vis='"READ", "WRITE", "VISIBLE"'
thin_extents=$(( 64 / 4 )); srv_extents=$(( 320 / 4 ))
lvs_text=$(
  lv pool "$vis" "" "$data_extents" "$(printf '\t\t\t\ttype = "thin-pool"\n\t\t\t\tmetadata = "pool_tmeta"\n\t\t\t\tpool = "pool_tdata"\n\t\t\t\ttransaction_id = 3\n\t\t\t\tchunk_size = 128\n\t\t\t\tdiscards = "passdown"\n\t\t\t\tzero_new_blocks = 1')" 1
  lv home "$vis" "" "$thin_extents" "$(printf '\t\t\t\ttype = "thin"\n\t\t\t\tthin_pool = "pool"\n\t\t\t\ttransaction_id = 0\n\t\t\t\tdevice_id = 1')" 2
  lv srv "$vis" "" "$srv_extents" "$(printf '\t\t\t\ttype = "thin"\n\t\t\t\tthin_pool = "pool"\n\t\t\t\ttransaction_id = 1\n\t\t\t\tdevice_id = 2')" 3
  lv home-snap "$vis" '"ACTIVATION_SKIP"' "$thin_extents" "$(printf '\t\t\t\ttype = "thin"\n\t\t\t\tthin_pool = "pool"\n\t\t\t\ttransaction_id = 2\n\t\t\t\tdevice_id = 3\n\t\t\t\torigin = "home"')" 4
  lv root "$vis" "" 2 "$(printf '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\n\t\t\t\tstripes = [\n\t\t\t\t\t"pv0", %s\n\t\t\t\t]' "$root_pe")" 8
  lv lvol0_pmspare "$rw" "" 1 "$(printf '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\n\t\t\t\tstripes = [\n\t\t\t\t\t"pv0", 0\n\t\t\t\t]')" 5
  lv pool_tmeta "$rw" "" 1 "$(printf '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\n\t\t\t\tstripes = [\n\t\t\t\t\t"pv0", 1\n\t\t\t\t]')" 6
  lv pool_tdata "$rw" "" "$data_extents" "$(printf '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\n\t\t\t\tstripes = [\n\t\t\t\t\t"pv0", 2\n\t\t\t\t]')" 7
)
python3 - "$work/vg.txt" "$lvs_text" <<'EOF'
import sys
path, lvs = sys.argv[1], sys.argv[2]
text = open(path).read()
end = text.rstrip().rfind("}")          # the VG block's closing brace
text = text[:end] + "\tlogical_volumes {\n\n" + lvs + "\n\t}\n" + text[end:]
open(path, "w").write(text)
EOF
quiet lvm vgcfgrestore --config "$conf" --force -f "$work/vg.txt" vgthin
lvm lvs -a --config "$conf" --readonly --noheadings -o lv_name,segtype,thin_id,seg_pe_ranges vgthin 2>/dev/null > "$work/lvs.txt"
grep -q "home-snap *thin *3" "$work/lvs.txt" || { echo "make-thin-disk: lvm does not show the restored VG as expected:" >&2; cat "$work/lvs.txt" >&2; exit 1; }
losetup -d "$loop"; loop=""
pv_offset=$((start * 512 + pe_start))
[ $((pv_offset % 65536)) = 0 ] || { echo "make-thin-disk: the PV's extents do not start on a 64 KiB boundary" >&2; exit 1; }
dd if="$work/tmeta.bin" of="$img" bs=64K seek=$(( (pv_offset + extent) / 65536 )) conv=notrunc status=none
dd if="$work/data.bin" of="$img" bs=64K seek=$(( (pv_offset + 2 * extent) / 65536 )) conv=notrunc status=none
dd if="$work/root.img" of="$img" bs=64K seek=$(( (pv_offset + root_pe * extent) / 65536 )) conv=notrunc status=none
echo "thin disk in $out/thin.img: VG vgthin, thin pool with home (ext4), srv (xfs), home-snap (snapshot of home); linear root (ext4)"
