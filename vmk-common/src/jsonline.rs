//! Newline-delimited JSON over a unix socket: the one transport that qemu's QMP and the
//! guest agent both speak. Connecting with a timeout, sending a command, reading its reply
//! past events and stale replies, and reading events are written once here; [`crate::qmp`]
//! and the guest agent client add only what their protocols add.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The byte the guest agent puts before the answer to `guest-sync-delimited` (and that a
/// client sends to make the agent drop a partial command).
pub const DELIMITER: u8 = 0xFF;

/// An error answer (`{"error": {"class", "desc"}}`) to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The error class, e.g. `GenericError`, `CommandNotFound`.
    pub class: String,
    /// The peer's human-readable description.
    pub desc: String,
}

/// A connection speaking newline-delimited JSON.
#[derive(Debug)]
pub struct JsonLine {
    /// What is at the other end, for messages: `QMP socket`, `guest agent`.
    peer: &'static str,
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
}

impl JsonLine {
    /// Connects to the socket at `path`; `timeout` bounds every read and write, and each
    /// command. `peer` names the other end in messages.
    pub fn connect(path: &Path, timeout: Duration, peer: &'static str) -> Result<JsonLine> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to {peer} {}", path.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(JsonLine {
            peer,
            path: path.to_path_buf(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            timeout,
        })
    }

    /// Changes the per-operation timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Lets reads wait as long as it takes (for a reader of events until the peer closes).
    pub fn wait_forever(&mut self) -> Result<()> {
        self.writer.set_read_timeout(None)?;
        Ok(())
    }

    /// Sends `{"execute": command, "arguments": …}`, after the bytes of `prefix`.
    pub fn send(&mut self, prefix: &[u8], command: &str, arguments: Option<Value>) -> Result<()> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = prefix.to_vec();
        serde_json::to_writer(&mut bytes, &msg)?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .with_context(|| format!("sending `{command}` to {}", self.peer_name()))
    }

    /// The next line, without its newline; `None` when the peer closed the connection.
    pub fn read_line(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => Ok(None),
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Ok(Some(buf))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => bail!(
                "no answer from {} within {:?}",
                self.peer_name(),
                self.timeout
            ),
            Err(e) => Err(e).with_context(|| format!("reading from {}", self.peer_name())),
        }
    }

    /// The next message (blank lines skipped, anything up to a [`DELIMITER`] dropped);
    /// fails when the peer closed the connection or sent something that is not JSON.
    pub fn read_message(&mut self) -> Result<Value> {
        loop {
            let Some(line) = self.read_line()? else {
                bail!("{} closed the connection", self.peer_name());
            };
            let text = after_delimiter(&line);
            if text.trim_ascii().is_empty() {
                continue;
            }
            return serde_json::from_slice(text).with_context(|| {
                format!(
                    "{} sent something that is not JSON: {:?}",
                    self.peer_name(),
                    String::from_utf8_lossy(&line)
                )
            });
        }
    }

    /// Runs `command` and returns its `return` value, or the error the peer answered.
    /// Events and other messages that arrive meanwhile are skipped (logged at debug level).
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<std::result::Result<Value, ErrorReply>> {
        self.send(&[], command, arguments)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let reply = self.read_message()?;
            if let Some(ret) = reply.get("return") {
                return Ok(Ok(ret.clone()));
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Ok(Err(ErrorReply {
                    class: field("class"),
                    desc: field("desc"),
                }));
            }
            if reply.get("event").is_some() {
                log::debug!("{} event: {reply}", self.peer);
            } else {
                log::debug!("unexpected message from {}: {reply}", self.peer);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no answer to `{command}` from {} within {:?}",
                    self.peer_name(),
                    self.timeout
                );
            }
        }
    }

    /// The next event (`{"event": …}`), skipping other messages; `None` once the peer closed
    /// the connection.
    pub fn next_event(&mut self) -> Result<Option<Value>> {
        loop {
            let Some(line) = self.read_line()? else {
                return Ok(None);
            };
            match serde_json::from_slice::<Value>(after_delimiter(&line)) {
                Ok(msg) if msg.get("event").is_some() => return Ok(Some(msg)),
                _ => log::trace!(
                    "{}: skipped {:?}",
                    self.peer,
                    String::from_utf8_lossy(&line)
                ),
            }
        }
    }

    fn peer_name(&self) -> String {
        format!("{} {}", self.peer, self.path.display())
    }
}

/// What follows the last [`DELIMITER`] of `line` (all of it when there is none).
pub fn after_delimiter(line: &[u8]) -> &[u8] {
    match line.iter().rposition(|b| *b == DELIMITER) {
        Some(at) => &line[at + 1..],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn commands_skip_events_and_events_end_with_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let listener = UnixListener::bind(&sock).unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "{\"execute\":\"go\"}\n");
            s.write_all(b"\n{\"event\":\"A\"}\n{\"return\":{\"x\":1}}\n")
                .unwrap();
            s.write_all(b"{\"return\":{}}\n\xff{\"event\":\"B\"}\n")
                .unwrap();
        });
        let mut c = JsonLine::connect(&sock, Duration::from_secs(5), "test peer").unwrap();
        assert_eq!(c.execute("go", None).unwrap(), Ok(json!({"x": 1})));
        assert_eq!(c.next_event().unwrap(), Some(json!({"event": "B"})));
        peer.join().unwrap();
        assert_eq!(c.next_event().unwrap(), None);
        let e = c.read_message().unwrap_err().to_string();
        assert!(e.contains("closed the connection"), "{e}");
    }

    #[test]
    fn the_delimiter_ends_what_came_before() {
        assert_eq!(after_delimiter(b"ab\xff{}"), b"{}");
        assert_eq!(after_delimiter(b"{}"), b"{}");
    }
}
