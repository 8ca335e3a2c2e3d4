#!/usr/bin/env bash
# Writes the seed corpus of the guest-disk fuzz targets (disk, md-superblock, thin-metadata) into
# tests/RestoreFs.Fuzz/Corpus/ from what the real tools write: partition tables by sfdisk, the first blocks of file
# systems, LUKS and LVM by their own mkfs/format tools, thin pool metadata by thin_restore, and the md superblocks
# mdadm wrote that RestoreDaemon.Tests keeps (the host kernel here has no md, so mdadm cannot make new ones).
# The files are committed; run this only to remake them (as root: the 4 KiB-sector GPT needs a loop device).
set -euo pipefail
export LVM_SUPPRESS_FD_WARNINGS=1
here=$(cd "$(dirname "$0")" && pwd)
corpus=$here/Corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$corpus/disk" "$corpus/md-superblock" "$corpus/thin-metadata"

# Partition tables on 64 KiB disks (alignment off so that everything fits).
truncate -s 64K "$work/mbr.img"
printf 'label: dos\nunit: sectors\ngrain: 512\nfirst-lba: 1\n1,20,83\n21,100,5\n22,20,83\n43,20,7\n64,30,82\n' | sfdisk -q "$work/mbr.img"
cp "$work/mbr.img" "$corpus/disk/mbr-extended.img"
truncate -s 64K "$work/gpt.img"
printf 'label: gpt\nunit: sectors\nfirst-lba: 34\nstart=34, size=20, type=L, name=root\n54,30,S\n84,10,U\n' | sfdisk -q "$work/gpt.img"
cp "$work/gpt.img" "$corpus/disk/gpt.img"
truncate -s 64K "$work/gpt4k.img"
loop=$(losetup -f --show -b 4096 "$work/gpt4k.img")
printf 'label: gpt\nunit: sectors\nfirst-lba: 6\n6,2,L\n8,2,V\n' | sfdisk -q "$loop" || true # re-reading the table fails on a loop
losetup -d "$loop"
cp "$work/gpt4k.img" "$corpus/disk/gpt-4k-sectors.img"

# The first blocks of volumes, as long as the probe needs (its superblock and a little more).
head_of() { # name bytes image
  head -c "$2" "$3" > "$corpus/disk/$1"
}
fresh() { rm -f "$work/v.img"; truncate -s "$1" "$work/v.img"; }
fresh 8M; mkfs.ext4 -q -F "$work/v.img"; head_of ext4.head 4096 "$work/v.img"
fresh 8M; mkfs.ext2 -q -F "$work/v.img"; head_of ext2.head 4096 "$work/v.img"
fresh 8M; mkfs.ext4 -q -F -O journal_dev "$work/v.img"; head_of ext4-journal.head 4096 "$work/v.img"
fresh 300M; mkfs.xfs -q -f "$work/v.img"; head_of xfs.head 4096 "$work/v.img"
fresh 128M; mkfs.btrfs -q -f "$work/v.img"; head_of btrfs.head 69632 "$work/v.img"
fresh 8M; mkfs.vfat "$work/v.img" > /dev/null; head_of vfat.head 4096 "$work/v.img"
fresh 8M; mkntfs -q -F -f "$work/v.img" > /dev/null 2>&1; head_of ntfs.head 4096 "$work/v.img"
fresh 8M; mkfs.exfat "$work/v.img" > /dev/null; head_of exfat.head 4096 "$work/v.img"
fresh 8M; mkswap "$work/v.img" > /dev/null; head_of swap.head 4096 "$work/v.img"
fresh 64M; mkfs.f2fs -q -f "$work/v.img"; head_of f2fs.head 4096 "$work/v.img"
fresh 32M; mkfs.jfs -q "$work/v.img" > /dev/null; head_of jfs.head 36864 "$work/v.img"
fresh 64M; mkfs.reiserfs -q -f "$work/v.img" > /dev/null 2>&1; head_of reiserfs.head 69632 "$work/v.img"
fresh 8M; pvcreate -q --config 'devices { filter = [ "a/.*/" ] }' "$work/v.img" > /dev/null 2>&1 \
  || { loop=$(losetup -f --show "$work/v.img"); pvcreate -q -ff -y "$loop" > /dev/null; losetup -d "$loop"; }
head_of lvm-pv.head 8192 "$work/v.img"
fresh 32M; printf 'fuzz' | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "$work/v.img" -
head_of luks2.head 16384 "$work/v.img"
fresh 32M; printf 'fuzz' | cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 "$work/v.img" -
head_of luks1.head 4096 "$work/v.img"

# md superblocks: the 4 KiB blocks RestoreDaemon.Tests holds (gzip, base64).
tests=$here/../RestoreFs.RestoreDaemon.Tests/MdSuperblockTests.cs
for name in V10 V12 V12Raid5 V090; do
  sed -n "s/^ *private const string $name = \"\\([^\"]*\\)\";/\\1/p" "$tests" | base64 -d | gzip -dc > "$corpus/md-superblock/$name.block"
done

# Thin pool metadata: two devices, the second with enough mappings for a two-level tree; the file cut after its
# last block in use.
{
  echo '<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="10000">'
  echo '<device dev_id="1" mapped_blocks="12" transaction="0" creation_time="0" snap_time="0">'
  echo '<range_mapping origin_begin="0" data_begin="100" length="10" time="0"/>'
  echo '<single_mapping origin_block="20" data_block="5" time="0"/>'
  echo '<single_mapping origin_block="22" data_block="7" time="0"/>'
  echo '</device>'
  echo '<device dev_id="2" mapped_blocks="400" transaction="1" creation_time="1" snap_time="1">'
  for i in $(seq 0 399); do echo "<single_mapping origin_block=\"$((i * 2))\" data_block=\"$((5000 - i))\" time=\"1\"/>"; done
  echo '</device>'
  echo '</superblock>'
} > "$work/thin.xml"
truncate -s 1M "$work/thin.bin"
thin_restore -q -i "$work/thin.xml" -o "$work/thin.bin"
last=0
for ((b = 0; b < 256; b++)); do
  if [ -n "$(dd if="$work/thin.bin" bs=4096 skip=$b count=1 status=none | tr -d '\0' | head -c 1)" ]; then last=$b; fi
done
head -c $(((last + 1) * 4096)) "$work/thin.bin" > "$corpus/thin-metadata/two-devices.meta"
ls -l "$corpus/disk" "$corpus/md-superblock" "$corpus/thin-metadata"
