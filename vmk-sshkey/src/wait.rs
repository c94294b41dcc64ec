//! `waitssh`: notice a booting guest's sshd within a few tens of milliseconds.
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

use crate::ssh::{ssh_command, Auth};
use crate::target::Target;

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
pub fn wait_for_ssh(key: &Path, target: &Target, timeout: Duration) -> Result<Waited> {
    let start = Instant::now();
    let deadline = start + timeout;
    let spinner = Spinner::new(target);
    let mut banner = None;
    let mut last_ssh_error = String::new();
    loop {
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
            if !wait_for_banner(target, deadline)? {
                continue; // the deadline passed: report above
            }
            banner = Some(start.elapsed());
            log::info!("sshd at {target} answered after {:.2?}", start.elapsed());
        }
        spinner.set("logging in");
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        let out = ssh_command(
            key,
            target,
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
        last_ssh_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        log::debug!("ssh true: {:?}: {last_ssh_error}", out.status);
        // sshd may have gone again (a reboot): probe the banner again.
        banner = None;
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Probes until one sees a banner (true) or `deadline` passes (false).
///
/// A refused probe (the guest's network is up, sshd is not) ends at once and the next one
/// starts [`PROBE_INTERVAL`] later. A probe that gets no answer keeps waiting (up to
/// [`BANNER_TIMEOUT`]), since sshd on a slow guest may have accepted it and be starting a
/// process for it; giving up on it would only make the guest start another. Meanwhile, one
/// more probe starts every [`STALL_INTERVAL`] (at most [`MAX_PROBES`] in flight), so a
/// connection stuck before the guest's network came up delays nothing.
fn wait_for_banner(target: &Target, deadline: Instant) -> Result<bool> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Resolve once, so that a bad host name fails at once rather than in every thread.
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let in_flight = std::sync::Arc::new(AtomicUsize::new(0));
    let mut last_start: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let n = in_flight.load(Ordering::SeqCst);
        let stalled = last_start.is_some_and(|t| now - t >= STALL_INTERVAL);
        if n == 0 || (n < MAX_PROBES && stalled) {
            let (tx, t, count) = (tx.clone(), target.clone(), in_flight.clone());
            let wait = (deadline - now).min(BANNER_TIMEOUT);
            count.fetch_add(1, Ordering::SeqCst);
            last_start = Some(now);
            std::thread::spawn(move || {
                if probe_banner(&t, wait).unwrap_or(false) {
                    let _ = tx.send(());
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let step = PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
        if rx.recv_timeout(step).is_ok() {
            return Ok(true);
        }
    }
}

/// Probes in flight at most.
const MAX_PROBES: usize = 3;
/// When the newest probe got no answer for this long, another one starts beside it.
const STALL_INTERVAL: Duration = Duration::from_millis(1500);

/// One probe: true when a connection to `target` gets an `SSH-` banner within `wait`.
pub fn probe_banner(target: &Target, wait: Duration) -> Result<bool> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?
        .collect();
    for addr in addrs {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, wait.max(Duration::from_millis(100)))
        else {
            continue;
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
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if &buf[..got] == b"SSH-" {
            return Ok(true);
        }
    }
    Ok(false)
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
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
