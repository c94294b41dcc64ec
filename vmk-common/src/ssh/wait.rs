//! `waitssh`: notice a booting guest's sshd quickly without flooding it.
//!
//! A plain TCP connect is not enough with user networking: qemu accepts connections on the
//! forwarded port long before the guest listens. So each probe connects and waits for sshd's
//! `SSH-` banner; a refused (closed) connection is retried after ~50 ms, and a silent one
//! is kept (sshd on a slow guest may be starting for it) while another probe starts beside
//! it every 1.5 s. Probing must not flood a slow guest: every connection sshd accepts costs
//! the guest a new sshd process.
//! Once a banner arrives, `ssh … true` proves that the key is accepted (it may be a moment
//! behind the banner while the guest still sets up its credentials).

use std::io::{IsTerminal, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ssh::hostkey::HostKeys;
use crate::ssh::target::Target;
use crate::ssh::{ssh_command, Auth};

/// Pause between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long one probe waits for the banner on an accepted connection.
const BANNER_TIMEOUT: Duration = Duration::from_secs(20);

/// What waiting found.
#[derive(Debug, Clone, Copy)]
pub struct Waited {
    /// When the first banner was seen (since the start).
    pub banner: Duration,
    /// When `ssh … true` first succeeded (since the start).
    pub login: Duration,
}

/// Waits until `ssh root@target true` succeeds with `key`, or fails after `timeout`.
/// A host key that ssh refuses ends the wait at once, with the error that says why.
pub fn wait_for_ssh(
    key: &Path,
    target: &Target,
    host_keys: &HostKeys,
    timeout: Duration,
) -> Result<Waited> {
    wait_for_ssh_while(key, target, host_keys, timeout, &|| Ok(()))
}

/// [`wait_for_ssh`], ending early with the error of `alive` as soon as it returns one (the
/// VM's qemu exited, the user interrupted): checked between probes, every
/// [`PROBE_INTERVAL`] at most.
pub fn wait_for_ssh_while(
    key: &Path,
    target: &Target,
    host_keys: &HostKeys,
    timeout: Duration,
    alive: &dyn Fn() -> Result<()>,
) -> Result<Waited> {
    let start = Instant::now();
    let deadline = start + timeout;
    let spinner = Spinner::new(target);
    let mut banner = None;
    let mut last_ssh_error = String::new();
    loop {
        if let Err(e) = alive() {
            spinner.finish();
            return Err(e);
        }
        let now = Instant::now();
        if now >= deadline {
            spinner.finish();
            let detail = if banner.is_some() {
                format!("sshd answers but the login with vm-key fails: {last_ssh_error} (is the key in the guest? try `vmk sshkeyput`)")
            } else {
                "sshd never answered".to_string()
            };
            bail!(
                "ssh to {target} did not answer within {}s: {detail}",
                timeout.as_secs()
            );
        }
        if banner.is_none() {
            spinner.set("waiting for sshd");
            if !wait_for_banner(target, deadline, alive, &|| false, MAX_PROBES)? {
                continue; // the deadline passed or `alive` failed: report above
            }
            banner = Some(start.elapsed());
            log::info!("sshd at {target} answered after {:.2?}", start.elapsed());
        }
        spinner.set("logging in");
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        let out = ssh_command(
            key,
            target,
            host_keys,
            Auth::KeyBatch,
            Some(left.clamp(1, u64::from(crate::ssh::CONNECT_TIMEOUT)) as u32),
            false,
            &["true".to_string()],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running ssh (is the openssh client installed?)")?;
        if out.status.success() {
            spinner.finish();
            let w = Waited {
                banner: banner.unwrap_or_default(),
                login: start.elapsed(),
            };
            log::info!("logged in to {target} after {:.2?}", w.login);
            return Ok(w);
        }
        if let Some(r) = crate::ssh::hostkey::refusal(out.status.code(), &out.stderr) {
            spinner.finish();
            return Err(crate::ssh::hostkey::explain(r, host_keys, target));
        }
        last_ssh_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        log::debug!("ssh true: {:?}: {last_ssh_error}", out.status);
        // sshd answered: retry the login itself, each attempt one sshd process on the guest
        // (no burst of probes against an sshd that is busy, or throttling: MaxStartups).
        std::thread::sleep(LOGIN_RETRY);
    }
}

/// Waits until sshd at `target` runs, or fails after `timeout` or with the error of `alive`
/// ([`wait_for_ssh_while`]); the time it took. For a guest that has the key in place before
/// its sshd starts (the one-shot init of `--exec`), so that no `ssh true` is needed: sshd
/// runs once `started` says so (the guest's word) or a banner arrives. Until then one probe
/// at a time (with user networking, a probe made while the guest's network is down waits
/// for qemu to deliver it later, and then costs the guest an sshd process while the
/// command runs).
pub fn wait_for_sshd_while(
    target: &Target,
    timeout: Duration,
    alive: &dyn Fn() -> Result<()>,
    started: &dyn Fn() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let spinner = Spinner::new(target);
    spinner.set("waiting for sshd");
    let seen = wait_for_banner(target, start + timeout, alive, started, 1);
    spinner.finish();
    alive()?;
    if !seen? {
        bail!(
            "ssh to {target} did not answer within {}s: sshd never answered",
            timeout.as_secs()
        );
    }
    log::info!("sshd at {target} runs after {:.2?}", start.elapsed());
    Ok(start.elapsed())
}

/// Probes until one sees a banner (true), or `deadline` passes or `alive` fails (false).
///
/// A refused probe is retried after [`PROBE_INTERVAL`]. A silent one is kept (up to
/// [`BANNER_TIMEOUT`]), never abandoned early: with user networking qemu keeps trying to
/// deliver an abandoned connection to the guest and does so once its network is up, and
/// sshd on a slow guest spends seconds on each; a burst of them hits sshd's MaxStartups
/// and gets the real login dropped (seen under TCG). Beside a silent probe another starts
/// every [`STALL_INTERVAL`], at most `max_probes` in flight. True at once when `started`
/// says that sshd runs.
fn wait_for_banner(
    target: &Target,
    deadline: Instant,
    alive: &dyn Fn() -> Result<()>,
    started: &dyn Fn() -> bool,
    max_probes: usize,
) -> Result<bool> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Resolve once, so that a bad host name fails at once rather than in every thread.
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?;
    let (tx, rx) = std::sync::mpsc::channel::<Probe>();
    let in_flight = std::sync::Arc::new(AtomicUsize::new(0));
    let mut last_start: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || alive().is_err() {
            return Ok(false);
        }
        if started() {
            return Ok(true);
        }
        let n = in_flight.load(Ordering::SeqCst);
        let stalled = last_start.is_some_and(|t| now - t >= STALL_INTERVAL);
        if n == 0 || (n < max_probes && stalled) {
            let (tx, t, count) = (tx.clone(), target.clone(), in_flight.clone());
            let wait = (deadline - now).min(BANNER_TIMEOUT);
            count.fetch_add(1, Ordering::SeqCst);
            last_start = Some(now);
            std::thread::spawn(move || {
                let _ = tx.send(probe(&t, wait).unwrap_or(Probe::Silent));
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let step = PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
        let mut got = rx.recv_timeout(step).ok();
        while let Some(p) = got {
            if p == Probe::Banner {
                return Ok(true);
            }
            got = rx.try_recv().ok();
        }
    }
}

/// Pause between failed logins once sshd answered.
const LOGIN_RETRY: Duration = Duration::from_millis(500);
/// Probes in flight at most.
const MAX_PROBES: usize = 3;
/// When the newest probe got no answer for this long, another one starts beside it.
const STALL_INTERVAL: Duration = Duration::from_millis(1500);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// sshd's `SSH-` banner.
    Banner,
    /// Accepted, then closed without a banner: with user networking, qemu forwarded the
    /// connection and the guest refused it, so the guest's network is up.
    Closed,
    /// Refused at once (with user networking: qemu is not running (yet)).
    Refused,
    /// Nothing within the wait: the guest's network may not be up (or sshd is slow).
    Silent,
}

/// One probe: true when a connection to `target` gets an `SSH-` banner within `wait`.
pub fn probe_banner(target: &Target, wait: Duration) -> Result<bool> {
    Ok(probe(target, wait)? == Probe::Banner)
}

/// One probe of `target`, waiting up to `wait` for the banner.
pub fn probe(target: &Target, wait: Duration) -> Result<Probe> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?
        .collect();
    let mut outcome = Probe::Silent;
    for addr in addrs {
        let mut s = match TcpStream::connect_timeout(&addr, wait.max(Duration::from_millis(100))) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                outcome = Probe::Refused;
                continue;
            }
            Err(_) => continue,
        };
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match s.read(&mut buf[got..]) {
                Ok(0) => {
                    outcome = Probe::Closed;
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => {
                    outcome = Probe::Closed;
                    break;
                }
                Ok(n) => got += n,
            }
        }
        if &buf[..got] == b"SSH-" {
            return Ok(Probe::Banner);
        }
    }
    Ok(outcome)
}

/// A spinner on stderr when it is a terminal; nothing otherwise.
struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    fn new(target: &Target) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {prefix}: {msg}")
        {
            pb.set_style(style);
        }
        pb.set_prefix(format!("ssh {target}"));
        pb.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(pb))
    }

    fn set(&self, msg: &'static str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg);
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn banner_probe_tells_sshd_from_a_silent_forward() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            host: "127.0.0.1".into(),
            port,
        };
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap(); // accepts and closes: like qemu with no sshd
            drop(s);
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"SSH-2.0-test\r\n").unwrap();
        });
        assert!(!probe_banner(&t, Duration::from_secs(2)).unwrap());
        assert!(probe_banner(&t, Duration::from_secs(2)).unwrap());
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_no_banner() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Target {
            host: "127.0.0.1".into(),
            port,
        };
        let start = Instant::now();
        assert!(!probe_banner(&t, Duration::from_millis(300)).unwrap());
        // a hang guard only: nothing listens, so the probe must not wait for a banner
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
