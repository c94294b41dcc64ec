//! cloud-init NoCloud seeds: a small ISO labelled `cidata` with `user-data` and
//! `meta-data`, so that a distribution's cloud image boots with the VM's ssh key for root
//! and its hostname, ready for `vmk ssh`, with no image surgery.

use std::path::Path;

use anyhow::{bail, Result};

use crate::iso9660::IsoBuilder;

/// The volume label cloud-init's NoCloud data source looks for.
pub const SEED_LABEL: &str = "cidata";

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

    /// Writes the seed ISO to `path`.
    pub fn write_iso(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut iso = IsoBuilder::new(SEED_LABEL)?;
        iso.add_bytes("user-data", self.user_data())?;
        iso.add_bytes("meta-data", self.meta_data())?;
        iso.write_file(path)
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
