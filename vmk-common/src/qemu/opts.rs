//! qemu's option-list syntax (`word,key=value,…`, commas in values doubled) and the argv
//! under construction: the only place that knows how a value is escaped for qemu.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// A value for a qemu option list, with its commas doubled: `a,b` → `a,,b`.
pub fn escape_opt_value(v: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(v.len());
    for &b in v.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// A qemu option list under construction: `word,key=value,…` with values escaped.
#[derive(Debug, Default)]
pub(super) struct Opts(OsString);

impl Opts {
    pub(super) fn new() -> Self {
        Opts::default()
    }

    /// A list starting with a word of ours (a driver or backend name), not escaped.
    pub(super) fn word(w: &str) -> Self {
        Opts(OsString::from(w))
    }

    pub(super) fn sep(&mut self) {
        if !self.0.is_empty() {
            self.0.push(",");
        }
    }

    pub(super) fn kv(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.sep();
        self.0.push(key);
        self.0.push("=");
        self.0.push(escape_opt_value(value.as_ref()));
        self
    }

    /// Options of ours, already in qemu's syntax.
    pub(super) fn raw(mut self, s: &str) -> Self {
        self.sep();
        self.0.push(s);
        self
    }
}

impl AsRef<OsStr> for Opts {
    fn as_ref(&self) -> &OsStr {
        &self.0
    }
}

#[derive(Debug, Default)]
pub(super) struct Args(pub(super) Vec<OsString>);

impl Args {
    pub(super) fn push(&mut self, s: impl AsRef<OsStr>) {
        self.0.push(s.as_ref().to_os_string());
    }

    pub(super) fn pair(&mut self, opt: &str, value: impl AsRef<OsStr>) {
        self.push(opt);
        self.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape_opt_value(OsStr::new("a,b,,c")), "a,,b,,,,c");
        assert_eq!(escape_opt_value(OsStr::new("plain")), "plain");
        let bytes = OsStr::from_bytes(b"\xff,x");
        assert_eq!(escape_opt_value(bytes).as_bytes(), b"\xff,,x");
    }
}
