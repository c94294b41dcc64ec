#!/bin/sh
# What a guest of another architecture costs on this machine under TCG: `vmk bootstrap
# --arch ARCH` cold (--no-cache: the emulated install through qemu-user and mmdebstrap) and
# warm (from the cached installed system), then `vmk snap run --exec 'uname -m'` (boot to
# sshd and one command). Medians over N runs, in seconds. Needs root, built vmk and
# vmk-ayinstall, mmdebstrap, qemu-user-static with binfmt, qemu-system-ARCH and its firmware.
# Usage: bench/bootstrap-arch.sh [ARCH] [N]    (ARCH: arm64 by default; amd64 for comparison)
set -eu
ARCH=${1:-arm64}
N=${2:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
[ -x "$BIN/vmk-ayinstall" ] || BIN=$ROOT/target/debug
[ -x "$BIN/vmk" ] || { echo "build vmk first: cargo build --bins" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/vmk-bench-arch.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# a private cache, so "warm" means this script's own first bootstrap
export XDG_CACHE_HOME=$WORK/cache VMK_ACCEL=${VMK_ACCEL:-tcg}
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f\n", (b - a) / 1e9 }'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# bootstrap DIR [--no-cache]: prints its seconds
bootstrap() {
    t0=$(now)
    "$BIN/vmk-ayinstall" bootstrap --arch "$ARCH" --vnc 97 "$@" >/dev/null
    secs "$t0"
}
i=0
while [ "$i" -lt "$N" ]; do
    bootstrap "$WORK/cold$i" --no-cache >> "$WORK/cold"
    rm -rf "$WORK/cold$i"
    i=$((i + 1))
done
bootstrap "$WORK/fill" > /dev/null # fills the cache
rm -rf "$WORK/fill"
i=0
while [ "$i" -lt "$N" ]; do
    bootstrap "$WORK/vm$i" >> "$WORK/warm"
    [ "$i" -eq 0 ] || rm -rf "$WORK/vm$i"
    i=$((i + 1))
done
i=0
while [ "$i" -lt "$N" ]; do
    t0=$(now)
    out=$(cd "$WORK/vm0" && "$BIN/vmk" snap run --ssh-timeout 900 --exec 'uname -m')
    secs "$t0" >> "$WORK/boot"
    echo "guest says: $out" >&2
    i=$((i + 1))
done
printf '%s (TCG, %s runs): bootstrap cold %ss, warm %ss; snap run --exec to its answer %ss\n' \
    "$ARCH" "$N" "$(median < "$WORK/cold")" "$(median < "$WORK/warm")" "$(median < "$WORK/boot")"
