//! Bridge networking for real, without touching the machine's own network: the test makes
//! its own network namespace with a bridge `br-vmk` (10.99.0.1/24), gives
//! qemu-bridge-helper a bridge.conf for that namespace only, and runs `vmk-run run` inside
//! it with the busybox guest. It checks that the helper's tap joins the bridge, that the
//! guest's frames carry the MAC derived from VMK_MAC_BASE_FORMAT and VMK_VNC, that the
//! guest's link comes up, and that guest and namespace ping each other.
//!
//! How bridge.conf reaches the helper: qemu-bridge-helper reads /etc/qemu/bridge.conf
//! (compiled in; it has no option to read another file, and obeys it even as root).
//! `ip netns exec NS` bind-mounts every entry of /etc/netns/NS over the same name in /etc,
//! in a mount namespace of its own, so /etc/netns/NS/qemu hides /etc/qemu for vmk-run,
//! qemu and the helper only. A bind mount needs its target: when /etc/qemu does not exist
//! (qemu-system packages do not create it) the test creates it empty and removes it
//! afterwards; a run killed before that is swept up by the next one (a marker in
//! /etc/netns says the empty /etc/qemu is the test's, and namespaces of dead pids go).
//!
//! The guest gets its address from `vmk.cmd` on the kernel command line (the busybox guest
//! runs it after bringing eth0 up): Debian's kernel has no CONFIG_IP_PNP, so `ip=` would be
//! ignored.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::guest;
use vmk_testkit::isolation::TestEnv;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Two slow cores shared with other tests: be generous.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const BRIDGE: &str = "br-vmk";
const HOST_ADDR: &str = "10.99.0.1";
const GUEST_ADDR: &str = "10.99.0.2";
/// A fixed VM number: its ports are in the test's own network namespace, where nothing
/// else listens, and the MAC the test expects is derived from it.
const VNC: u8 = 88;
/// Not the default format, so the test sees that VMK_MAC_BASE_FORMAT is used.
const MAC_FORMAT: &str = "52:54:00:12:34:%02x";

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "bridge_in_a_netns_tap_mac_link_and_ping",
        &[
            Need::Root,
            Need::Qemu,
            Need::Busybox,
            Need::Kernel,
            Need::Program("ip"),
            Need::Program("bridge"),
        ],
        bridge_in_netns,
    )])
}

/// Runs `cmd`, failing with its stderr when it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A network namespace with a bridge, and its bridge.conf under /etc/netns; all removed on
/// drop (after the qemu guard, which is declared later and so dropped first).
struct Netns {
    name: String,
    etc: PathBuf,
    made_etc_qemu: bool,
}

/// Written when a run of this test creates /etc/qemu, removed with it: a run killed before
/// its cleanup leaves the marker, so the next run knows the empty /etc/qemu is a leftover.
const MADE_ETC_QEMU: &str = "/etc/netns/.vmk-test-made-etc-qemu";

/// Removes what runs of this test killed before their cleanup left: namespaces
/// `vmk-test-PID` (and their /etc/netns entries) of pids that no longer run, and an empty
/// /etc/qemu that such a run made. Never anything of a run that still goes on.
fn sweep_leftovers() {
    let mut live_runs = 0;
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("vmk-test-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                live_runs += 1;
                continue;
            }
            eprintln!("removing the leftover network namespace {name} of a killed run");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    if live_runs == 0 && Path::new(MADE_ETC_QEMU).exists() {
        eprintln!("removing the empty /etc/qemu a killed run made");
        let _ = std::fs::remove_dir("/etc/qemu"); // only when empty
        let _ = std::fs::remove_file(MADE_ETC_QEMU);
    }
}

impl Netns {
    fn create() -> Result<Netns> {
        sweep_leftovers();
        let name = format!("vmk-test-{}", std::process::id());
        let etc = Path::new("/etc/netns").join(&name);
        ensure!(
            !etc.exists(),
            "{} exists: a leftover of an earlier run? remove it",
            etc.display()
        );
        let made_etc_qemu = !Path::new("/etc/qemu").exists();
        if made_etc_qemu {
            std::fs::create_dir_all("/etc/netns")?;
            std::fs::write(MADE_ETC_QEMU, "")?;
            std::fs::create_dir("/etc/qemu").context("creating the mount point /etc/qemu")?;
        }
        // From here on, Drop cleans up whatever was made.
        let ns = Netns {
            name,
            etc,
            made_etc_qemu,
        };
        ip(&["netns", "add", &ns.name])?;
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", n, "link", "set", BRIDGE, "up"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{HOST_ADDR}/24"),
            "dev",
            BRIDGE,
        ])?;
        std::fs::create_dir_all(ns.etc.join("qemu"))?;
        std::fs::write(ns.etc.join("qemu/bridge.conf"), format!("allow {BRIDGE}\n"))?;
        Ok(ns)
    }

    /// `ip netns exec NS program args…`.
    fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The ports of the bridge (from `ip -j link show master`).
    fn bridge_ports(&self) -> Result<Vec<serde_json::Value>> {
        let out = ip(&["-j", "-n", &self.name, "link", "show", "master", BRIDGE])?;
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
                .with_context(|| format!("parsing `ip -j link show master`: {out}"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
        if self.made_etc_qemu && std::fs::remove_dir("/etc/qemu").is_ok() {
            let _ = std::fs::remove_file(MADE_ETC_QEMU);
        }
        let _ = std::fs::remove_dir("/etc/netns"); // only when empty
    }
}

fn show(what: &str, out: &Output) {
    eprintln!(
        "$ {what} → {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bridge_in_netns() -> Result<()> {
    let g = guest::busybox_guest()?;
    let ns = Netns::create()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?;
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=br{VNC}\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\n\
             VMK_CPU=1\nVMK_ACCEL=tcg\nVMK_VNC={VNC}\nVMK_KERNEL='{}'\nVMK_INITRD='{}'\n",
            g.kernel.display(),
            g.initrd.display(),
        ),
    )?;
    // The guest prints its MAC, takes its address, pings the namespace's bridge address,
    // then stays up for the host's ping (the guard ends it). The markers are spelt with
    // `$p` because the kernel echoes its command line to the console.
    let guest_cmd = format!(
        "p=vmk-net; echo $p: mac $(cat /sys/class/net/eth0/address); \
         ip addr add {GUEST_ADDR}/24 dev eth0 && ping -c 3 -W 5 {HOST_ADDR} >/dev/null \
         && echo $p: ping ok; sleep 900"
    );
    let append = format!("{} vmk.cmd=\"{guest_cmd}\"", g.append);
    let env = TestEnv::new()?;
    let vmk_run = |args: &[&str]| -> Result<Output> {
        let mut cmd = ns.exec(env!("CARGO_BIN_EXE_vmk-run"));
        let out = env
            .apply(&mut cmd)
            .args(args)
            .current_dir(dir)
            .env("VMK_NET_TYPE", "bridge")
            .env("VMK_BRIDGE", BRIDGE)
            .env("VMK_MAC_BASE_FORMAT", MAC_FORMAT)
            .env("VMK_APPEND", &append)
            .stdin(Stdio::null())
            .output()
            .context("running vmk-run in the namespace")?;
        show(
            &format!("ip netns exec {} vmk-run {}", ns.name, args.join(" ")),
            &out,
        );
        Ok(out)
    };
    let mac = format!("52:54:00:12:34:{VNC:02x}");

    let dry = vmk_run(&["-D", "run"])?;
    let dry = String::from_utf8_lossy(&dry.stdout);
    ensure!(
        dry.contains(&format!("bridge,id=net0,br={BRIDGE}")) && dry.contains(&format!("mac={mac}")),
        "dry run lacks the bridge netdev or the MAC: {dry}"
    );
    ensure!(
        ns.bridge_ports()?.is_empty(),
        "the bridge has ports before the run"
    );

    let out = vmk_run(&["run", "--json"])?;
    let pidfile = dir.join("disk0.raw.pid");
    let guard = QemuGuard::from_pidfile(&pidfile);
    ensure!(out.status.success(), "vmk-run run failed in the namespace");
    let mut guard = guard?;

    // The helper's tap is a port of br-vmk, in the namespace (not on the host).
    let ports = ns.bridge_ports()?;
    ensure!(ports.len() == 1, "expected one port on {BRIDGE}: {ports:?}");
    let tap = ports[0]["ifname"]
        .as_str()
        .context("bridge port without a name")?
        .to_string();
    ensure!(tap.starts_with("tap"), "the bridge port {tap} is not a tap");
    ensure!(
        !Path::new("/sys/class/net").join(BRIDGE).exists(),
        "{BRIDGE} exists on the host's network, not only in the namespace"
    );

    let log = dir.join("disk0.raw.console.log");
    let t = guest::wait_for_file_line(&log, "vmk-busybox-guest: eth0 up", BOOT_TIMEOUT)?;
    eprintln!("guest link up after {t:.1?}");
    guest::wait_for_file_line(&log, "vmk-net: mac", BOOT_TIMEOUT)?;
    let text = std::fs::read_to_string(&log)?;
    let guest_mac = text
        .lines()
        .find_map(|l| l.split_once("vmk-net: mac "))
        .map(|(_, m)| m.trim())
        .context("no MAC line")?;
    ensure!(
        guest_mac == mac,
        "the guest's MAC is {guest_mac}, not {mac} from VMK_MAC_BASE_FORMAT and VMK_VNC"
    );
    guest::wait_for_file_line(&log, "vmk-net: ping ok", BOOT_TIMEOUT)
        .context("the guest could not ping the namespace's bridge address")?;

    // The bridge learned the guest's MAC on the tap: the frames came through the helper's tap.
    let fdb = run(Command::new("bridge").args(["-n", &ns.name, "fdb", "show", "br", BRIDGE]))?;
    ensure!(
        fdb.lines()
            .any(|l| l.starts_with(&format!("{mac} dev {tap} "))),
        "{BRIDGE} did not learn {mac} on {tap}:\n{fdb}"
    );

    // And the namespace reaches the guest (busybox ping: the host may have none).
    let busybox = vmk_testkit::which("busybox").context("no busybox on PATH")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ns
            .exec(&busybox)
            .args(["ping", "-c", "1", "-W", "2", GUEST_ADDR])
            .output()?;
        if out.status.success() {
            break;
        }
        if Instant::now() > deadline {
            show("ping", &out);
            bail!("the namespace cannot ping the guest at {GUEST_ADDR}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let info: serde_json::Value =
        serde_json::from_slice(&vmk_run(&["info", "--json"])?.stdout).context("info --json")?;
    ensure!(info["state"] == "running", "info says {}", info["state"]);
    ensure!(
        info["net"] == "bridge" && info["bridge"] == BRIDGE,
        "{info}"
    );
    ensure!(info["mac"] == mac.as_str(), "info mac {}", info["mac"]);
    // The namespace has talked to the guest: its neighbour table has the guest by its MAC.
    ensure!(
        info["guest_ip"]["addr"] == GUEST_ADDR && info["guest_ip"]["source"] == "neighbour",
        "info does not give the guest's address from the neighbour table: {}",
        info["guest_ip"]
    );
    let text = String::from_utf8(vmk_run(&["info"])?.stdout)?;
    ensure!(
        text.contains(&format!("{GUEST_ADDR} (neighbour table, MAC {mac})")),
        "info's ip line:\n{text}"
    );

    ensure!(vmk_run(&["kill"])?.status.success(), "kill failed");
    ensure!(!guard.is_running(), "qemu still runs after kill");
    ensure!(
        ns.bridge_ports()?.is_empty(),
        "the tap is still on {BRIDGE} after qemu ended"
    );
    Ok(())
}
