# bench/guest.sh — sourced by the benches that boot the Debian test guest (devloop.sh,
# shares.sh): N from $1, the built tools, VMK_ACCEL (tcg by default here), the test cache and
# the newest Debian test guest in it (BOOT; not the cloud-init or disk-boot variants, nor a
# build under way), and median().
N=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/debug}
export VMK_ACCEL=${VMK_ACCEL:-tcg}
CACHE=${VMK_TEST_CACHE:-$ROOT/target/vmk-test-cache}
BOOT=${BOOT:-$(ls -td "$CACHE"/debian-*/ 2>/dev/null | grep -v -e '\.tmp/$' -e cloudinit -e '/debian-disk-' | head -1)}
[ -n "$BOOT" ] || { echo "no Debian test guest in $CACHE: cargo test -p vmk-snap --test devloop" >&2; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
