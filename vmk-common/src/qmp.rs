//! A small synchronous QMP client: `stop`, `info` and the tests talk to a running qemu
//! through its unix socket, and must never hang on a qemu that stopped answering.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

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
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    greeting: Value,
    timeout: Duration,
}

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds every read and write, and each command.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP socket {}", path.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            greeting: Value::Null,
            timeout,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{} did not greet like QMP (got {greeting}): is it a qemu QMP socket?",
                path.display()
            );
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The greeting qemu sent (`{"QMP": {"version": …, "capabilities": …}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes the per-operation timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("reading from QMP socket {}", self.path.display()))?;
        if n == 0 {
            bail!("qemu closed the QMP socket {}", self.path.display());
        }
        serde_json::from_str(&line)
            .with_context(|| format!("qemu sent something that is not JSON: {line:?}"))
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events that
    /// arrive meanwhile are skipped (logged at debug level); a qemu error becomes a
    /// [`QmpCommandError`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .with_context(|| format!("sending `{command}` to {}", self.path.display()))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let reply = self.read_message()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpCommandError {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                }
                .into());
            }
            if reply.get("event").is_some() {
                log::debug!("qmp event: {reply}");
            } else {
                log::debug!("unexpected qmp message: {reply}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "no answer to `{command}` from qemu within {:?}",
                    self.timeout
                );
            }
        }
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
