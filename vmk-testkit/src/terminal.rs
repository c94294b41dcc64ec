//! Programs in a real terminal for tests: a tmux session gives a command a pty as a user's
//! terminal would; the test types keys into it, reads what it shows, and checks that the
//! command left the terminal's settings as it found them.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::isolation::TestEnv;

/// A program in a real terminal: a tmux session that is killed on drop.
#[derive(Debug)]
pub struct Tmux(String);

impl Tmux {
    /// A new detached session of 150×40 running `script` (a shell command line).
    pub fn start(name: &str, script: &str) -> Result<Tmux> {
        let t = Tmux(format!("vmk-{name}-{}", std::process::id()));
        t.tmux(&[
            "new-session",
            "-d",
            "-s",
            &t.0,
            "-x",
            "150",
            "-y",
            "40",
            script,
        ])?;
        Ok(t)
    }

    fn tmux(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("tmux").args(args).output()?;
        ensure!(out.status.success(), "tmux {args:?}: {out:?}");
        Ok(out)
    }

    /// Types `keys` (tmux key names: `Enter`, `C-a`, or text).
    pub fn send(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend_from_slice(keys);
        self.tmux(&args).map(drop)
    }

    /// What the terminal shows, with its scrollback.
    pub fn screen(&self) -> Result<String> {
        let out = self.tmux(&["capture-pane", "-p", "-J", "-S", "-1000", "-t", &self.0])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the terminal shows `needle`; the screen then.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = self.screen()?;
            if text.contains(needle) {
                return Ok(text);
            }
            ensure!(
                start.elapsed() < timeout,
                "no {needle:?} on the terminal after {timeout:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// Runs `command` in `dir` in a terminal, in the test's environment `env`, saving the
/// terminal settings before and after it and its exit status (files `before`, `after` and
/// `status` in `dir`), for [`ended_with_terminal_restored`].
pub fn in_terminal(env: &TestEnv, name: &str, dir: &Path, command: &str) -> Result<Tmux> {
    Tmux::start(
        name,
        &format!(
            "cd '{}' && stty -g > before && {} {command}; echo \"exit=$?\" > status; stty -g > after; sleep 600",
            dir.display(),
            env.env_prefix()
        ),
    )
}

/// Waits for the command of [`in_terminal`] to end; checks it exited with `code` and left
/// the terminal settings as they were.
pub fn ended_with_terminal_restored(dir: &Path, code: i32) -> Result<()> {
    let start = Instant::now();
    while !dir.join("after").exists() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the command did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(dir.join("status"))?;
    ensure!(
        status.trim() == format!("exit={code}"),
        "ended with {status}, not exit={code}"
    );
    let before = std::fs::read_to_string(dir.join("before"))?;
    let after = std::fs::read_to_string(dir.join("after"))?;
    ensure!(
        before == after,
        "terminal settings changed: {before} → {after}"
    );
    Ok(())
}
