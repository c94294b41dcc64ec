//! How each host folder of VMK_SHARE (and `--modules`) reaches the guest: virtiofs through
//! a virtiofsd, or virtio-9p in qemu itself (VMK_SHARE_FS). Decided in one place, for the
//! command line, `vmk info` and `-D`, each share with the reason for its transport.
//!
//! `auto` takes virtiofs (faster) where qemu's virtiofsd can run: it is installed, vmk
//! runs as root (that virtiofsd needs it), and qemu keeps root's user (not `-runas` a VM
//! directory's owner: virtiofsd would write the guest's files as root in that user's
//! folder). A read-only share is always virtio-9p: qemu's virtiofsd has no read-only mode,
//! and a read-only mount in the guest is the guest's to undo, while qemu's 9p refuses the
//! writes itself.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Share, ShareFs, VmConfig};
use crate::virtiofsd::Daemon;

use super::Host;

/// How one folder reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareTransport {
    /// virtio-9p: `-fsdev local` and `virtio-9p-pci`.
    NineP,
    /// virtiofs: this virtiofsd, `vhost-user-fs-pci` on its socket.
    Virtiofs(Daemon),
}

/// One shared folder with its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFolder {
    /// The folder, its tag and mode.
    pub share: Share,
    /// How it reaches the guest.
    pub transport: ShareTransport,
    /// Why this transport, in a few words (`info`, `-D`).
    pub reason: String,
}

impl SharedFolder {
    /// The transport as a VMK_SHARE_FS value: 9p or virtiofs.
    pub fn fs(&self) -> ShareFs {
        match self.transport {
            ShareTransport::NineP => ShareFs::NineP,
            ShareTransport::Virtiofs(_) => ShareFs::Virtiofs,
        }
    }

    /// The virtiofsd, when it is virtiofs.
    pub fn daemon(&self) -> Option<&Daemon> {
        match &self.transport {
            ShareTransport::Virtiofs(d) => Some(d),
            ShareTransport::NineP => None,
        }
    }

    /// `virtiofs (REASON)` or `virtio-9p (REASON)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.fs().transport_name(), self.reason)
    }
}

/// `-runas UID:GID` for a VM whose directory `dir` belongs to another user than root, when
/// vmk runs as root: qemu drops to that user.
pub(super) fn runas(dir: &Path, host: &dyn Host) -> Option<(u32, u32)> {
    if host.is_root() {
        host.owner(dir).filter(|&(uid, _)| uid != 0)
    } else {
        None
    }
}

/// The virtiofsd that `cfg`'s virtiofs shares would use here, or why there is none
/// (VMK_SHARE_FS=9p, none installed, not root…).
pub fn usable_virtiofsd(cfg: &VmConfig, host: &dyn Host) -> Result<PathBuf, String> {
    if cfg.share_fs == ShareFs::NineP {
        return Err("VMK_SHARE_FS=9p".into());
    }
    let program = host.virtiofsd()?;
    if !host.is_root() {
        return Err(format!(
            "{} needs root, and vmk runs as a user",
            program.display()
        ));
    }
    if let Some((uid, _)) = runas(&cfg.dir, host) {
        return Err(format!(
            "the VM directory belongs to uid {uid}, and {} would write the guest's files as root",
            program.display()
        ));
    }
    Ok(program)
}

/// The transport of every share in `cfg` (in order) for the instance booting `image`.
/// VMK_SHARE_FS=virtiofs where no virtiofsd can run is an error naming the key.
pub fn plan(
    cfg: &VmConfig,
    image: &Path,
    host: &dyn Host,
) -> Result<Vec<SharedFolder>, ConfigError> {
    if cfg.shares.is_empty() {
        return Ok(Vec::new());
    }
    let virtiofsd = usable_virtiofsd(cfg, host);
    let runtime_dir = host.runtime_dir();
    if let (ShareFs::Virtiofs, Err(why)) = (cfg.share_fs, &virtiofsd) {
        return Err(ConfigError::new(format!(
            "virtiofs cannot be used here: {why}; set VMK_SHARE_FS=auto or 9p"
        ))
        .with_key("VMK_SHARE_FS")
        .with_origin(&cfg.origin("VMK_SHARE_FS")));
    }
    Ok(cfg
        .shares
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (transport, reason) = match (&virtiofsd, s.readonly) {
                (Ok(p), false) => (
                    ShareTransport::Virtiofs(Daemon::for_share(p, &runtime_dir, image, i, &s.dir)),
                    format!("virtiofsd {}", p.display()),
                ),
                (Ok(_), true) => (
                    ShareTransport::NineP,
                    "read-only: qemu's virtiofsd cannot enforce it, qemu's 9p does".into(),
                ),
                (Err(why), _) => (ShareTransport::NineP, why.clone()),
            };
            SharedFolder {
                share: s.clone(),
                transport,
                reason,
            }
        })
        .collect())
}
