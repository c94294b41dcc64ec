//! The cache that makes the second bootstrap of a kind take seconds: debootstrap's package
//! tarball and the freshly installed tree, in `~/.cache/vmk`, keyed by what was asked for.
//! A VM made from the cached tree still gets an identity of its own.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vmk_common::host::command;

use crate::debian::debootstrap;
use crate::plan::Plan;
use crate::runner::{CommandRunner, Runner};
use crate::staging::Interrupted;

/// tar options that keep owners, modes, device nodes and file capabilities.
const TAR_OPTIONS: &[&str] = &[
    "--numeric-owner",
    "-p",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
];

/// `$XDG_CACHE_HOME/vmk`, else `~/.cache/vmk`.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("vmk");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("vmk")
}

/// A stable key for the package tarball: what debootstrap was asked to fetch.
pub(crate) fn package_key(suite: &str, arch: &str, mirror: &str, packages: &[String]) -> String {
    let sorted: BTreeSet<&str> = packages.iter().map(String::as_str).collect();
    let mut text = format!("{suite}\n{arch}\n{}\n", mirror.trim_end_matches('/'));
    for p in sorted {
        text.push_str(p);
        text.push(',');
    }
    format!("{:016x}", vmk_common::state::fnv1a64(text.as_bytes()))
}

/// The `tar` that unpacks a cached installed tree into `root` (also what `-D` prints).
pub(crate) fn unpack_tree(tree: &Path, root: &Path) -> std::process::Command {
    let mut c = command("tar");
    c.args(TAR_OPTIONS)
        .arg("-x")
        .arg("-f")
        .arg(tree)
        .arg("-C")
        .arg(root);
    c
}

/// The cached installed tree that belongs to a package tarball: `…-root.tar` beside it.
pub(crate) fn tree_cache_path(tarball: &Path) -> PathBuf {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".tgz").unwrap_or(&name);
    tarball.with_file_name(format!("{stem}-root.tar"))
}

/// Installs the system into `root`: from the cached installed tree when there is one, else
/// with debootstrap (then caching the tree, unless --no-cache).
pub(crate) fn install_system(
    plan: &Plan,
    runner: &Runner,
    staging: &Path,
    root: &Path,
) -> Result<()> {
    let tree = plan.cache.as_deref().map(tree_cache_path);
    if let Some(tree) = tree.as_deref().filter(|t| t.is_file()) {
        runner
            .progress
            .note(&format!("using the cached system in {}", tree.display()));
        runner.progress.detail("unpacking");
        // the guest's `/`: 0755 whatever vmk's private umask (tar may keep it)
        fs::create_dir(root)
            .and_then(|()| fs::set_permissions(root, fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("creating {}", root.display()))?;
        runner
            .run("tar -x", &mut unpack_tree(tree, root))
            .with_context(|| {
                format!(
                    "if the cached system is damaged, remove {} (or use --no-cache)",
                    tree.display()
                )
            })?;
        return fresh_identity(runner, root);
    }
    install_packages(plan, runner, staging, root)?;
    if let (Some(tree), Some(tarball)) = (&tree, &plan.cache) {
        match save_tree(runner, root, tree) {
            // The installed tree holds everything the package tarball did.
            Ok(()) => {
                let _ = fs::remove_file(tarball);
            }
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => runner.progress.note(&format!(
                "warning: could not cache the installed system ({e:#})"
            )),
        }
    }
    fresh_identity(runner, root)
}

/// Saves the freshly installed tree (before any per-VM change) to the cache.
fn save_tree(runner: &Runner, root: &Path, tree: &Path) -> Result<()> {
    runner.progress.detail("caching the installed system");
    let tmp = tree.with_file_name(format!(
        "{}.tmp-{}",
        tree.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = runner
        .run(
            "tar -c",
            command("tar")
                .args(TAR_OPTIONS)
                .args(["--one-file-system", "-c", "-f"])
                .arg(&tmp)
                .arg("-C")
                .arg(root)
                .arg("."),
        )
        .and_then(|()| {
            fs::rename(&tmp, tree)
                .with_context(|| format!("renaming {} to {}", tmp.display(), tree.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What must differ between VMs made from the same cached tree: ssh host keys (made anew)
/// and the random seed (dropped); the machine-id is emptied by
/// [`configure_root`](crate::configure_root).
fn fresh_identity(runner: &Runner, root: &Path) -> Result<()> {
    let ssh = root.join("etc/ssh");
    if let Ok(rd) = fs::read_dir(&ssh) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    let _ = fs::remove_file(root.join("var/lib/systemd/random-seed"));
    runner.run(
        "ssh-keygen -A",
        command("chroot").arg(root).args(["ssh-keygen", "-A"]),
    )
}

/// debootstrap: the packages downloaded into the package tarball first (when it is
/// missing), then installed from it; or straight from the mirror with --no-cache.
fn install_packages(plan: &Plan, runner: &Runner, staging: &Path, root: &Path) -> Result<()> {
    let install_from = match &plan.cache {
        // mmdebstrap has no package tarball; the installed tree is cached all the same
        _ if plan.debian.is_foreign() => None,
        None => None,
        Some(tarball) if tarball.is_file() => {
            runner.progress.note(&format!(
                "using the cached packages in {}",
                tarball.display()
            ));
            Some(tarball.clone())
        }
        Some(tarball) => match fill_cache(plan, runner, staging, tarball) {
            Ok(()) => Some(tarball.clone()),
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => {
                runner.progress.note(&format!(
                    "warning: could not cache the packages ({e:#}); installing without the cache"
                ));
                None
            }
        },
    };
    let debian = &plan.debian;
    runner.progress.detail(&format!(
        "installing Debian {} from {}",
        debian.suite, debian.mirror
    ));
    debootstrap(debian, root, install_from.as_deref(), runner).with_context(
        || match &install_from {
            Some(t) => format!(
                "if the cached package tarball is stale, remove {} (or use --no-cache)",
                t.display()
            ),
            None => format!(
                "check that {} is reachable and has {}",
                debian.mirror, debian.suite
            ),
        },
    )
}

/// `debootstrap --make-tarball` into the cache (written under a temporary name).
fn fill_cache(plan: &Plan, runner: &Runner, staging: &Path, tarball: &Path) -> Result<()> {
    let dir = tarball.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tarball.with_extension(format!("tmp-{}.tgz", std::process::id()));
    let download = staging.join("download");
    let debian = &plan.debian;
    runner.progress.detail(&format!(
        "downloading Debian {} from {}",
        debian.suite, debian.mirror
    ));
    let result = runner.run(
        "debootstrap --make-tarball",
        command("debootstrap").args(
            debian.debootstrap_argv(Some(format!("--make-tarball={}", tmp.display())), &download),
        ),
    );
    let result = result.and_then(|()| {
        fs::rename(&tmp, tarball)
            .with_context(|| format!("renaming {} to {}", tmp.display(), tarball.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let _ = fs::remove_dir_all(&download);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_keys_ignore_order_but_not_content() {
        let a = package_key(
            "bookworm",
            "amd64",
            "http://m/debian",
            &["a".into(), "b".into()],
        );
        let b = package_key(
            "bookworm",
            "amd64",
            "http://m/debian/",
            &["b".into(), "a".into()],
        );
        let c = package_key(
            "trixie",
            "amd64",
            "http://m/debian",
            &["a".into(), "b".into()],
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_installed_tree_is_beside_its_package_tarball() {
        assert_eq!(
            tree_cache_path(Path::new("/c/vmk/debootstrap-bookworm-amd64-0123.tgz")),
            Path::new("/c/vmk/debootstrap-bookworm-amd64-0123-root.tar")
        );
    }
}
