#!/bin/bash
# Snapshot time for 1, 8 and 64 GiB disk images on a loop-mounted btrfs: the whole
# `vmk dsnap` process against cp --reflink, a shell doing touch + chattr +C + cp --reflink,
# cp --reflink=never (1 and 8 GiB only: a full copy of 64 GiB proves nothing new and needs the
# space) and `qemu-img create -b` overlays. Images are sparse NOCOW files with 1 MiB of data
# every 64 MiB (16, 128 and 1024 extents), so the reflink has real extents to share.
#
# Usage (root): [VMK_BIN_DIR=dir] [EXTENTS=N] bench/snapshot.sh [RUNS]   (needs hyperfine, btrfs-progs, qemu-img, jq;
# builds the release binaries first). Prints a Markdown table of medians on stdout.
set -euo pipefail

RUNS=${1:-30}
HERE=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/snapshot.sh: needs root (loop mount)" >&2; exit 2; }
for p in hyperfine mkfs.btrfs qemu-img jq chattr; do
    command -v "$p" >/dev/null || { echo "bench/snapshot.sh: needs $p" >&2; exit 2; }
done
# VMK_BIN_DIR: use release binaries built elsewhere (e.g. another CARGO_TARGET_DIR)
if [ -z "${VMK_BIN_DIR:-}" ]; then
    (cd "$HERE" && cargo build --release -q -p vmk-common -p vmk-snap) >&2
fi
VMK=${VMK_BIN_DIR:-$HERE/target/release}/vmk

WORK=$(mktemp -d /tmp/vmk-bench.XXXXXX)
MNT=$WORK/mnt
cleanup() {
    umount "$MNT" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
truncate -s 16G "$WORK/btrfs.img"
mkfs.btrfs -q "$WORK/btrfs.img"
mkdir "$MNT"
mount -o loop "$WORK/btrfs.img" "$MNT"

make_image() { # path size_gib
    local path=$1 size=$(( $2 * 1024 ))   # MiB
    touch "$path"; chattr +C "$path"
    truncate -s "${size}M" "$path"
    # EXTENTS=N: N data extents whatever the size (shows size independence); default: one
    # every 64 MiB, so bigger images have more extents (as used images do)
    local step=64
    [ -n "${EXTENTS:-}" ] && step=$(( size / EXTENTS ))
    local off=0
    while [ "$off" -lt "$size" ]; do
        dd if=/dev/urandom of="$path" bs=1M count=1 seek="$off" conv=notrunc status=none
        off=$(( off + step ))
    done
    sync -f "$path"
}

median_ms() { # hyperfine json → median in ms
    jq -r '.results[0].median * 1000 | . * 100 | round / 100' "$1"
}

declare -A T
SIZES=(1 8 64)
for gib in "${SIZES[@]}"; do
    vm=$MNT/vm$gib
    mkdir -p "$vm/out"
    chattr +C "$vm/out"            # new files in out/ inherit NOCOW, so plain cp --reflink works
    make_image "$vm/disk0.img" "$gib"
    printf 'VMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\n' > "$vm/vm-config"
    echo "image ${gib} GiB: $(du -h --apparent-size "$vm/disk0.img" | cut -f1) apparent, $(du -h "$vm/disk0.img" | cut -f1) allocated" >&2
    cd "$vm"
    run() { # key command
        local key=$1; shift
        hyperfine -N --runs "$RUNS" --warmup 3 \
            --prepare "rm -f $vm/out/copy $vm/out/overlay.qcow2 $vm/out/shcopy" \
            --export-json "$WORK/$key-$gib.json" "$@" >/dev/null
        T[$key,$gib]=$(median_ms "$WORK/$key-$gib.json")
    }
    # vmk dsnap makes a new disk0.img-<stamp> each time: remove them between runs
    hyperfine -N --runs "$RUNS" --warmup 3 \
        --prepare "find $vm -maxdepth 1 -name 'disk0.img-2*' -delete" \
        --export-json "$WORK/vmk-$gib.json" "$VMK dsnap" >/dev/null
    T[vmk,$gib]=$(median_ms "$WORK/vmk-$gib.json")
    find "$vm" -maxdepth 1 -name 'disk0.img-2*' -delete
    run cp "cp --reflink=always $vm/disk0.img $vm/out/copy"
    run sh "sh -c 'touch $vm/out/shcopy && chattr +C $vm/out/shcopy && cp --reflink=always $vm/disk0.img $vm/out/shcopy'"
    run qemu "qemu-img create -q -f qcow2 -F raw -b $vm/disk0.img $vm/out/overlay.qcow2"
    if [ "$gib" -le 8 ]; then
        run never "cp --reflink=never $vm/disk0.img $vm/out/copy"
    else
        T[never,$gib]="(not run)"
    fi
    cd /
    rm -rf "$vm"
done

ratio() { jq -n "$1 / $2 | . * 100 | round / 100"; }
echo "| method (median ms, $RUNS runs) | 1 GiB | 8 GiB | 64 GiB | 64/1 |"
echo "|---|---|---|---|---|"
for key in vmk cp sh qemu never; do
    case $key in
        vmk) name='`vmk dsnap` (whole process, front door + vmk-snap)';;
        cp) name='`cp --reflink=always` (into a +C dir)';;
        sh) name='sh: touch + chattr +C + cp --reflink';;
        qemu) name='`qemu-img create -f qcow2 -b` overlay';;
        never) name='`cp --reflink=never` (full copy)';;
    esac
    r="-"
    [ "$key" != never ] && r=$(ratio "${T[$key,64]}" "${T[$key,1]}")
    echo "| $name | ${T[$key,1]} | ${T[$key,8]} | ${T[$key,64]} | $r |"
done
