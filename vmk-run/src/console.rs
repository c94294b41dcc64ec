//! `vmk console`: a minimal client for qemu's serial port, on its unix socket (the
//! default: a plain byte stream that only the VM's user may open) or on a telnet port
//! (VMK_CONSOLE=telnet). The terminal goes raw (restored on exit, error or panic), Ctrl-]
//! detaches and leaves the VM running, and on telnet the option negotiation qemu starts is
//! answered and kept out of the output. When stdin is not a terminal, it is sent to the
//! guest, and output is read until the guest has been quiet for a moment after stdin
//! ended (`echo uname -a | vmk console`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::term;

/// The key that detaches: Ctrl-].
pub const ESCAPE: u8 = 0x1d;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const OPT_BINARY: u8 = 0;
const OPT_ECHO: u8 = 1;
const OPT_SGA: u8 = 3;

/// Telnet protocol state across reads: strips IAC sequences from the data and collects
/// the replies to send.
#[derive(Debug, Default)]
pub struct Telnet {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Data,
    Iac,
    Option(u8),
    Sub,
    SubIac,
}

impl Telnet {
    /// Feeds bytes received from the server: returns the data bytes and appends replies
    /// to `reply`.
    pub fn receive(&mut self, input: &[u8], reply: &mut Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            self.state = match (self.state, b) {
                (State::Data, IAC) => State::Iac,
                (State::Data, _) => {
                    out.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.push(IAC);
                    State::Data
                }
                (State::Iac, WILL | WONT | DO | DONT) => State::Option(b),
                (State::Iac, SB) => State::Sub,
                (State::Iac, _) => State::Data, // NOP, GA and friends
                (State::Option(verb), opt) => {
                    let answer = match verb {
                        // The server echoes and does not send go-aheads: accept, as a raw
                        // client wants; binary too. Refuse anything else.
                        WILL if matches!(opt, OPT_ECHO | OPT_SGA | OPT_BINARY) => Some(DO),
                        WILL => Some(DONT),
                        DO if opt == OPT_BINARY || opt == OPT_SGA => Some(WILL),
                        DO => Some(WONT),
                        _ => None,
                    };
                    if let Some(a) = answer {
                        reply.extend_from_slice(&[IAC, a, opt]);
                    }
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, _) => State::Sub,
                (State::SubIac, SE) => State::Data,
                (State::SubIac, _) => State::Sub,
            };
        }
        out
    }
}

/// Data to send to the server: a literal 0xff is doubled.
pub fn escape_outgoing(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

/// Where to connect for a console listening on `listen`: an unspecified address (0.0.0.0,
/// ::) means loopback.
pub fn connect_addr(listen: IpAddr, port: u16) -> SocketAddr {
    let host = if listen.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen
    };
    SocketAddr::new(host, port)
}

/// Where a serial console listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// qemu's unix socket: raw bytes.
    Socket(PathBuf),
    /// qemu's telnet server.
    Telnet(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Telnet(a) => write!(f, "telnet {a}"),
        }
    }
}

/// A connected console.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn connect(target: &Target) -> io::Result<Conn> {
        match target {
            Target::Socket(p) => UnixStream::connect(p).map(Conn::Unix),
            Target::Telnet(a) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
                s.set_nodelay(true).ok();
                Ok(Conn::Tcp(s))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }

    fn is_telnet(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// Attaches stdin/stdout to the console at `target`. `quiet` is how long output may pause
/// after stdin ended (non-terminal stdin) before we leave.
pub fn attach(target: &Target, quiet: Duration, banner: Option<&str>) -> Result<()> {
    let mut sock = Conn::connect(target)
        .with_context(|| format!("connecting to the serial console at {target}"))?;
    let raw = term::Saved::raw_stdin()?;
    if raw.is_some() {
        if let Some(b) = banner {
            eprint!("{b}\r\n");
        }
    }
    let result = pump(&mut sock, raw.is_some(), quiet);
    drop(raw);
    if let Ok(Some(why)) = &result {
        eprintln!("\n{why}");
    }
    result.map(drop)
}

/// Moves bytes both ways until detach, stdin end (+quiet period) or the socket closing.
/// Returns why it ended, for a terminal user.
fn pump(sock: &mut Conn, interactive: bool, quiet: Duration) -> Result<Option<String>> {
    let stdin = io::stdin();
    let mut stdout = io::stdout();
    let mut telnet = Telnet::default();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    let mut last_output = Instant::now();
    let mut stdin_closed_at: Option<Instant> = None;
    loop {
        let timeout = match stdin_closed_at {
            Some(_) => {
                let idle = last_output.elapsed();
                if idle >= quiet {
                    return Ok(None);
                }
                PollTimeout::try_from(quiet - idle).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let (sock_ready, stdin_ready) = {
            let mut fds = vec![PollFd::new(sock.fd(), PollFlags::POLLIN)];
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for console input"),
            }
            let ready = |f: &PollFd| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            };
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if sock_ready {
            let n = match sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading from the serial console"),
            };
            if n == 0 {
                return Ok(interactive.then(|| "the console closed (the VM stopped?)".to_string()));
            }
            let mut reply = Vec::new();
            let data = if sock.is_telnet() {
                telnet.receive(&buf[..n], &mut reply)
            } else {
                buf[..n].to_vec()
            };
            if !reply.is_empty() {
                sock.write_all(&reply)
                    .context("answering telnet negotiation")?;
            }
            if !data.is_empty() {
                stdout.write_all(&data)?;
                stdout.flush()?;
                last_output = Instant::now();
            }
        }
        if stdin_ready {
            // Unbuffered: std's buffered stdin could hold bytes that poll no longer sees.
            let n = match rustix::io::read(stdin.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io::Error::from(e)).context("reading stdin"),
            };
            if n == 0 {
                stdin_open = false;
                stdin_closed_at = Some(Instant::now());
                last_output = last_output.max(Instant::now());
                continue;
            }
            let mut data = &buf[..n];
            let mut detach = false;
            if interactive {
                if let Some(i) = data.iter().position(|&b| b == ESCAPE) {
                    data = &data[..i];
                    detach = true;
                }
            }
            let out = if sock.is_telnet() {
                escape_outgoing(data)
            } else {
                data.to_vec()
            };
            sock.write_all(&out)
                .context("writing to the serial console")?;
            if detach {
                return Ok(Some("detached; the VM keeps running".to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_greeting_is_answered_and_stripped() {
        let mut t = Telnet::default();
        let mut reply = Vec::new();
        let greeting = [
            IAC, WILL, OPT_ECHO, IAC, WILL, OPT_SGA, IAC, WILL, 0, IAC, DO, 0,
        ];
        let mut input = greeting.to_vec();
        input.extend_from_slice(b"login: ");
        assert_eq!(t.receive(&input, &mut reply), b"login: ");
        assert_eq!(
            reply,
            [IAC, DO, OPT_ECHO, IAC, DO, OPT_SGA, IAC, DO, 0, IAC, WILL, 0]
        );
    }

    #[test]
    fn sequences_split_across_reads_and_escaped_iac() {
        let mut t = Telnet::default();
        let mut reply = Vec::new();
        assert_eq!(t.receive(&[b'a', IAC], &mut reply), b"a");
        assert_eq!(t.receive(&[DO], &mut reply), b"");
        assert_eq!(t.receive(&[24, b'b', IAC, IAC], &mut reply), [b'b', IAC]);
        assert_eq!(reply, [IAC, WONT, 24]);
        let mut r2 = Vec::new();
        assert_eq!(t.receive(&[IAC, SB, 24, 1, IAC, SE, b'c'], &mut r2), b"c");
        assert!(r2.is_empty());
        assert_eq!(escape_outgoing(&[1, IAC, 2]), [1, IAC, IAC, 2]);
    }

    #[test]
    fn unspecified_listen_connects_to_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0".parse().unwrap(), 9991),
            "127.0.0.1:9991".parse().unwrap()
        );
        assert_eq!(
            connect_addr("127.0.0.2".parse().unwrap(), 1),
            "127.0.0.2:1".parse().unwrap()
        );
    }
}
