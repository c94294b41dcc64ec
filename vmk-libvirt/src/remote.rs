//! A remote libvirt cannot open this machine's files: before the domain is defined there,
//! its disk images (and a kernel and initrd booted directly) are uploaded into a storage
//! pool of that host (VMK_LIBVIRT_POOL), and the domain points at the volumes.
//!
//! Decisions:
//! - Each file becomes the volume `<domain>-<file name>`, created empty (`vol-create-as`
//!   with no allocation) and filled with `vol-upload --sparse`, so holes stay holes on the
//!   wire and on the remote disk. What was copied is said per file: its size and how much
//!   of it is data.
//! - A volume of that name already there is an error, never overwritten: it may hold the
//!   only copy of what the guest wrote since. Volumes made before a failure are deleted, so
//!   a failed define leaves nothing behind.
//! - The console log goes beside the volumes on the remote host (`<pool dir>/<domain>.console.log`).
//! - UEFI: the firmware code and template are the remote host's own (same paths, from its
//!   firmware package); the VM's variable store is uploaded like a disk, or when it does
//!   not exist yet, made there by libvirt from the template (`<pool dir>/<domain>.efivars`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use vmk_common::human;
use vmk_common::libvirt::{self as lv};

use crate::xml::{Domain, SerialXml};

/// One file uploaded into a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The pool.
    pub pool: String,
    /// The volume.
    pub volume: String,
    /// The volume's path on the remote host.
    pub path: String,
}

/// Uploads every file `domain` names into `pool` at `uri` and points `domain` at the
/// volumes. On failure, the volumes made so far are deleted.
pub fn upload(uri: &str, pool: &str, domain: &mut Domain) -> Result<Vec<Upload>> {
    let pool_dir = pool_dir(uri, pool)?;
    let mut done = Vec::new();
    let result = upload_all(uri, pool, domain, &mut done);
    if let Err(e) = result {
        delete_volumes(uri, &done);
        return Err(e);
    }
    if let Some(u) = &mut domain.uefi {
        // no variable store yet: the remote libvirt makes it from the template, in the pool
        if !Path::new(&u.vars).exists() {
            u.vars = format!("{pool_dir}/{}.efivars", domain.name);
        }
    }
    let log = format!("{pool_dir}/{}.console.log", domain.name);
    match &mut domain.serial {
        SerialXml::Pty { log: l } | SerialXml::Telnet { log: l, .. } => *l = log,
    }
    Ok(done)
}

fn upload_all(uri: &str, pool: &str, domain: &mut Domain, done: &mut Vec<Upload>) -> Result<()> {
    let name = domain.name.clone();
    for i in 0..domain.disks.len() {
        let what = match domain.disks[i].device {
            "disk" => format!("disk{i}"),
            other => other.to_string(),
        };
        let up = upload_file(uri, pool, &name, &what, Path::new(&domain.disks[i].file))?;
        domain.disks[i].file = up.path.clone();
        done.push(up);
    }
    if let Some(u) = &mut domain.uefi {
        if Path::new(&u.vars).exists() {
            let up = upload_file(uri, pool, &name, "UEFI variable store", Path::new(&u.vars))?;
            u.vars = up.path.clone();
            done.push(up);
        }
    }
    if let Some((kernel, initrd, _)) = &mut domain.kernel {
        let up = upload_file(uri, pool, &name, "kernel", Path::new(kernel))?;
        *kernel = up.path.clone();
        done.push(up);
        if let Some(initrd) = initrd {
            let up = upload_file(uri, pool, &name, "initrd", Path::new(initrd))?;
            *initrd = up.path.clone();
            done.push(up);
        }
    }
    Ok(())
}

/// The directory of a pool (`<target><path>`), which also proves that it exists.
fn pool_dir(uri: &str, pool: &str) -> Result<String> {
    let xml = lv::virsh_query(Some(uri), &["pool-dumpxml", pool]).with_context(|| {
        format!(
            "storage pool {pool} does not exist at {uri}: set VMK_LIBVIRT_POOL, or create it \
             (virsh -c {uri} pool-define-as {pool} dir --target DIR; pool-build; pool-start)"
        )
    })?;
    let state = lv::virsh_query(Some(uri), &["pool-info", pool])?;
    if !state
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("running"))
    {
        bail!("storage pool {pool} at {uri} is not active: virsh -c {uri} pool-start {pool}");
    }
    crate::xml::pool_target_path(&xml)?
        .with_context(|| format!("storage pool {pool} at {uri} has no target path"))
}

fn upload_file(uri: &str, pool: &str, domain: &str, what: &str, file: &Path) -> Result<Upload> {
    let file_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{what} {} has no UTF-8 file name", file.display()))?;
    let volume = format!("{domain}-{file_name}");
    if lv::virsh_query(Some(uri), &["vol-info", "--pool", pool, &volume]).is_ok() {
        bail!(
            "volume {volume} already exists in pool {pool} at {uri}: vmk does not overwrite it \
             (it may hold what the guest wrote); delete it with virsh vol-delete --pool {pool} {volume}"
        );
    }
    let meta =
        std::fs::metadata(file).with_context(|| format!("reading {what} {}", file.display()))?;
    let size = meta.len();
    let data = meta.blocks() * 512;
    let local = file
        .to_str()
        .with_context(|| format!("{what} {} is not UTF-8", file.display()))?;
    lv::virsh_output(
        Some(uri),
        &[
            "vol-create-as",
            pool,
            &volume,
            &size.to_string(),
            "--allocation",
            "0",
            "--format",
            "raw",
        ],
        None,
    )
    .with_context(|| format!("creating volume {volume} in pool {pool} at {uri}"))?;
    let up = Upload {
        pool: pool.to_string(),
        volume: volume.clone(),
        path: String::new(),
    };
    let filled = lv::virsh_output(
        Some(uri),
        &["vol-upload", "--sparse", "--pool", pool, &volume, local],
        None,
    )
    .with_context(|| format!("uploading {} into volume {volume}", file.display()))
    .and_then(|_| {
        lv::virsh_query(Some(uri), &["vol-path", "--pool", pool, &volume])
            .map(|p| p.trim().to_string())
    });
    let path = match filled {
        Ok(p) => p,
        Err(e) => {
            delete_volumes(uri, std::slice::from_ref(&up));
            return Err(e);
        }
    };
    eprintln!(
        "vmk-libvirt: uploaded {what} {} ({}, {} of data) into pool {pool} at {uri} as volume {volume}",
        file.display(),
        human::size(size),
        human::size(data.min(size)),
    );
    Ok(Upload { path, ..up })
}

/// Deletes volumes made by a define that failed (errors are logged: the first one counts).
pub fn delete_volumes(uri: &str, uploads: &[Upload]) {
    for u in uploads {
        match lv::virsh_query(Some(uri), &["vol-delete", "--pool", &u.pool, &u.volume]) {
            Ok(_) => log::info!("deleted volume {} of pool {}", u.volume, u.pool),
            Err(e) => log::warn!(
                "could not delete volume {} of pool {} at {uri}: {e:#}",
                u.volume,
                u.pool
            ),
        }
    }
}
