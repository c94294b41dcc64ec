//! `vmk set KEY VALUE`: change one key of ./vm-config. The value is checked first, then only
//! the bytes of that value change (or one `KEY=value` line is appended), and the file is
//! replaced atomically (temporary file + rename) keeping its mode and owner.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{self, ConfigError, LoadOptions, RawConfig, VM_FILE_NAME};
use vmk_common::usage;

/// Options of `set`.
#[derive(clap::Args, Debug, Clone)]
pub struct SetArgs {
    /// The key, e.g. VMK_MEM (the VMK_ prefix may be left out: `vmk set mem 2G`)
    pub key: String,
    /// The new value; an empty value means "use the default"
    #[arg(allow_hyphen_values = true)]
    pub value: String,
}

/// The key as written to the file: `mem` and `MEM` are `VMK_MEM` when that is a known key.
pub fn normalize_key(key: &str) -> String {
    if key.starts_with("VMK_") {
        return key.to_string();
    }
    let upper = format!("VMK_{}", key.to_ascii_uppercase());
    if config::key(&upper).is_some() {
        upper
    } else {
        key.to_string()
    }
}

fn is_shell_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The config file with `key` set to `value`: checks the value, edits the raw bytes.
pub fn edit(bytes: &[u8], display: &str, key: &str, value: &str) -> Result<Vec<u8>> {
    if !is_shell_name(key) {
        return Err(usage!(
            "{key:?} is not a key name (letters, digits and _, e.g. VMK_MEM)"
        ));
    }
    if !key.starts_with("VMK_") {
        // `vmk set memm 1` is a typo, not a new variable of the user's own
        let as_vmk = format!("VMK_{}", key.to_ascii_uppercase());
        if let Some(close) = config::closest_key(&as_vmk) {
            return Err(usage!("unknown key {key} (did you mean {close}?)"));
        }
    }
    config::validate_value(key, value).map_err(|e| e.with_origin(&config::Origin::CommandLine))?;
    let raw = RawConfig::parse(bytes, display)?;
    let out = raw.set(key, value);
    // The result must read back as exactly this value.
    let check = RawConfig::parse(&out, display).map_err(|e| {
        ConfigError::new(format!(
            "internal error: the edited file does not parse: {e}"
        ))
    })?;
    let back = check.last(key).and_then(|(_, a)| a.literal());
    if back.as_deref() != Some(value) {
        anyhow::bail!("internal error: {key} would read back as {back:?}, not {value:?}");
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it with the same mode (and
/// owner, as root), synced, then renamed over it. A symlinked config is written through.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e).with_context(|| format!("resolving {}", path.display())),
    };
    let meta = fs::metadata(&target).ok();
    let mode = meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(target.file_name().unwrap_or_default());
    tmp_name.push(format!(".vmk-tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &meta {
            if vmk_common::host::is_root() {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", target.display()))
}

/// Runs `set`.
pub fn run(global: &GlobalOpts, a: &SetArgs) -> Result<ExitCode> {
    let key = normalize_key(&a.key);
    let path = global
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(VM_FILE_NAME));
    let display = path.display().to_string();
    // through the config reader: bounded, and a FIFO or device there is refused, not read
    let bytes = match vmk_common::config::files::read_config(&path, &display)? {
        Some(b) => b,
        None => {
            vmk_common::errln!("vmk-clone: {display} does not exist: creating it");
            Vec::new()
        }
    };
    let old = RawConfig::parse(&bytes, &display)
        .ok()
        .and_then(|r| r.last(&key).and_then(|(_, a)| a.literal()));
    let out = edit(&bytes, &display, &key, &a.value)?;
    warn_about_whole_config(&path, &key, &a.value);
    if global.dry_run {
        vmk_common::outln!("set {key}={} in {display}", a.value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if out != bytes {
        write_atomic(&path, &out)?;
    }
    match old {
        Some(old) => vmk_common::errln!("{display}: {key}={} (was {old})", a.value),
        None => vmk_common::errln!("{display}: {key}={}", a.value),
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the whole config with the new value (rules across keys, such as ports that would
/// overflow) and warns: the edit itself is still made, so a broken config can be repaired
/// one key at a time.
fn warn_about_whole_config(path: &Path, key: &str, value: &str) {
    if !path.exists() || !key.starts_with("VMK_") {
        return;
    }
    let loaded = config::load(&LoadOptions {
        config_file: Some(path.to_path_buf()),
        overrides: vec![(key.to_string(), value.to_string())],
        ..LoadOptions::new()
    })
    .and_then(|cfg| cfg.validate());
    if let Err(e) = loaded {
        log::warn!("with {key}={value} the config still has a problem: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ODD: &str = "#!/bin/sh\n# my test VM\n  VMK_NAME=\"old name\"   # keep this comment\n\
        export VMK_MEM='1024'\n\n\tVMK_VNC=3\n# VMK_MEM=9\nOTHER=${VMK_VNC}x\nVMK_MEM=2G  # last one counts\nVMK_TAG=\"a \\\"quoted\\\" tag\"";

    fn diff_outside(before: &str, after: &str) -> (String, String) {
        let prefix = before
            .bytes()
            .zip(after.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let suffix = before[prefix..]
            .bytes()
            .rev()
            .zip(after[prefix..].bytes().rev())
            .take_while(|(a, b)| a == b)
            .count();
        (
            before[prefix..before.len() - suffix].to_string(),
            after[prefix..after.len() - suffix].to_string(),
        )
    }

    #[test]
    fn only_that_value_changes() {
        let out = edit(ODD.as_bytes(), "vm-config", "VMK_MEM", "4096").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(diff_outside(ODD, &out), ("2G".into(), "4096".into()));
        let out = String::from_utf8(edit(ODD.as_bytes(), "c", "VMK_NAME", "new").unwrap()).unwrap();
        assert_eq!(
            out,
            ODD.replace("VMK_NAME=\"old name\"", "VMK_NAME=\"new\"")
        );
        let out =
            String::from_utf8(edit(ODD.as_bytes(), "c", "VMK_TAG", "it's $x").unwrap()).unwrap();
        let raw = RawConfig::parse(out.as_bytes(), "c").unwrap();
        assert_eq!(raw.last("VMK_TAG").unwrap().1.literal().unwrap(), "it's $x");
        // a key that is not there yet is appended after a newline
        let out = String::from_utf8(edit(ODD.as_bytes(), "c", "VMK_CPU", "4").unwrap()).unwrap();
        assert_eq!(out, format!("{ODD}\nVMK_CPU=4\n"));
    }

    #[test]
    fn bad_values_and_keys_are_refused() {
        let e = edit(ODD.as_bytes(), "c", "VMK_MEM", "lots").unwrap_err();
        assert!(e.to_string().contains("memory size"), "{e}");
        assert_eq!(vmk_common::cli::exit_status_of(&e), 2);
        let e = edit(ODD.as_bytes(), "c", "VMK_MEMM", "1").unwrap_err();
        assert!(e.to_string().contains("did you mean VMK_MEM"), "{e}");
        assert_eq!(vmk_common::cli::exit_status_of(&e), 2);
        let e = edit(ODD.as_bytes(), "c", "a-b", "1").unwrap_err();
        assert_eq!(vmk_common::cli::exit_status_of(&e), 2);
        let e = edit(ODD.as_bytes(), "c", "memm", "1").unwrap_err();
        assert!(e.to_string().contains("did you mean VMK_MEM"), "{e}");
        edit(ODD.as_bytes(), "c", "MY_OWN_THING", "1").unwrap();
        assert_eq!(normalize_key("mem"), "VMK_MEM");
        assert_eq!(normalize_key("disk0_format"), "VMK_DISK0_FORMAT");
        assert_eq!(normalize_key("OTHER"), "OTHER");
    }

    #[test]
    fn atomic_write_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm-config");
        fs::write(&p, "VMK_MEM=1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"VMK_MEM=2\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"VMK_MEM=2\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
