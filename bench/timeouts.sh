#!/bin/sh
# bench/timeouts.sh — how close to their promise do vmk's timeouts end? (The tests only
# guard against hangs; the timing lives here.)
#
#   waitssh_timeout_2   `vmk waitssh --timeout 2` against a VM that is not running:
#                       median seconds until it gives up (promise: about 2 s)
#
# Usage: bench/timeouts.sh [RUNS]   (default 10). Needs vmk built (target/release or
# target/debug, or $VMK). Prints one line per measure: name, median seconds, ratio to the
# promised time.
set -eu

runs=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
vmk=${VMK:-}
if [ -z "$vmk" ]; then
    for p in "$here/target/release/vmk" "$here/target/debug/vmk"; do
        [ -x "$p" ] && vmk=$p && break
    done
fi
[ -n "$vmk" ] || { echo "bench/timeouts.sh: build vmk first (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d /tmp/vmk-bench-timeouts.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/vm" "$work/home"
# VM number 39 with a private HOME and no /etc/vmk-config: nothing listens on its ssh port
printf 'VMK_DISK0=disk0\nVMK_VNC=39\n' > "$work/vm/vm-config"
(cd "$work/vm" && HOME="$work/home" VMK_SYSTEM_CONFIG="$work/none" "$vmk" sshkeygen >/dev/null)

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

i=0
while [ "$i" -lt "$runs" ]; do
    start=$(date +%s.%N)
    (cd "$work/vm" && HOME="$work/home" VMK_SYSTEM_CONFIG="$work/none" \
        "$vmk" waitssh --timeout 2 -- true >/dev/null 2>&1) || true
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }"
    i=$((i + 1))
done | median > "$work/m"
m=$(cat "$work/m")
printf 'waitssh_timeout_2 median %s s ratio %s\n' "$m" "$(awk "BEGIN { printf \"%.2f\", $m / 2 }")"
