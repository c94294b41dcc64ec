//! A small synchronous QMP client: `stop`, `info` and the tests talk to a running qemu
//! through its unix socket, and must never hang on a qemu that stopped answering. The
//! transport is [`crate::jsonline`]; this adds the greeting, capabilities and commands.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::jsonline::JsonLine;

/// An error that qemu itself returned for a command (`{"error": {"class", "desc"}}`).
/// Callers can `downcast_ref::<QmpCommandError>()` the `anyhow::Error`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("qemu refused `{command}`: {desc} ({class})")]
pub struct QmpCommandError {
    /// The command that failed.
    pub command: String,
    /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
    pub class: String,
    /// qemu's human-readable description.
    pub desc: String,
}

/// A QMP connection in command mode (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    conn: JsonLine,
    greeting: Value,
}

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds every read and write, and each command.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let mut conn = JsonLine::connect(path, timeout, "QMP socket")?;
        let greeting = conn.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{} did not greet like QMP (got {greeting}): is it a qemu QMP socket?",
                path.display()
            );
        }
        let mut qmp = Qmp { conn, greeting };
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The greeting qemu sent (`{"QMP": {"version": …, "capabilities": …}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes the per-operation timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.conn.set_timeout(timeout)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events that
    /// arrive meanwhile are skipped (logged at debug level); a qemu error becomes a
    /// [`QmpCommandError`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.conn.execute(command, arguments)?.map_err(|e| {
            QmpCommandError {
                command: command.to_string(),
                class: e.class,
                desc: e.desc,
            }
            .into()
        })
    }

    /// Waits, as long as qemu runs, for the events qemu sends, and returns the `reason` of
    /// the last `SHUTDOWN` (`guest-shutdown`, `guest-reset`, `host-qmp-quit`, …) once qemu
    /// closed the socket; `None` when it sent none.
    pub fn shutdown_reason(mut self) -> Option<String> {
        self.conn.wait_forever().ok()?;
        let mut reason = None;
        while let Ok(Some(event)) = self.conn.next_event() {
            if event.get("event").and_then(Value::as_str) == Some("SHUTDOWN") {
                log::debug!("qmp: {event}");
                reason = event
                    .pointer("/data/reason")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
        }
        reason
    }

    /// `query-status`: the run state (`running`, `paused`, `prelaunch`, …) and whether the
    /// guest's CPUs run.
    pub fn query_status(&mut self) -> Result<(String, bool)> {
        let v = self.execute("query-status", None)?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .context("query-status answer has no status")?
            .to_string();
        let running = v.get("running").and_then(Value::as_bool).unwrap_or(false);
        Ok((status, running))
    }

    /// `query-kvm`: whether this qemu runs its guest under KVM (else under emulation): what
    /// a running VM really got, whatever its config asked.
    pub fn query_kvm(&mut self) -> Result<bool> {
        let v = self.execute("query-kvm", None)?;
        v.get("enabled")
            .and_then(Value::as_bool)
            .context("query-kvm answer has no enabled")
    }

    /// Asks the guest to power off (ACPI power button). The guest may ignore it.
    pub fn system_powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Makes qemu exit now. qemu may close the socket before or right after answering;
    /// both count as success.
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(e) if e.downcast_ref::<QmpCommandError>().is_none() => {
                log::debug!("after quit: {e:#}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Waits (polling every 10 ms) until the QMP socket at `path` answers, then returns the
/// connection. Each connection attempt and command uses at most the time that is left.
pub fn wait_for_socket(path: &Path, timeout: Duration) -> Result<Qmp> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        match Qmp::connect(path, left) {
            Ok(q) => return Ok(q),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "QMP socket {} did not answer within {timeout:?}",
                        path.display()
                    )
                })
            }
            Err(e) => log::trace!("qmp not ready yet: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
