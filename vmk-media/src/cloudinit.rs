//! cloud-init NoCloud seeds: a small ISO labelled `cidata` with `user-data` and
//! `meta-data`, so that a distribution's cloud image boots with the VM's ssh key for root
//! and its hostname, ready for `vmk ssh`, with no image surgery.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use vmk_common::config::VmConfig;
use vmk_common::layout::PUBLIC_KEY_FILE;

use crate::iso9660::IsoBuilder;

/// The volume label cloud-init's NoCloud data source looks for.
pub const SEED_LABEL: &str = "cidata";
/// The seed's file name in the VM directory (what VMK_CLOUD_INIT attaches).
pub const SEED_FILE: &str = "seed.iso";

/// The guest hostname for a VM: VMK_HOSTNAME, else VMK_NAME or the directory's name made
/// into a valid host name.
pub fn hostname_for(cfg: &VmConfig) -> String {
    if let Some(h) = &cfg.hostname {
        return h.clone();
    }
    let clean: String = cfg
        .display_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let clean: String = clean.trim_matches('-').chars().take(63).collect();
    if clean.is_empty() {
        "vmk".to_string()
    } else {
        clean.trim_end_matches('-').to_string()
    }
}

/// The seed for a VM: its hostname, `vmk-<hostname>` as instance id, and the keys in
/// `vm-key.pub` (a missing key file is an error that says how to make one).
pub fn seed_for(cfg: &VmConfig) -> Result<Seed> {
    let hostname = hostname_for(cfg);
    let key_file = cfg.dir.join(PUBLIC_KEY_FILE);
    Ok(Seed {
        instance_id: format!("vmk-{hostname}"),
        hostname,
        ssh_keys: read_keys(&key_file)?,
        user_data: None,
    })
}

/// The public keys in a `.pub` or authorized_keys file (comments and blank lines skipped).
pub fn read_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the public key {} (make one with `vmk sshkeygen`)",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The cloud-init NoCloud seed VMK_CLOUD_INIT=yes attaches: [`SEED_FILE`] in the VM
/// directory.
pub fn seed_path(cfg: &VmConfig) -> PathBuf {
    cfg.dir.join(SEED_FILE)
}

/// Makes sure `<vm dir>/seed.iso` exists and is newer than `vm-key.pub` and `vm-config`,
/// writing it when not; returns its path. For `vmk run` with VMK_CLOUD_INIT=yes: attach
/// the returned path as a CD-ROM.
pub fn ensure_seed(cfg: &VmConfig) -> Result<PathBuf> {
    let seed_path = seed_path(cfg);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // only a regular file counts as a seed: a symlink planted there is replaced, not followed
    let seed_time = std::fs::symlink_metadata(&seed_path)
        .ok()
        .filter(|m| m.file_type().is_file())
        .and_then(|m| m.modified().ok());
    let inputs = [cfg.dir.join(PUBLIC_KEY_FILE), cfg.config_file.clone()];
    let fresh = seed_time
        .is_some_and(|t: SystemTime| inputs.iter().all(|i| mtime(i).is_none_or(|m| m <= t)));
    if !fresh {
        seed_for(cfg)?.write_iso(&seed_path)?;
        log::info!("wrote the cloud-init seed {}", seed_path.display());
    }
    Ok(seed_path)
}

/// What goes into a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// `local-hostname` and the `hostname` the guest sets.
    pub hostname: String,
    /// `instance-id`: cloud-init runs its first-boot modules again when this changes.
    pub instance_id: String,
    /// Public keys for root (and the image's default user).
    pub ssh_keys: Vec<String>,
    /// A complete user-data file to use instead of the generated one.
    pub user_data: Option<String>,
}

impl Seed {
    /// The `user-data` file: `#cloud-config` giving root the keys and allowing root logins
    /// by key only.
    pub fn user_data(&self) -> String {
        if let Some(custom) = &self.user_data {
            return custom.clone();
        }
        let mut s =
            String::from("#cloud-config\n# made by vmk: root logs in with the VM's key (vm-key)\n");
        s.push_str(&format!("hostname: {}\n", yaml_string(&self.hostname)));
        s.push_str("disable_root: false\nssh_pwauth: false\n");
        // With disable_root false, cloud-init gives root the same keys as the image's
        // default user, without the "log in as debian instead" command prefix.
        if !self.ssh_keys.is_empty() {
            s.push_str("ssh_authorized_keys:\n");
            for key in &self.ssh_keys {
                s.push_str(&format!("  - {}\n", yaml_string(key)));
            }
        }
        s
    }

    /// The `meta-data` file.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_string(&self.instance_id),
            yaml_string(&self.hostname)
        )
    }

    /// Checks the parts a guest would choke on, before anything is written.
    pub fn validate(&self) -> Result<()> {
        let ok_host = !self.hostname.is_empty()
            && self.hostname.len() <= 63
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !self.hostname.starts_with('-');
        if !ok_host {
            bail!(
                "hostname {:?} is not a valid host name (letters, digits and -, at most 63)",
                self.hostname
            );
        }
        for key in &self.ssh_keys {
            if key.contains('\n') || key.split_whitespace().count() < 2 {
                bail!("{key:?} does not look like one ssh public key line (type and key)");
            }
        }
        if let Some(u) = &self.user_data {
            let first = u.lines().next().unwrap_or("");
            if !(first.starts_with("#cloud-config")
                || first.starts_with("#!")
                || first.starts_with("#include"))
            {
                bail!("user-data must start with #cloud-config, #! or #include (it starts with {first:?})");
            }
        }
        Ok(())
    }

    /// Writes the seed ISO to `path` (mode 0600: it holds the VM's keys and settings)
    /// through a new temporary file renamed into place, so that whatever sat at `path` (a
    /// planted symlink too) is replaced, never opened.
    pub fn write_iso(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut iso = IsoBuilder::new(SEED_LABEL)?;
        iso.add_bytes("user-data", self.user_data())?;
        iso.add_bytes("meta-data", self.meta_data())?;
        let mut bytes = Vec::new();
        iso.write(&mut bytes)?;
        vmk_common::fileops::replace_file(path, &bytes, 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// A YAML double-quoted scalar (JSON escaping is valid YAML).
fn yaml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            hostname: "vm3".into(),
            instance_id: "vmk-vm3".into(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nz vmk@host".into()],
            user_data: None,
        }
    }

    #[test]
    fn user_data_gives_root_the_key() {
        let u = seed().user_data();
        assert!(u.starts_with("#cloud-config\n"));
        assert!(u.contains("disable_root: false"));
        assert!(u.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nz vmk@host\"\n"));
        assert_eq!(
            seed().meta_data(),
            "instance-id: \"vmk-vm3\"\nlocal-hostname: \"vm3\"\n"
        );
    }

    #[test]
    fn hostnames_and_fresh_seeds() {
        let d = tempfile::Builder::new().prefix("My_VM.").tempdir().unwrap();
        let mut cfg = VmConfig::defaults(d.path());
        assert!(
            hostname_for(&cfg).starts_with("my-vm-"),
            "{}",
            hostname_for(&cfg)
        );
        cfg.hostname = Some("h1".into());
        assert_eq!(hostname_for(&cfg), "h1");
        let err = format!("{:#}", ensure_seed(&cfg).unwrap_err());
        assert!(err.contains("vmk sshkeygen"), "{err}");
        std::fs::write(d.path().join(PUBLIC_KEY_FILE), "ssh-ed25519 AAAA k\n").unwrap();
        let seed = ensure_seed(&cfg).unwrap();
        let before = std::fs::metadata(&seed).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        ensure_seed(&cfg).unwrap();
        assert_eq!(
            std::fs::metadata(&seed).unwrap().modified().unwrap(),
            before,
            "fresh seed kept"
        );
    }

    #[test]
    fn a_planted_seed_link_is_replaced_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        std::fs::write(&canary, "precious\n").unwrap();
        let cfg = VmConfig::defaults(d.path());
        std::fs::write(d.path().join(PUBLIC_KEY_FILE), "ssh-ed25519 AAAA k\n").unwrap();
        let seed_path = d.path().join(SEED_FILE);
        std::os::unix::fs::symlink(&canary, &seed_path).unwrap();
        // the link is newer than every input: it must not pass for a fresh seed either
        let seed = ensure_seed(&cfg).unwrap();
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious\n");
        let m = std::fs::symlink_metadata(&seed).unwrap();
        assert!(m.file_type().is_file(), "the seed is still a link");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read(&seed).unwrap().len() > 32 * 1024);
        // no temporary file stays behind
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn validation() {
        assert!(seed().validate().is_ok());
        assert!(Seed {
            hostname: "bad host".into(),
            ..seed()
        }
        .validate()
        .is_err());
        assert!(Seed {
            ssh_keys: vec!["nokey".into()],
            ..seed()
        }
        .validate()
        .is_err());
        assert!(Seed {
            user_data: Some("hello".into()),
            ..seed()
        }
        .validate()
        .is_err());
        assert_eq!(yaml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
