#!/bin/bash
# bench/shares.sh — how fast the guest reads a host folder: a 1 GiB file read in the guest
# (`cat FILE > /dev/null`, a cold guest page cache: a fresh `vmk snap run --exec` each run)
# from a virtio-9p share, from a virtiofs share, and from the guest's own disk (written
# there, then the guest's caches dropped); medians of N runs, MiB/s and the ratio to the
# guest's disk.
#
# Usage: bench/shares.sh [N]        (VMK_ACCEL=tcg by default here; N=3)
# Needs: root and qemu's virtiofsd (Debian 12: /usr/lib/qemu/virtiofsd; without it the
# virtiofs row is left out and the script says so), a built workspace (cargo build) and
# the Debian test guest made by vmk bootstrap's own steps (cargo test -p vmk-snap --test
# devloop builds it into $VMK_TEST_CACHE).
# One VM, both shares: VMK_SHARE="9p-dir:ninep:ro vfs-dir:vfs" with VMK_SHARE_FS=auto gives
# the read-write share virtiofs and the read-only one virtio-9p (a read-only share always
# is), so every run measures all three on the same boot.
#
# Figures here (TCG, 2 cores shared with other engineers' test runs; ms per GiB, MiB/s):
#   virtiofsd -o cache=auto (before), N=3, load ~7: 9p 3135 (326) virtiofs 23358 (43) disk 7669 (133)
#   virtiofsd -o cache=none (what vmk runs):
#     N=1, load ~6:     9p 1752 (584)   virtiofs 2608 (392)    disk 5158 (198)
#     N=5, load ~7-10:  9p 6814 (150)   virtiofs 15401 (66)    disk 6976 (146)
#       per run: virtiofs 6987..33992, 9p 3737..9280: under this load the spread is wide
#     N=1, load ~8:     9p 3237 (316)   virtiofs 10193 (100)   disk 5124 (199); virtiofsd
#       itself used 0.30 s of cpu for the GiB: under TCG (no ioeventfd/irqfd) each request
#       is several wake-ups between the vcpu, qemu's main loop and virtiofsd, and on a
#       loaded host their scheduling latency is what virtiofs pays; KVM avoids most of it
#       (not measured: guests hang under KVM on these machines).
set -eu
. "$(dirname "$0")/guest.sh"
WORK=$(mktemp -d /tmp/vmk-bench-shares.XXXXXX)
cleanup() {
    [ -d "$WORK/vm" ] && (cd "$WORK/vm" && "$BIN/vmk-snap" kill >/dev/null 2>&1 || true)
    rm -rf "$WORK"
}
trap cleanup EXIT

d=$WORK/vm
mkdir -p "$d" "$WORK/ninep" "$WORK/vfs"
cp --sparse=always "$BOOT/disk.img" "$d/disk0.img"
cp "$BOOT/vmlinuz" "$BOOT/initrd.img" "$d/"
ssh-keygen -q -t ed25519 -N '' -f "$d/vm-key"
cat > "$d/vm-config" <<CFG
VMK_NAME=bench-shares
VMK_DISK0=disk0.img
VMK_DISK0_FORMAT=raw
VMK_KERNEL=vmlinuz
VMK_INITRD=initrd.img
VMK_APPEND="console=ttyS0 root=LABEL=vmkroot rw no_timer_check"
VMK_EXEC_INIT=/usr/local/lib/vmk/exec-init
VMK_MEM=1G
VMK_VNC=91
VMK_SHARE="$WORK/ninep:ninep:ro $WORK/vfs:vfs"
CFG
dd if=/dev/urandom of="$WORK/vfs/big" bs=1M count=1024 status=none
ln "$WORK/vfs/big" "$WORK/ninep/big"

cd "$d"
"$BIN/vmk-snap" info | grep '^share:' >&2
virtiofs=yes
"$BIN/vmk-snap" info --json | grep -q '"transport": "virtiofs"' || virtiofs=
[ -n "$virtiofs" ] || echo "bench: no virtiofs here (vmk info says why above): 9p and disk only" >&2

: > "$WORK/results"
i=0
while [ "$i" -lt "$N" ]; do
    "$BIN/vmk-snap" run --exec '
        ms() { t0=$(date +%s%N); cat "$1" > /dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
        n=$(ms /mnt/ninep/big)
        v=0; [ -e /mnt/vfs/big ] && [ "$(stat -f -c %T /mnt/vfs)" != 9p ] && v=$(ms /mnt/vfs/big)
        head -c 1073741824 /dev/zero > /root/big; sync; echo 3 > /proc/sys/vm/drop_caches
        g=$(ms /root/big); rm -f /root/big
        echo "$n $v $g"' >> "$WORK/results" 2> "$WORK/run.log" || { cat "$WORK/run.log" >&2; exit 1; }
    i=$((i + 1))
done

col() { awk -v c="$1" '{print $c}' "$WORK/results" | median; }
n=$(col 1); v=$(col 2); g=$(col 3)
rate() { awk -v ms="$1" 'BEGIN {printf "%d", 1024 * 1000 / ms}'; }
echo "reading 1 GiB in the guest, median of $N runs, VMK_ACCEL=$VMK_ACCEL (per-run ms: 9p virtiofs disk)"
sed 's/^/  /' "$WORK/results"
printf '%-12s %8s %8s %12s\n' source ms MiB/s "vs disk"
row() { printf '%-12s %8s %8s %11sx\n' "$1" "$2" "$(rate "$2")" "$(awk -v a="$2" -v b="$g" 'BEGIN {printf "%.2f", b / a}')"; }
row virtio-9p "$n"
if [ -n "$virtiofs" ] && [ "$v" -gt 0 ]; then row virtiofs "$v"; else echo "virtiofs     (not available here)"; fi
row guest-disk "$g"
