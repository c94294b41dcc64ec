//! Best-effort filesystem freeze through the QEMU guest agent, so a snapshot of a running VM
//! is consistent when the guest runs qemu-guest-agent.
//!
//! The agent's socket is `RuntimePaths::qga_socket` (beside the QMP socket), which the
//! qemu command line of every vmk VM provides; when the socket does not exist (a VM started
//! by an older vmk), freezing is skipped with a warning and the snapshot is only
//! crash-consistent, like a power cut. When the guest runs no agent, the freeze times out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// How long one agent command may take (a freeze waits for the guest to flush).
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the first answer may take: a guest without an agent never answers, and the
/// snapshot should not wait long for it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the guest agent.
#[derive(Debug)]
pub struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Agent {
    /// Connects and synchronises (`guest-sync-delimited`), so stale replies are skipped.
    pub fn connect(path: &Path) -> Result<Agent> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to the guest agent at {}", path.display()))?;
        stream.set_read_timeout(Some(SYNC_TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut agent = Agent {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let id = u64::from(std::process::id()) << 16 | u64::from(rand16());
        let reply = agent
            .execute("guest-sync-delimited", Some(json!({ "id": id })))
            .context("no guest agent answered (is qemu-guest-agent running in the guest?)")?;
        if reply != json!(id) {
            bail!("the guest agent answered guest-sync with {reply}, expected {id}");
        }
        agent.writer.set_read_timeout(Some(TIMEOUT))?;
        Ok(agent)
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("sending {command} to the guest agent"))?;
        loop {
            let mut buf = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("waiting for the guest agent to answer {command}"))?;
            if n == 0 {
                bail!("the guest agent closed the connection during {command}");
            }
            // guest-sync-delimited puts 0xFF before its answer
            let text = buf.strip_prefix(&[0xFF]).unwrap_or(&buf);
            let text = String::from_utf8_lossy(text);
            if text.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(text.trim())
                .with_context(|| format!("the guest agent's answer to {command} is not JSON"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "the guest agent refused {command}: {}",
                    e.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description")
                );
            }
        }
    }
}

fn rand16() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(1)
}

/// Runs `f` with the guest's filesystems frozen when its agent answers at `socket`, and thaws
/// them afterwards whatever `f` returned. Without an agent, warns and runs `f` unfrozen.
pub fn with_frozen<T>(socket: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !socket.exists() {
        log::warn!(
            "no guest agent socket at {}: snapshot taken without freezing (crash-consistent)",
            socket.display()
        );
        return f();
    }
    let mut agent = match Agent::connect(socket) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("{e:#}: snapshot taken without freezing (crash-consistent)");
            return f();
        }
    };
    let frozen = agent
        .execute("guest-fsfreeze-freeze", None)
        .context("freezing the guest's filesystems")?;
    log::info!("guest agent froze {frozen} filesystem(s)");
    let result = f();
    match agent.execute("guest-fsfreeze-thaw", None) {
        Ok(n) => log::info!("guest agent thawed {n} filesystem(s)"),
        Err(e) => log::error!(
            "{e:#}: the guest's filesystems may still be frozen; run `guest-fsfreeze-thaw` through its agent"
        ),
    }
    result
}
