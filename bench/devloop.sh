#!/bin/bash
# bench/devloop.sh — the developer's loop: how long `vmk snap run --exec true` takes on the
# guest `vmk bootstrap` makes, next to a stock Debian guest (debootstrap minbase + systemd +
# openssh-server + linux-image-cloud-amd64, DHCP by systemd-networkd) started with
# `vmk snap run` + `vmk waitssh -- true` + `vmk snap kill`; medians of N runs each, the
# ratio (goal: <= 0.5), and a breakdown by phase. (Reading from shares: bench/shares.sh.)
#
# Usage: bench/devloop.sh [N]        (VMK_ACCEL=tcg by default here; N=3)
#   BEFORE=DIR adds a row for another bootstrapped guest (disk.img, vmlinuz, initrd.img in
#   DIR; e.g. an older test guest) booted the same way, to compare before and after.
# Needs: root, debootstrap (the stock guest is built once into $VMK_TEST_CACHE/bench-stock),
# a built workspace (cargo build) and the Debian test guest, which is made by vmk
# bootstrap's own steps (cargo test -p vmk-snap --test devloop builds it).
# The bootstrapped guest is booted as `vmk bootstrap` configures it: root by label,
# VMK_EXEC_INIT (the one-shot init: its initrd mounts the root without udev, no systemd,
# sshd without PAM, one ssh connection; its bzImage booted as the unpacked ELF).
# Phases (from `vmk -v` and `waitssh --times`; kernel from systemd-analyze in the guest):
#   qemu     vmk starting qemu until QMP answers
#   kernel   the kernel until it runs init (systemd-analyze; for the one-shot guest the
#            kernel and its initrd until the one-shot init, /run/vmk/uptime-init)
#   to-sshd  the rest until sshd's banner reaches vmk (firmware and the bzImage unpacking
#            itself count here; the one-shot guest: until it says sshd listens)
#   login    banner to the first successful `ssh true` (none for the one-shot guest)
#   command  the command's own ssh session
#   teardown ending the VM (kill) and removing the copy
#
# Figures here (TCG, 2 cores shared with other engineers' guests; ms):
#   before the one-shot init (last session, load ~23): bootstrap 195800, stock 144600: 1.35
#   one-shot init only, N=1, load ~15-20: bootstrap 68864, stock 176911: 0.39
#     (the systemd-booted guest of before, same run: 179553, 1.01)
#   + initrd without udev, bzImage as PVH ELF, sshd without PAM, one ssh connection,
#     N=3, load ~9-15 (with a devloop test run beside it):
#     guest          total    qemu   kernel to-sshd    login  command teardown
#     bootstrap      44603     468    14060   23782        0     6242      51
#     stock         160433     465    10373  114778    14248    20531      38
#     ratio 0.28 (goal <= 0.50); 9p share 717 MiB/s, guest disk 164 MiB/s
set -eu
. "$(dirname "$0")/guest.sh"
STOCK=$CACHE/bench-stock
WORK=$(mktemp -d /tmp/vmk-bench-devloop.XXXXXX)
cleanup() {
    for d in "$WORK"/boot "$WORK"/stock "$WORK"/before; do
        [ -d "$d" ] && (cd "$d" && "$BIN/vmk-snap" kill >/dev/null 2>&1 || true)
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

build_stock() {
    [ -f "$STOCK/disk.img" ] && return 0
    echo "bench: building the stock guest in $STOCK (debootstrap, a few minutes)" >&2
    rm -rf "$STOCK.tmp" && mkdir -p "$STOCK.tmp/root"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,openssh-server,udev,iproute2,linux-image-cloud-amd64 \
        bookworm "$STOCK.tmp/root" >&2
    r=$STOCK.tmp/root
    echo stock > "$r/etc/hostname"
    echo '/dev/vda / ext4 rw 0 1' > "$r/etc/fstab"
    printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' > "$r/etc/systemd/network/80-dhcp.network"
    chroot "$r" systemctl enable systemd-networkd.service ssh.service >&2
    : > "$r/etc/machine-id"
    cp "$r"/boot/vmlinuz-* "$STOCK.tmp/vmlinuz"
    cp "$r"/boot/initrd.img-* "$STOCK.tmp/initrd.img"
    mkfs.ext4 -q -d "$r" "$STOCK.tmp/disk.img" 2G
    rm -rf "$r"
    mv "$STOCK.tmp" "$STOCK"
}

# vmdir NAME IMAGEDIR VNC APPEND EXTRA: a VM directory with a copy of the guest and a key pair
vmdir() {
    d=$WORK/$1
    mkdir -p "$d"
    cp --sparse=always "$2/disk.img" "$d/disk0.img"
    cp "$2/vmlinuz" "$2/initrd.img" "$d/"
    ssh-keygen -q -t ed25519 -N '' -f "$d/vm-key"
    cat > "$d/vm-config" <<CFG
VMK_NAME=bench-$1
VMK_DISK0=disk0.img
VMK_DISK0_FORMAT=raw
VMK_KERNEL=vmlinuz
VMK_INITRD=initrd.img
VMK_APPEND="$4"
VMK_MEM=1G
VMK_VNC=$3
$5
CFG
}

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
# secs LOG PATTERN: the duration vmk -v logged after PATTERN ("after 1.23s" / "after 456.7ms"), in ms
logged() {
    grep -o "$2 [0-9.]*[mµ]*s" "$1" | tail -1 | awk '{v=$NF; if (v ~ /ms$/) {sub(/ms$/,"",v); print int(v)} else if (v ~ /µs$/) print 0; else {sub(/s$/,"",v); print int(v*1000)}}'
}
kernel_ms() { # systemd-analyze's kernel time in a running guest, in ms
    sed -n 's/.*Startup finished in \([0-9.]*\)\(m\?s\) (kernel).*/\1 \2/p' "$1" | awk '{print ($2=="ms") ? int($1) : int($1*1000)}' | tail -1
}

build_stock
# the bootstrapped guest as `vmk bootstrap` configures it (root by label, the one-shot init);
# the stock guest's root is /dev/vda (no label), so its disk is on virtio-blk
BOOT_APPEND="console=ttyS0 root=LABEL=vmkroot rw no_timer_check"
vmdir boot "$BOOT" 93 "$BOOT_APPEND" "VMK_SHARE=$WORK/share:bench:ro
VMK_EXEC_INIT=/usr/local/lib/vmk/exec-init"
vmdir stock "$STOCK" 94 "console=ttyS0 root=/dev/vda rw" "VMK_DISK_BUS=virtio"
KINDS=boot
if [ -n "${BEFORE:-}" ]; then vmdir before "$BEFORE" 92 "$BOOT_APPEND" ""; KINDS="boot before"; fi
mkdir -p "$WORK/share"

# exec_run KIND: one `vmk snap run --exec true`, its total and phases
exec_run() {
    cd "$WORK/$1"
    t0=$(now)
    "$BIN/vmk-snap" -v run --exec true 2> "$WORK/$1.log" >/dev/null
    echo "$(ms "$t0")" >> "$WORK/$1.total"
    q=$(logged "$WORK/$1.log" "started after"); b=$(logged "$WORK/$1.log" "sshd banner after")
    l=$(logged "$WORK/$1.log" "login after"); e=$(logged "$WORK/$1.log" "ended after")
    echo "$q $b $l $e $(tail -1 "$WORK/$1.total")" >> "$WORK/$1.phases"
}

for f in boot stock before; do : > "$WORK/$f.total"; : > "$WORK/$f.phases"; done
i=0
while [ "$i" -lt "$N" ]; do
    for k in $KINDS; do exec_run "$k"; done
    cd "$WORK/stock"
    t0=$(now)
    "$BIN/vmk-snap" -v run 2> "$WORK/stock.log" >/dev/null
    q=$(ms "$t0")
    "$BIN/vmk-sshkey" waitssh --times -- true 2>> "$WORK/stock.log"
    w=$(ms "$t0")
    "$BIN/vmk-snap" kill >/dev/null 2>&1
    echo "$(ms "$t0")" >> "$WORK/stock.total"
    b=$(grep -o 'banner after [0-9.]*s' "$WORK/stock.log" | awk '{sub(/s$/,"",$3); print int($3*1000)}')
    l=$(grep -o 'login after [0-9.]*s' "$WORK/stock.log" | awk '{sub(/s$/,"",$3); print int($3*1000)}')
    echo "$q $((q + b)) $((q + l)) $(( $(tail -1 "$WORK/stock.total") - w )) $(tail -1 "$WORK/stock.total")" >> "$WORK/stock.phases"
    i=$((i + 1))
done

# kernel time: one more boot of each, asking systemd-analyze (the one-shot init keeps
# /proc/uptime of its start and of sshd's in /run/vmk)
cd "$WORK/boot" && "$BIN/vmk-snap" run --exec '
    echo "Startup finished in $(cut -d" " -f1 /run/vmk/uptime-init)s (kernel) [with the initrd, to the one-shot init]"
    echo "sshd started at $(cut -d" " -f1 /run/vmk/uptime-sshd)s"' > "$WORK/boot.analyze" 2>/dev/null || true
if [ -n "${BEFORE:-}" ]; then
    cd "$WORK/before" && "$BIN/vmk-snap" run --exec 'systemd-analyze; systemd-analyze critical-chain ssh.service' > "$WORK/before.analyze" 2>/dev/null || true
fi
cd "$WORK/stock" && "$BIN/vmk-snap" run >/dev/null 2>&1 && "$BIN/vmk-sshkey" waitssh -- systemd-analyze > "$WORK/stock.analyze" 2>/dev/null || true
"$BIN/vmk-snap" kill >/dev/null 2>&1 || true

col() { awk -v c="$2" '{print $c}' "$1" | median; }
row() { # NAME FILE KERNEL
    q=$(col "$2" 1); b=$(col "$2" 2); l=$(col "$2" 3); e=$(col "$2" 4); t=$(col "$2" 5); k=${3:-0}
    printf '%-12s %7s %7s %8s %7s %8s %8s %7s\n' "$1" "$t" "$q" "$k" "$((b - q - k))" "$((l - b))" "$((t - l - e))" "$e"
}
echo "median of $N runs (ms), VMK_ACCEL=$VMK_ACCEL"
printf '%-12s %7s %7s %8s %7s %8s %8s %7s\n' guest total qemu kernel to-sshd login command teardown
row bootstrap "$WORK/boot.phases" "$(kernel_ms "$WORK/boot.analyze")"
[ -z "${BEFORE:-}" ] || row before "$WORK/before.phases" "$(kernel_ms "$WORK/before.analyze")"
row stock "$WORK/stock.phases" "$(kernel_ms "$WORK/stock.analyze")"
tb=$(median < "$WORK/boot.total"); ts=$(median < "$WORK/stock.total")
echo "ratio bootstrap/stock: $(awk -v a="$tb" -v b="$ts" 'BEGIN {printf "%.2f", a/b}') (goal <= 0.50)"
[ -z "${BEFORE:-}" ] || echo "ratio before/stock: $(awk -v a="$(median < "$WORK/before.total")" -v b="$ts" 'BEGIN {printf "%.2f", a/b}')"
sed -n 's/^/  bootstrap: /p' "$WORK/boot.analyze"
[ -z "${BEFORE:-}" ] || sed -n 's/^/  before:    /p' "$WORK/before.analyze"
sed -n 's/^/  stock:     /p' "$WORK/stock.analyze" | head -2

# reading from shares (virtio-9p, virtiofs) against the guest's own disk: bench/shares.sh
