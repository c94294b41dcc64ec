//! Best-effort filesystem freeze through the QEMU guest agent, so a snapshot of a running VM
//! is consistent when the guest runs qemu-guest-agent.
//!
//! The agent's socket is `RuntimePaths::qga_socket` (beside the QMP socket), which the
//! qemu command line of every vmk VM provides; when the socket does not exist (a VM started
//! by an older vmk), freezing is skipped with a warning and the snapshot is only
//! crash-consistent, like a power cut. When the guest runs no agent, the freeze times out.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vmk_common::jsonline::{after_delimiter, JsonLine, DELIMITER};

/// How long one agent command may take (a freeze waits for the guest to flush).
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the first answer may take: a guest without an agent never answers, and the
/// snapshot should not wait long for it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the guest agent.
#[derive(Debug)]
pub struct Agent {
    conn: JsonLine,
    /// Answers meant for earlier clients that the sync skipped.
    skipped: usize,
}

impl Agent {
    /// Connects and synchronises (`guest-sync-delimited`), so stale replies are skipped.
    pub fn connect(path: &Path) -> Result<Agent> {
        let mut agent = Agent {
            conn: JsonLine::connect(path, SYNC_TIMEOUT, "the guest agent at")?,
            skipped: 0,
        };
        let id = u64::from(std::process::id()) << 16 | u64::from(rand16());
        agent.skipped = agent
            .sync(id)
            .context("no guest agent answered (is qemu-guest-agent running in the guest?)")?;
        agent.conn.set_timeout(TIMEOUT)?;
        Ok(agent)
    }

    /// How many answers meant for earlier clients the sync on connecting skipped.
    pub fn stale_answers_skipped(&self) -> usize {
        self.skipped
    }

    /// Sends `guest-sync-delimited` with `id` and skips everything until its answer;
    /// returns how many answers it skipped.
    ///
    /// Commands sent by earlier clients that gave up (e.g. while the guest was booting) stay
    /// queued in the virtio port, and their answers arrive at the next client first: only
    /// the answer carrying our `id` after the 0xFF delimiter ends the stale stream. The 0xFF
    /// sent first makes the agent drop a partial command an earlier client left behind.
    fn sync(&mut self, id: u64) -> Result<usize> {
        self.conn.send(
            &[DELIMITER],
            "guest-sync-delimited",
            Some(json!({ "id": id })),
        )?;
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut skipped = 0;
        loop {
            let Some(line) = self.conn.read_line()? else {
                bail!("the guest agent closed the connection during guest-sync-delimited");
            };
            if line.contains(&DELIMITER) {
                let reply: Option<Value> = serde_json::from_slice(after_delimiter(&line)).ok();
                if reply.as_ref().and_then(|r| r.get("return")) == Some(&json!(id)) {
                    if skipped > 0 {
                        log::info!(
                            "skipped {skipped} guest agent answer(s) meant for earlier clients"
                        );
                    }
                    return Ok(skipped);
                }
            }
            skipped += 1;
            if Instant::now() >= deadline {
                bail!(
                    "the guest agent did not answer guest-sync-delimited {id} within {SYNC_TIMEOUT:?} ({skipped} other answers)"
                );
            }
        }
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.conn
            .execute(command, arguments)
            .with_context(|| format!("waiting for the guest agent to answer {command}"))?
            .or_else(|e| {
                let desc = if e.desc.is_empty() {
                    "no description"
                } else {
                    &e.desc
                };
                bail!("the guest agent refused {command}: {desc}")
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake agent: answers what a real one would, after `stale` answers to commands of
    /// earlier clients (as a booting guest delivers them); returns the commands it got
    /// ("0xFF" for the parser-reset byte before a sync).
    fn fake_agent(listener: UnixListener, stale: &'static [&'static [u8]]) -> Vec<String> {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        let mut got = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                return got;
            }
            let text = line.strip_prefix(&[0xFF]).unwrap_or(&line);
            let cmd: Value = serde_json::from_slice(text).unwrap();
            let name = cmd["execute"].as_str().unwrap().to_string();
            let reply = match name.as_str() {
                "guest-sync-delimited" => {
                    if line[0] == 0xFF {
                        got.push("0xFF".to_string());
                    }
                    for s in stale {
                        out.write_all(s).unwrap();
                    }
                    let mut r = vec![0xFF];
                    r.extend(format!("{{\"return\": {}}}\n", cmd["arguments"]["id"]).bytes());
                    r
                }
                "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => b"{\"return\": 2}\n".to_vec(),
                _ => {
                    b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\n".to_vec()
                }
            };
            got.push(name);
            out.write_all(&reply).unwrap();
        }
    }

    /// What the fake agent sends: stale answers meant for earlier clients (a plain
    /// `return`, a delimited one, a thaw answer, a delimited error) before its own.
    const STALE_THEN_ANSWERS: &[&[u8]] = &[
        b"{\"return\": {}}\n",
        b"\xff{\"return\": 12345}\n",
        b"{\"return\": \"thawed\"}\n",
        b"\xff{\"error\": {\"desc\": \"x\"}}\n",
    ];

    #[test]
    fn sync_skips_answers_meant_for_earlier_clients() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm.qga");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = std::thread::spawn(move || fake_agent(listener, STALE_THEN_ANSWERS));
        let ran = with_frozen(&sock, || Ok("copied")).unwrap();
        assert_eq!(ran, "copied");
        let got = agent.join().unwrap();
        assert_eq!(
            got,
            [
                "0xFF",
                "guest-sync-delimited",
                "guest-fsfreeze-freeze",
                "guest-fsfreeze-thaw"
            ]
        );
    }

    /// The stale answers are counted as skipped, one by one, and none of them is taken
    /// for the answer to the next command (the freeze answers 2, not a stale value).
    #[test]
    fn every_stale_answer_is_skipped_and_none_answers_the_next_command() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm.qga");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = std::thread::spawn(move || fake_agent(listener, STALE_THEN_ANSWERS));
        let mut a = Agent::connect(&sock).unwrap();
        assert_eq!(a.stale_answers_skipped(), 4);
        assert_eq!(a.execute("guest-fsfreeze-freeze", None).unwrap(), json!(2));
        drop(a);
        agent.join().unwrap();
    }

    #[test]
    fn refusals_carry_the_agents_description() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm.qga");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = std::thread::spawn(move || fake_agent(listener, &[]));
        let mut a = Agent::connect(&sock).unwrap();
        let err = a.execute("guest-exec", None).unwrap_err();
        assert!(
            format!("{err:#}").contains("refused guest-exec: nope"),
            "{err:#}"
        );
        drop(a);
        agent.join().unwrap();
    }

    #[test]
    fn without_a_socket_the_copy_runs_unfrozen() {
        let dir = tempfile::tempdir().unwrap();
        let ran = with_frozen(&dir.path().join("absent.qga"), || Ok(7)).unwrap();
        assert_eq!(ran, 7);
    }
}
