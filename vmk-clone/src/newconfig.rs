//! `vmk newconfig`: a commented minimal vm-config on stdout, generated from the key table so
//! that it always lists every key with its default and help.

use std::process::ExitCode;

use anyhow::Result;
use vmk_common::config::{keys, raw::quote, Quoting};
use vmk_common::outln;

/// Options of `newconfig`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NewconfigArgs {
    /// VMK_NAME of the new VM (default: left out, so the directory's name is used)
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// VMK_DISK0 of the new VM
    #[arg(long, default_value = "disk0.qcow2")]
    pub disk0: String,
}

/// The keys that are set (not commented out) in a new config, with their values.
fn active(a: &NewconfigArgs) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(n) = &a.name {
        v.push(("VMK_NAME", n.clone()));
    }
    v.push(("VMK_VNC", "1".into()));
    v.push(("VMK_MEM", "1024".into()));
    v.push(("VMK_CPU", "2".into()));
    v.push(("VMK_DISK0", a.disk0.clone()));
    v
}

/// The text of a new config.
pub fn render(a: &NewconfigArgs) -> Result<String> {
    let active = active(a);
    for (key, value) in &active {
        vmk_common::config::validate_value(key, value)?;
    }
    let mut out = String::from(
        "#!/bin/sh\n\
         # vm-config: the settings of the VM in this directory.\n\
         # vmk reads this file as KEY=value lines (quote values that hold spaces); it never\n\
         # runs it. Commented-out keys keep the default shown. Change one key with\n\
         # `vmk set KEY VALUE`; ~/.vmkrc, ./vmkrc and VMK_* environment variables also count.\n",
    );
    for spec in keys() {
        out.push('\n');
        out.push_str(&format!("# {}\n", spec.help));
        match active.iter().find(|(k, _)| *k == spec.name) {
            Some((_, value)) => {
                out.push_str(&format!("{}={}\n", spec.name, quote(value, Quoting::Bare)))
            }
            None => out.push_str(&format!(
                "#{}={}\n",
                spec.name,
                quote(spec.default, Quoting::Bare)
            )),
        }
    }
    Ok(out)
}

/// Runs `newconfig`.
pub fn run(a: &NewconfigArgs) -> Result<ExitCode> {
    let text = render(a)?;
    outln!("{}", text.trim_end())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmk_common::config::{self, LoadOptions, RawConfig};

    #[test]
    fn new_config_parses_and_loads_with_its_values() {
        let a = NewconfigArgs {
            name: Some("test-vm".into()),
            disk0: "disk0.qcow2".into(),
        };
        let text = render(&a).unwrap();
        let raw = RawConfig::parse(text.as_bytes(), "vm-config").unwrap();
        let set: Vec<&str> = raw.assignments().map(|(_, a)| a.key.as_str()).collect();
        assert_eq!(
            set,
            ["VMK_NAME", "VMK_VNC", "VMK_MEM", "VMK_CPU", "VMK_DISK0"]
        );
        for spec in config::keys() {
            assert!(text.contains(spec.name), "{} missing", spec.name);
            assert!(text.contains(spec.help), "help of {} missing", spec.name);
        }
        // every commented line, uncommented, is valid too
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("#VMK_")
                    .map_or(l.to_string(), |r| format!("VMK_{r}"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        RawConfig::parse(uncommented.as_bytes(), "all").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm-config"), &text).unwrap();
        let cfg = config::load(&LoadOptions {
            dir: Some(dir.path().to_path_buf()),
            system_file: Some(dir.path().join("none")),
            user_file: Some(dir.path().join("none")),
            env: false,
            ..LoadOptions::new()
        })
        .unwrap();
        assert_eq!(cfg.name.as_deref(), Some("test-vm"));
        assert_eq!(cfg.disk0_path, Some(dir.path().join("disk0.qcow2")));
    }

    #[test]
    fn bad_name_is_refused() {
        let a = NewconfigArgs {
            name: Some("a,b".into()),
            disk0: "d".into(),
        };
        assert!(render(&a).is_err());
    }
}
