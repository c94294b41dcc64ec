//! The first stage of reading a config: bytes → [`RawConfig`], every line kept verbatim.
//!
//! Config files look like shell (`VMK_MEM="4096"`, `export VMK_VNC=3`, `# comments`), because
//! existing configs do, but they are never run by a shell. This parser understands exactly the
//! shell that assignments need and refuses the rest:
//!
//! - values may be bare, `'single quoted'` (nothing expands, everything is literal) or
//!   `"double quoted"` (`\"`, `\\`, `\$` and `` \` `` escape; `${NAME}` and `$NAME` expand),
//!   and pieces may be joined (`a'b c'"d"`); a backslash outside quotes takes the next
//!   character literally;
//! - `$(…)`, `$((…))` and backticks are errors ("command substitution is not supported: vmk
//!   never runs a shell"), and so are unquoted `;`, `|`, `&`, `<`, `>`, `(`, `)`: they would
//!   mean a command to a shell. Quoted, they are ordinary text;
//! - `${NAME}`/`$NAME`, and the shell's defaults `${NAME:-word}` (word when NAME is unset
//!   or empty) and `${NAME-word}` (when unset) with a literal word; other parameter
//!   operators are errors;
//! - a `#` after whitespace starts a comment; text after a value that is not a comment is an
//!   error (a shell would run it as a command).
//!
//! Because each line keeps its byte span and each assignment the span of its value,
//! [`RawConfig::set`] can change one value and leave every other byte as it was.

use std::ops::Range;

use super::ConfigError;

/// A parsed config file: its bytes and what each line is.
#[derive(Debug, Clone)]
pub struct RawConfig {
    path: String,
    bytes: Vec<u8>,
    lines: Vec<RawLine>,
}

/// One line (or several, for a quoted value that spans lines) of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// Line number (from 1) where it starts.
    pub number: usize,
    /// Bytes of the file it covers, with its newline.
    pub span: Range<usize>,
    /// What it is.
    pub kind: LineKind,
}

/// What a line of a config file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// Empty or only whitespace.
    Blank,
    /// A `# comment`.
    Comment,
    /// `#!/bin/sh` (or any `#!` on the first line).
    Shebang,
    /// `KEY=value`, maybe with `export ` and a trailing comment.
    Assignment(Assignment),
}

/// `KEY=value` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Whether it started with `export `.
    pub export: bool,
    /// The key.
    pub key: String,
    /// The value, split into literal text and `${NAME}` references (not yet expanded).
    pub value: Vec<Piece>,
    /// Bytes of the file that hold the value, quotes included.
    pub value_span: Range<usize>,
    /// How the value was quoted.
    pub quoting: Quoting,
}

/// Part of a value: literal text or a reference to an earlier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// `${NAME}` or `$NAME`.
    Var(String),
    /// `${NAME:-word}` (`if_empty`: the word also when NAME is empty) or `${NAME-word}` (only
    /// when NAME is unset): the shell's defaults, as users of a sourced config wrote them.
    /// The word is literal text.
    Default {
        /// The referenced name.
        name: String,
        /// The text used instead.
        word: String,
        /// `:-` rather than `-`.
        if_empty: bool,
    },
}

/// Why [`Assignment::expand_within`] gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unexpanded {
    /// This reference is not known.
    Unset(String),
    /// The value would be longer than the limit.
    TooLong,
}

/// How a value was quoted: kept so that `vmk set` writes the new value the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Not quoted (or empty).
    Bare,
    /// Entirely in single quotes.
    Single,
    /// Entirely in double quotes.
    Double,
    /// A mix of quoted and unquoted pieces.
    Mixed,
}

impl Assignment {
    /// The value with references looked up by `lookup`; `Err(name)` names the first one
    /// that `lookup` does not know.
    pub fn expand(&self, lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
        self.expand_within(usize::MAX, lookup).map_err(|e| match e {
            Unexpanded::Unset(name) => name,
            Unexpanded::TooLong => unreachable!("no limit"),
        })
    }

    /// The value with references looked up by `lookup`, stopping as soon as it would grow
    /// past `limit` bytes (so a value that references itself twice, line after line, costs
    /// at most `limit`).
    pub fn expand_within(
        &self,
        limit: usize,
        mut lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<String, Unexpanded> {
        let mut out = String::new();
        for piece in &self.value {
            let add = match piece {
                Piece::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
                Piece::Var(name) => lookup(name)
                    .ok_or_else(|| Unexpanded::Unset(name.clone()))?
                    .into(),
                Piece::Default {
                    name,
                    word,
                    if_empty,
                } => match lookup(name) {
                    Some(v) if !(*if_empty && v.is_empty()) => v.into(),
                    _ => std::borrow::Cow::Borrowed(word.as_str()),
                },
            };
            if out.len().saturating_add(add.len()) > limit {
                return Err(Unexpanded::TooLong);
            }
            out.push_str(&add);
        }
        Ok(out)
    }

    /// The value when it holds no references.
    pub fn literal(&self) -> Option<String> {
        self.expand(|_| None).ok()
    }
}

impl RawConfig {
    /// Parses the bytes of a config file; `path` is how messages name the file.
    ///
    /// A file larger than [`MAX_FILE_BYTES`](super::files::MAX_FILE_BYTES) is refused. A
    /// leading UTF-8 byte order mark (which some editors write) is skipped: it stays in the
    /// bytes, as part of the first line, so [`RawConfig::set`] keeps it.
    pub fn parse(bytes: &[u8], path: &str) -> Result<RawConfig, ConfigError> {
        super::files::check_file_size(bytes.len(), path)?;
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            ConfigError::at(path, line, "this line is not valid UTF-8")
        })?;
        let start = if text.starts_with(BOM) { BOM.len() } else { 0 };
        let mut lines = Parser {
            text,
            path,
            pos: start,
            start,
            line: 1,
        }
        .lines()?;
        if let Some(first) = lines.first_mut() {
            first.span.start = 0;
        }
        Ok(RawConfig {
            path: path.to_string(),
            bytes: bytes.to_vec(),
            lines,
        })
    }

    /// Reads and parses a config from any reader, reading at most one byte more than a
    /// config may have.
    pub fn read(reader: impl std::io::Read, path: &str) -> Result<RawConfig, ConfigError> {
        let bytes = super::files::read_bounded(reader, path)?;
        RawConfig::parse(&bytes, path)
    }

    /// How messages name this file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The bytes as read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Every line, in order.
    pub fn lines(&self) -> &[RawLine] {
        &self.lines
    }

    /// The assignments with their line numbers, in order.
    pub fn assignments(&self) -> impl Iterator<Item = (usize, &Assignment)> {
        self.lines.iter().filter_map(|l| match &l.kind {
            LineKind::Assignment(a) => Some((l.number, a)),
            _ => None,
        })
    }

    /// The last assignment of `key`, which is the one that counts.
    pub fn last(&self, key: &str) -> Option<(usize, &Assignment)> {
        self.assignments().filter(|(_, a)| a.key == key).last()
    }

    /// The file with `key` set to `value`: the last assignment of `key` gets the new value,
    /// quoted as before where possible, or `KEY=value` is appended. Every other byte stays.
    pub fn set(&self, key: &str, value: &str) -> Vec<u8> {
        if let Some((_, a)) = self.last(key) {
            let mut out = self.bytes[..a.value_span.start].to_vec();
            out.extend_from_slice(quote(value, a.quoting).as_bytes());
            let rest = &self.bytes[a.value_span.end..];
            if rest.starts_with(b"#") && !value.is_empty() {
                // `KEY=#comment`: the comment was glued to an empty value; keep it a comment
                out.push(b' ');
            }
            out.extend_from_slice(rest);
            return out;
        }
        let mut out = self.bytes.clone();
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(format!("{key}={}\n", quote(value, Quoting::Bare)).as_bytes());
        out
    }
}

/// `value` written so that this parser (and a shell) reads it back unchanged, in the style
/// `like` when that can hold it.
pub fn quote(value: &str, like: Quoting) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:,+=@%-".contains(c);
    match like {
        Quoting::Double => {
            let mut s = String::from("\"");
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
            s
        }
        Quoting::Bare | Quoting::Mixed if value.chars().all(safe) => value.to_string(),
        _ => format!("'{}'", value.replace('\'', r"'\''")),
    }
}

/// The UTF-8 byte order mark.
const BOM: &str = "\u{feff}";

struct Parser<'a> {
    text: &'a str,
    path: &'a str,
    pos: usize,
    /// Where the text starts (after a byte order mark).
    start: usize,
    line: usize,
}

const CMD_SUBST: &str = "command substitution is not supported: vmk never runs a shell";

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }

    fn skip_to_eol(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn err(&self, line: usize, key: Option<&str>, msg: impl Into<String>) -> ConfigError {
        let e = ConfigError::at(self.path, line, msg);
        match key {
            Some(k) => e.with_key(k),
            None => e,
        }
    }

    fn lines(mut self) -> Result<Vec<RawLine>, ConfigError> {
        let mut lines = Vec::new();
        while self.pos < self.text.len() {
            let (start, number) = (self.pos, self.line);
            let kind = self.line_kind()?;
            lines.push(RawLine {
                number,
                span: start..self.pos,
                kind,
            });
        }
        Ok(lines)
    }

    fn line_kind(&mut self) -> Result<LineKind, ConfigError> {
        let number = self.line;
        let at_column0 = self.pos == self.start;
        self.skip_blanks();
        match self.peek() {
            None | Some('\n') => {
                self.bump();
                return Ok(LineKind::Blank);
            }
            Some('#') => {
                let shebang = at_column0 && self.text[self.pos..].starts_with("#!");
                self.skip_to_eol();
                return Ok(if shebang {
                    LineKind::Shebang
                } else {
                    LineKind::Comment
                });
            }
            _ => {}
        }
        let mut export = false;
        let mut key = self.name();
        if key == "export" && matches!(self.peek(), Some(' ' | '\t')) {
            export = true;
            self.skip_blanks();
            key = self.name();
        }
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || self.peek() != Some('=')
        {
            return Err(self.not_an_assignment(number, export, &key));
        }
        self.bump(); // '='
        let value_start = self.pos;
        let (value, quoting) = self.value(&key)?;
        let value_span = value_start..self.pos;
        self.skip_blanks();
        match self.peek() {
            None | Some('\n') => {
                self.bump();
            }
            Some('#') => self.skip_to_eol(),
            Some(_) => {
                return Err(self.err(
                    self.line,
                    Some(&key),
                    "unexpected text after the value: quote values that contain spaces",
                ))
            }
        }
        Ok(LineKind::Assignment(Assignment {
            export,
            key,
            value,
            value_span,
            quoting,
        }))
    }

    /// The error for a line that is not an assignment. It quotes only the name-like start
    /// of the line and the character after it: enough to recognise the line, and never the
    /// rest of a file that is no config at all (`-c /etc/shadow` shows `root:`).
    fn not_an_assignment(&self, number: usize, export: bool, key: &str) -> ConfigError {
        let next = self.peek();
        let mut start = String::new();
        if export {
            start.push_str("export ");
        }
        start.push_str(key);
        start.extend(next);
        let shown = crate::text::excerpt_of(&start, 40);
        let hint = match next {
            _ if key.starts_with(|c: char| c.is_ascii_digit()) => {
                ": a name cannot start with a digit"
            }
            Some(' ' | '\t')
                if !key.is_empty() && {
                    let rest = self.text[self.pos..].trim_start_matches([' ', '\t']);
                    rest.starts_with('=')
                } =>
            {
                ": no spaces around = in an assignment"
            }
            _ if number == 1 => ": is this a vmk config file?",
            _ => "",
        };
        self.err(
            number,
            None,
            format!(
                "expected an assignment like VMK_MEM=2048 or a # comment, but the line starts with \"{shown}\"{hint}"
            ),
        )
    }

    /// The literal word of `${NAME:-word}` up to its `}` (consumed): no quotes, references,
    /// backslashes or line ends inside, which a shell would interpret.
    fn default_word(&mut self, line: usize, key: &str) -> Result<String, ConfigError> {
        let mut word = String::new();
        loop {
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return Ok(word);
                }
                Some(c) if !matches!(c, '$' | '`' | '\\' | '"' | '\'' | '{' | '\n') => {
                    word.push(c);
                    self.bump();
                }
                _ => {
                    return Err(self.err(
                        line,
                        Some(key),
                        "the word of ${NAME:-word} must be plain text up to its `}` (no quotes, $, `, \\ or {)",
                    ))
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
            self.bump();
        }
        self.text[start..self.pos].to_string()
    }

    /// Reads one shell word; stops at unquoted whitespace or the end of the line.
    fn value(&mut self, key: &str) -> Result<(Vec<Piece>, Quoting), ConfigError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let (mut bare, mut single, mut double) = (false, false, false);
        // as in a shell, `KEY=#x` is an empty value and a comment
        if self.peek() == Some('#') {
            return Ok((pieces, Quoting::Bare));
        }
        loop {
            let line = self.line;
            match self.peek() {
                None | Some(' ' | '\t' | '\r' | '\n') => break,
                Some('\'') => {
                    single = true;
                    self.bump();
                    loop {
                        match self.bump() {
                            None => {
                                return Err(self.err(line, Some(key), "unterminated single quote"))
                            }
                            Some('\'') => break,
                            Some(c) => text.push(c),
                        }
                    }
                }
                Some('"') => {
                    double = true;
                    self.bump();
                    loop {
                        let here = self.line;
                        match self.peek() {
                            None => {
                                return Err(self.err(line, Some(key), "unterminated double quote"))
                            }
                            Some('"') => {
                                self.bump();
                                break;
                            }
                            Some('\\') => {
                                self.bump();
                                match self.bump() {
                                    Some('\n') => {}
                                    Some(c @ ('"' | '\\' | '$' | '`')) => text.push(c),
                                    Some(c) => {
                                        text.push('\\');
                                        text.push(c);
                                    }
                                    None => {
                                        return Err(self.err(
                                            line,
                                            Some(key),
                                            "unterminated double quote",
                                        ))
                                    }
                                }
                            }
                            Some('`') => return Err(self.err(here, Some(key), CMD_SUBST)),
                            Some('$') => self.dollar(key, &mut text, &mut pieces)?,
                            Some(_) => text.push(self.bump().unwrap_or_default()),
                        }
                    }
                }
                Some(c) => {
                    bare = true;
                    match c {
                        '\\' => {
                            self.bump();
                            match self.bump() {
                                Some('\n') | None => {}
                                Some(c) => text.push(c),
                            }
                        }
                        '`' => return Err(self.err(line, Some(key), CMD_SUBST)),
                        '$' => self.dollar(key, &mut text, &mut pieces)?,
                        ';' | '|' | '&' | '<' | '>' | '(' | ')' => {
                            return Err(self.err(
                                line,
                                Some(key),
                                format!(
                                    "`{c}` is not supported: vmk never runs a shell (quote the value if `{c}` is meant as text)"
                                ),
                            ))
                        }
                        _ => text.push(self.bump().unwrap_or_default()),
                    }
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let quoting = match (bare, single, double) {
            (_, false, false) => Quoting::Bare,
            (false, true, false) => Quoting::Single,
            (false, false, true) => Quoting::Double,
            _ => Quoting::Mixed,
        };
        Ok((pieces, quoting))
    }

    /// At a `$`: a reference, a command substitution (error) or a literal `$`.
    fn dollar(
        &mut self,
        key: &str,
        text: &mut String,
        pieces: &mut Vec<Piece>,
    ) -> Result<(), ConfigError> {
        let line = self.line;
        self.bump();
        let name = match self.peek() {
            Some('(') => return Err(self.err(line, Some(key), CMD_SUBST)),
            Some('{') => {
                self.bump();
                let name = self.name();
                let valid = !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit());
                let default = match self.peek() {
                    Some(':') if valid && self.text[self.pos..].starts_with(":-") => {
                        self.bump();
                        self.bump();
                        Some(true)
                    }
                    Some('-') if valid => {
                        self.bump();
                        Some(false)
                    }
                    _ => None,
                };
                if let Some(if_empty) = default {
                    let word = self.default_word(line, key)?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(text)));
                    }
                    pieces.push(Piece::Default {
                        name,
                        word,
                        if_empty,
                    });
                    return Ok(());
                }
                if self.peek() != Some('}') || !valid {
                    return Err(self.err(
                        line,
                        Some(key),
                        "only ${NAME}, $NAME, ${NAME:-word} and ${NAME-word} references are supported (no other operators)",
                    ));
                }
                self.bump();
                name
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => self.name(),
            _ => {
                text.push('$');
                return Ok(());
            }
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(text)));
        }
        pieces.push(Piece::Var(name));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RawConfig {
        RawConfig::parse(s.as_bytes(), "vm-config").unwrap()
    }

    fn value(s: &str) -> String {
        let raw = parse(s);
        let (_, a) = raw.assignments().last().unwrap();
        a.literal().unwrap()
    }

    fn error(s: &str) -> String {
        RawConfig::parse(s.as_bytes(), "vm-config")
            .unwrap_err()
            .to_string()
    }

    const ORIGINAL_STYLE: &str = "#!/bin/sh\n\
        # config of my sles test VM\n\
        \n\
        VMK_MEM=\"4096\"\n\
        VMK_DISK0='sles15.qcow2'   # the image\n\
        export VMK_VNC=3\n\
        \t  \n\
        VMK_APPEND=\"console=ttyS0 \\\"quoted\\\" \\$HOME\" # kernel args\n\
        VMK_TAG=a#b\n\
        VMK_ISO=\n";

    #[test]
    fn original_style_config() {
        let raw = parse(ORIGINAL_STYLE);
        let kinds: Vec<&str> = raw
            .lines()
            .iter()
            .map(|l| match &l.kind {
                LineKind::Blank => "blank",
                LineKind::Comment => "comment",
                LineKind::Shebang => "shebang",
                LineKind::Assignment(_) => "assign",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "shebang", "comment", "blank", "assign", "assign", "assign", "blank", "assign",
                "assign", "assign"
            ]
        );
        let got: Vec<(usize, String, String, bool)> = raw
            .assignments()
            .map(|(n, a)| (n, a.key.clone(), a.literal().unwrap(), a.export))
            .collect();
        assert_eq!(
            got,
            [
                (4, "VMK_MEM".into(), "4096".into(), false),
                (5, "VMK_DISK0".into(), "sles15.qcow2".into(), false),
                (6, "VMK_VNC".into(), "3".into(), true),
                (
                    8,
                    "VMK_APPEND".into(),
                    "console=ttyS0 \"quoted\" $HOME".into(),
                    false
                ),
                (9, "VMK_TAG".into(), "a#b".into(), false),
                (10, "VMK_ISO".into(), "".into(), false),
            ]
        );
        let spans: usize = raw.lines().iter().map(|l| l.span.len()).sum();
        assert_eq!(spans, ORIGINAL_STYLE.len());
    }

    #[test]
    fn quoting_rules() {
        assert_eq!(
            value("A='$(touch /x); `id` | & ${B}'"),
            "$(touch /x); `id` | & ${B}"
        );
        assert_eq!(value("A=\"a;b|c&d(e)<f>\""), "a;b|c&d(e)<f>");
        assert_eq!(value("A=a'b c'\"d\"e"), "ab cde");
        assert_eq!(value("A=a\\ b"), "a b");
        assert_eq!(value("A=\"it's\""), "it's");
        assert_eq!(value("A='it'\\''s'"), "it's");
        assert_eq!(value("A=\"a\\nb\""), "a\\nb");
        assert_eq!(value("A=cost$"), "cost$");
        assert_eq!(value("A=\"$ 1\""), "$ 1");
        assert_eq!(value("A='multi\nline'"), "multi\nline");
        assert_eq!(value("A=x\r\n"), "x");
    }

    #[test]
    fn references_are_pieces() {
        let raw = parse("A=\"${VMK_NAME}-x\"$B/c\n");
        let (_, a) = raw.assignments().next().unwrap();
        assert_eq!(
            a.value,
            [
                Piece::Var("VMK_NAME".into()),
                Piece::Text("-x".into()),
                Piece::Var("B".into()),
                Piece::Text("/c".into())
            ]
        );
        assert_eq!(
            a.expand(|n| Some(n.to_lowercase())).unwrap(),
            "vmk_name-xb/c"
        );
        assert_eq!(a.expand(|_| None).unwrap_err(), "VMK_NAME");
    }

    #[test]
    fn shell_is_refused_with_file_and_line() {
        let cases = [
            (
                "VMK_NAME=$(touch /tmp/x)",
                "vm-config:3: VMK_NAME: command substitution is not supported",
            ),
            (
                "VMK_NAME=\"a$(id)\"",
                "vm-config:3: VMK_NAME: command substitution",
            ),
            (
                "VMK_NAME=`id`",
                "vm-config:3: VMK_NAME: command substitution",
            ),
            (
                "VMK_NAME=\"`id`\"",
                "vm-config:3: VMK_NAME: command substitution",
            ),
            (
                "VMK_NAME=$((1+2))",
                "vm-config:3: VMK_NAME: command substitution",
            ),
            (
                "VMK_NAME=a;rm -rf /",
                "vm-config:3: VMK_NAME: `;` is not supported",
            ),
            (
                "VMK_NAME=a|cat",
                "vm-config:3: VMK_NAME: `|` is not supported",
            ),
            ("VMK_NAME=a&", "vm-config:3: VMK_NAME: `&` is not supported"),
            (
                "VMK_NAME=a>/etc/passwd",
                "vm-config:3: VMK_NAME: `>` is not supported",
            ),
            (
                "VMK_NAME=a rm -rf /",
                "vm-config:3: VMK_NAME: unexpected text after the value",
            ),
            ("VMK_NAME=${X:=y}", "vm-config:3: VMK_NAME: only ${NAME}"),
            (
                "VMK_NAME=${X:-$(id)}",
                "vm-config:3: VMK_NAME: the word of ${NAME:-word}",
            ),
            (
                "VMK_NAME='open",
                "vm-config:3: VMK_NAME: unterminated single quote",
            ),
            (
                "VMK_NAME=\"open",
                "vm-config:3: VMK_NAME: unterminated double quote",
            ),
            (
                "rm -rf /",
                "vm-config:3: expected an assignment like VMK_MEM=2048",
            ),
            ("VMK_MEM =1", "vm-config:3: expected an assignment"),
            ("if true; then", "vm-config:3: expected an assignment"),
            ("1A=x", "vm-config:3: expected an assignment"),
        ];
        for (line, want) in cases {
            let err = error(&format!("#!/bin/sh\n# c\n{line}\nVMK_MEM=1\n"));
            assert!(err.starts_with(want), "{line}: {err}");
        }
        assert!(RawConfig::parse(b"A=1\n\xff\n", "vm-config")
            .unwrap_err()
            .to_string()
            .starts_with("vm-config:2: "));
    }

    #[test]
    fn set_keeps_every_other_byte() {
        let raw = parse(ORIGINAL_STYLE);
        let out = String::from_utf8(raw.set("VMK_MEM", "8G")).unwrap();
        assert_eq!(
            out,
            ORIGINAL_STYLE.replace("VMK_MEM=\"4096\"", "VMK_MEM=\"8G\"")
        );
        let out = String::from_utf8(raw.set("VMK_DISK0", "it's a,b.qcow2")).unwrap();
        assert_eq!(
            out,
            ORIGINAL_STYLE.replace("'sles15.qcow2'", r"'it'\''s a,b.qcow2'")
        );
        let out = String::from_utf8(raw.set("VMK_VNC", "$(id) x")).unwrap();
        assert_eq!(
            out,
            ORIGINAL_STYLE.replace("VMK_VNC=3", "VMK_VNC='$(id) x'")
        );
        let out = String::from_utf8(raw.set("VMK_ISO", "a.iso")).unwrap();
        assert_eq!(out, ORIGINAL_STYLE.replace("VMK_ISO=\n", "VMK_ISO=a.iso\n"));
        let out = String::from_utf8(raw.set("VMK_CPU", "4")).unwrap();
        assert_eq!(out, format!("{ORIGINAL_STYLE}VMK_CPU=4\n"));
        let out = String::from_utf8(parse("A=1").set("B", "")).unwrap();
        assert_eq!(out, "A=1\nB=\n");
        // the last assignment is the one that counts, and the one that changes
        let out = String::from_utf8(parse("A=1\nA=2 # two\n").set("A", "3")).unwrap();
        assert_eq!(out, "A=1\nA=3 # two\n");
    }

    #[test]
    fn set_values_read_back_unchanged() {
        let nasty = [
            "plain",
            "",
            "a b",
            "it's",
            "say \"hi\"",
            "$(id)",
            "`id`",
            "${VMK_X}",
            "back\\slash",
            "a;b",
            "tab\tx",
            "new\nline",
            "#hash",
        ];
        for style in ["A=x\n", "A='x'\n", "A=\"x\"\n", "A=x'y'\n"] {
            for v in nasty {
                let out = parse(style).set("A", v);
                let back = RawConfig::parse(&out, "t").unwrap();
                assert_eq!(
                    back.last("A").unwrap().1.literal().unwrap(),
                    v,
                    "{style:?} {v:?}"
                );
            }
        }
    }
}
