//! Commands shown the way a shell would take them back: what every dry run (`-D`) and log
//! line prints, so that a printed command can be pasted and run as it is.

use std::ffi::OsStr;
use std::process::Command;

/// `w` quoted for a POSIX shell when it needs it; bytes that are not UTF-8 are shown lossily.
pub fn quote(w: &OsStr) -> String {
    let s = w.to_string_lossy();
    match shlex::try_quote(&s) {
        Ok(q) => q.into_owned(),
        // a NUL byte cannot be in an argument anyway
        Err(_) => format!("'{}'", s.replace('\'', r"'\''")),
    }
}

/// Words quoted and joined by spaces.
pub fn join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    words
        .into_iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command line: environment changes (`K=V`, the value quoted, so a shell takes them as
/// assignments), the program and its arguments, quoted.
pub fn command_line(c: &Command) -> String {
    let env = c
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let words = join(std::iter::once(c.get_program()).chain(c.get_args()));
    env.chain(std::iter::once(words))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote(OsStr::new("plain-word_1.raw")), "plain-word_1.raw");
        assert_eq!(quote(OsStr::new("a b")), "'a b'");
        assert_eq!(quote(OsStr::new("it's")), r#""it's""#);
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn a_command_line_round_trips_through_a_shell_split() {
        let mut c = Command::new("qemu-img");
        c.args(["create", "-f", "qcow2", "my disk;rm -rf x.qcow2", "1G"]);
        c.env("LC_ALL", "C");
        c.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg x");
        let line = command_line(&c);
        assert!(
            line.starts_with("LC_ALL=C LIBGUESTFS_BACKEND_SETTINGS='force_tcg x' qemu-img "),
            "{line}"
        );
        assert_eq!(
            shlex::split(&line).unwrap(),
            [
                "LC_ALL=C",
                "LIBGUESTFS_BACKEND_SETTINGS=force_tcg x",
                "qemu-img",
                "create",
                "-f",
                "qcow2",
                "my disk;rm -rf x.qcow2",
                "1G"
            ]
        );
    }
}
