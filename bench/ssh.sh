#!/bin/sh
# bench/ssh.sh — how fast does `vmk` get from "start the VM" to "ssh works"?
#
# Measures, for `vmk snap run` (or `vmk run` with BENCH_RUN=run):
#   boot_to_ssh   seconds from `vmk snap run` to the first successful `vmk ssh -- true`
#                 (reached through `vmk waitssh`)
#   sshd_ready_s  seconds from `vmk snap run` to sshd being ready, seen independently of
#                 waitssh: systemd's "Started ssh.service" on the serial console log
#                 (polled every 10 ms; Debian's ssh.service is Type=notify)
#   notice_ms     how long after sshd was ready `vmk waitssh` got its first SSH banner
#                 (waitssh --times)
#   login_ms      how long after sshd was ready `vmk waitssh` returned (its first
#                 successful `ssh true`: one full handshake and login on the guest)
#   ssh_true_ms   one more `vmk ssh -- true` on the booted VM (a warm round trip)
#
# Usage: bench/ssh.sh [VMDIR] [RUNS]
#   VMDIR: a VM directory with vm-config; default: a fresh one in a temp dir made from the
#          Debian test guest (target/vmk-test-cache/debian-*, built by `cargo test`), with
#          VMK_ACCEL=${VMK_ACCEL:-tcg}.
#   RUNS:  repetitions (default 3). Results: one line per run on stdout, logs on stderr.
# Needs: vmk (built: target/debug or target/release, or $VMK), ssh, a guest whose console
# shows systemd's status lines (the Debian test guest does).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
vmk=${VMK:-}
if [ -z "$vmk" ]; then
    for p in "$here/target/release/vmk" "$here/target/debug/vmk"; do
        [ -x "$p" ] && vmk=$p && break
    done
fi
[ -n "$vmk" ] || { echo "bench: build vmk first (cargo build)" >&2; exit 2; }
run_cmd=${BENCH_RUN:-snap run}
runs=${2:-3}

now() { date +%s.%N; }
ms() { echo "$1 $2" | awk '{ printf "%d", ($2 - $1) * 1000 }'; }

tmp=
case $run_cmd in
    "snap run") kill_cmd="snap kill" info_cmd="snap info" ;;
    *) kill_cmd=kill info_cmd=info ;;
esac
probe_pid=
cleanup() {
    [ -n "$probe_pid" ] && kill "$probe_pid" 2>/dev/null
    [ -n "${vmdir:-}" ] && (cd "$vmdir" && $vmk $kill_cmd >/dev/null 2>&1 || true)
    [ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

if [ $# -ge 1 ] && [ -n "$1" ]; then
    vmdir=$(cd "$1" && pwd)
else
    guest=$(ls -d "$here"/target/vmk-test-cache/debian-* 2>/dev/null | grep -v '\.tmp$' | head -1)
    [ -n "$guest" ] || { echo "bench: no Debian test guest: run cargo test -p vmk-sshkey first" >&2; exit 2; }
    tmp=$(mktemp -d /tmp/vmk-bench.XXXXXX)
    vmdir=$tmp
    cp --sparse=always --reflink=auto "$guest/disk.img" "$vmdir/disk0"
    cat >"$vmdir/vm-config" <<EOF
VMK_DISK0=disk0
VMK_DISK0_FORMAT=raw
VMK_KERNEL=$guest/vmlinuz
VMK_INITRD=$guest/initrd.img
VMK_APPEND="console=ttyS0 root=/dev/vda rw"
VMK_ACCEL=${VMK_ACCEL:-tcg}
VMK_VNC=${BENCH_VNC:-79}
EOF
    (cd "$vmdir" && "$vmk" sshkeygen >/dev/null)
fi
cd "$vmdir"
port=$("$vmk" info --json | sed -n 's/.*"ssh_port": *\([0-9]*\).*/\1/p' | head -1)
host=$("$vmk" info --json | sed -n 's/.*"listen": *"\([^"]*\)".*/\1/p' | head -1)
case $host in 0.0.0.0|"") host=127.0.0.1 ;; esac
[ -n "$port" ] || { echo "bench: cannot tell the ssh port (vmk info --json)" >&2; exit 2; }
echo "bench: $vmk $run_cmd in $vmdir, ssh on $host:$port, $runs runs" >&2

# When sshd is ready, independently of waitssh: systemd prints "Started ssh.service" on
# the serial console once sshd listens (Debian's unit is Type=notify), and qemu writes the
# console to its log at once. This polls the log every 10 ms and prints the time it appears.
watch_console() {
    while ! grep -q 'Started.*ssh.service' "$1" 2>/dev/null; do sleep 0.01; done
    now
}

console_log=$($vmk $info_cmd --json | sed -n 's/.*"console_log": *"\([^"]*\)".*/\1/p' | head -1)
[ -n "$console_log" ] || { echo "bench: cannot tell the console log (vmk $info_cmd --json)" >&2; exit 2; }

printf 'run\tboot_to_ssh_s\tsshd_ready_s\tnotice_ms\tlogin_ms\tssh_true_ms\n'
i=1
while [ "$i" -le "$runs" ]; do
    rm -f "$console_log" # the VM is stopped: start a fresh log, so the line is this boot's
    out=$(mktemp)
    watch_console "$console_log" >"$out" &
    probe_pid=$!
    t0=$(now)
    $vmk $run_cmd >/dev/null
    if ! "$vmk" waitssh --times --timeout 600 2>"$out.wait" >/dev/null; then
        cat "$out.wait" >&2
        echo "bench: waitssh failed" >&2
        exit 1
    fi
    t_ready=$(now)
    times=$(tail -1 "$out.wait")
    "$vmk" ssh -- true
    t1=$(now)
    "$vmk" ssh -- true
    t2=$(now)
    wait "$probe_pid" 2>/dev/null || true
    probe_pid=
    t_sshd=$(cat "$out")
    rm -f "$out" "$out.wait"
    # waitssh reports when it saw the banner and logged in, relative to its own start.
    seen=$(echo "$times" | sed -n 's/.*banner after \([0-9.]*\)s.*/\1/p')
    login=$(echo "$times" | sed -n 's/.*login after \([0-9.]*\)s.*/\1/p')
    t_wait0=$(echo "$t_ready $login" | awk '{ printf "%.6f", $1 - $2 }')
    t_seen=$(echo "$t_wait0 $seen" | awk '{ printf "%.6f", $1 + $2 }')
    printf '%s\t%.1f\t%.1f\t%s\t%s\t%s\n' "$i" \
        "$(echo "$t0 $t1" | awk '{ print $2 - $1 }')" \
        "$(echo "$t0 $t_sshd" | awk '{ print $2 - $1 }')" \
        "$(ms "$t_sshd" "$t_seen")" "$(ms "$t_sshd" "$t_ready")" "$(ms "$t1" "$t2")"
    $vmk $kill_cmd >/dev/null 2>&1 || true
    sleep 1
    i=$((i + 1))
done
