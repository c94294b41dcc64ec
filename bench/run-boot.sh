#!/bin/sh
# Time from `vmk run` to the guest's first serial line and to its login prompt, next to
# the same qemu command started by hand (from `vmk -D run`), medians over N runs; prints
# vmk's overhead. Needs a built vmk-run and the cached Debian test guest (cargo test -p
# vmk-run --test boot builds it). Usage: bench/run-boot.sh [N]   (VMK_ACCEL=tcg here)
set -eu
N=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VMK_RUN=${VMK_RUN:-$ROOT/target/release/vmk-run}
[ -x "$VMK_RUN" ] || VMK_RUN=$ROOT/target/debug/vmk-run
DEB=$(ls -d "$ROOT"/target/vmk-test-cache/debian-*/ 2>/dev/null | head -1)
[ -n "$DEB" ] || { echo "no cached Debian guest: run cargo test -p vmk-run --test boot" >&2; exit 1; }
DIR=$(mktemp -d /tmp/vmk-bench.XXXXXX)
trap 'p=$(cat "$DIR/disk0.img.pid" 2>/dev/null) && kill -9 "$p" 2>/dev/null; rm -rf "$DIR"' EXIT
cp --sparse=always --reflink=auto "$DEB/disk.img" "$DIR/disk0.img"
cat > "$DIR/vm-config" <<CFG
VMK_NAME=bench
VMK_DISK0=disk0.img
VMK_DISK0_FORMAT=raw
VMK_MEM=1G
VMK_CPU=2
VMK_ACCEL=${VMK_ACCEL:-tcg}
VMK_VNC=96
VMK_KERNEL=${DEB}vmlinuz
VMK_INITRD=${DEB}initrd.img
VMK_APPEND='console=ttyS0 root=/dev/vda rw'
CFG
cd "$DIR"
now() { date +%s%N; }
# wait_line NEEDLE T0 -> prints ms since T0 when the console log shows NEEDLE
# (gives up after 600 s: a TCG guest very rarely hangs in early boot)
wait_line() {
    while ! grep -q "$1" disk0.img.console.log 2>/dev/null; do
        if [ $(( ($(now) - $2) / 1000000000 )) -gt 600 ]; then
            echo "bench/run-boot.sh: no '$1' on the console after 600 s; console log:" >&2
            tail -5 disk0.img.console.log >&2
            exit 1
        fi
        sleep 0.01
    done
    echo $(( ($(now) - $2) / 1000000 ))
}
stop_vm() {
    p=$(cat disk0.img.pid 2>/dev/null || true)
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    while [ -n "$p" ] && kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    rm -f disk0.img.pid disk0.img.console.log disk0.img.qmp
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
CMD=$("$VMK_RUN" -D run)
: > vmk.first; : > vmk.login; : > vmk.ret; : > raw.first; : > raw.login; : > raw.ret
i=0
while [ "$i" -lt "$N" ]; do
    t0=$(now); "$VMK_RUN" run 2>/dev/null; echo $(( ($(now) - t0) / 1000000 )) >> vmk.ret
    wait_line '[^[:space:]]' "$t0" >> vmk.first; wait_line 'login:' "$t0" >> vmk.login; stop_vm
    t0=$(now); eval "$CMD"; echo $(( ($(now) - t0) / 1000000 )) >> raw.ret
    wait_line '[^[:space:]]' "$t0" >> raw.first; wait_line 'login:' "$t0" >> raw.login; stop_vm
    i=$((i + 1))
done
# vmk's own overhead, without a boot: `vmk run` returns after QMP answers; qemu -daemonize
# returns earlier. Also time the front half alone (config + checks + dry run).
t0=$(now); j=0; while [ $j -lt 20 ]; do "$VMK_RUN" -D run >/dev/null; j=$((j+1)); done
dry=$(( ($(now) - t0) / 20000000 ))
printf '%-28s %8s %8s\n' "median of $N (ms)" vmk qemu
printf '%-28s %8s %8s\n' "command returned" "$(median < vmk.ret)" "$(median < raw.ret)"
printf '%-28s %8s %8s\n' "first serial line" "$(median < vmk.first)" "$(median < raw.first)"
printf '%-28s %8s %8s\n' "login prompt" "$(median < vmk.login)" "$(median < raw.login)"
echo "overhead to first line: $(( $(median < vmk.first) - $(median < raw.first) )) ms; vmk -D run alone: ${dry} ms"
