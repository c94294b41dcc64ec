//! Configuration: the six sources (README.md, "Configuration"; vmk-config(5)), parsed (never
//! executed) into a typed [`VmConfig`].
//!
//! Reading happens in stages, each of which reports `file:line: KEY: what was expected`:
//! 1. bytes → [`RawConfig`] ([`raw`]): lines kept verbatim, so `vmk set` can edit one value;
//! 2. the sources merged in order, later wins: `/etc/vmk-config` (or the file
//!    `$VMK_SYSTEM_CONFIG` names, held to a user file's rules: see [`SYSTEM_FILE_VAR`]),
//!    `~/.vmkrc`, `./vmkrc`,
//!    `./vm-config` (or `-c FILE`, whose directory is then the VM directory), the environment
//!    (`VMK_*` keys of the table only: control variables such as `VMK` and `VMK_OPT_*` are
//!    ignored), then the command line's overrides. Each value is checked against the key
//!    table ([`keys`]) where it is assigned, so an error points at the line that made it;
//! 3. the merged text → a typed [`VmConfig`], then [`VmConfig::validate`] for rules that
//!    involve several keys (ports that overflow, a MAC format that gives no MAC for VMK_VNC).
//!
//! Decisions:
//! - An empty value means "unset": the default applies (`VMK_ISO=` is no ISO).
//! - `${NAME}`/`$NAME` expand to a key assigned earlier, in this file or an earlier source.
//!   A name assigned nowhere falls back to the process environment for names outside `VMK_`
//!   (so `~/.vmkrc` may say `VMK_ISO_DIR=$HOME/iso`); anything else is an error, never "".
//! - Assignments of names without `VMK_` are kept (they can be referenced) and logged at
//!   debug level; an unknown `VMK_` name is an error with the closest known key.
//! - Relative paths are relative to the VM directory, whichever file set them; a leading
//!   `~/` is the home directory.
//! - `VMK_DISK1`…`VMK_DISK6` when empty: a file `disk1`…`disk6` in the VM directory is
//!   attached when it exists (see [`VmConfig::extra_disks`]).
//! - `VMK_ISO` is a path when it contains a `/`, else a file name in `VMK_ISO_DIR` (or in the
//!   VM directory when `VMK_ISO_DIR` is empty).
//! - `VMK_QEMU` is a path when it contains a `/`, else a program looked up on PATH.
//! - Only trusted sources are read ([`trust`]): a config file, and a VM directory that holds
//!   one, must belong to the user who runs vmk or to root (`/etc/vmk-config` to root) and
//!   must not be writable by group or others; anything else is refused, naming the path, its
//!   owner and mode, and the `chown`/`chmod` that fixes it.
//! - Hostile input is bounded where it is read ([`files`]): a config is a regular file (a
//!   FIFO or device is refused without blocking), at most 1 MiB; a value at most 64 KiB once
//!   its references are expanded (4 MiB over a whole load), so a value that doubles itself
//!   line after line stops at the line that goes over; values of keys hold no control
//!   characters (NUL, ESC, BEL…); errors quote what they got as a short escaped excerpt.
//! - A leading UTF-8 byte order mark is skipped (editors write one; refusing it would be an
//!   error about an invisible character).
//! - A name that spells a key in another case (`vmk_mem`, `VMK_mem`) is an error naming the
//!   key: it is far more likely a key gone wrong than a variable of the user's own, and
//!   ignoring it would silently leave the key at its default.

mod error;
pub mod files;
pub mod keys;
pub mod raw;
pub mod trust;
pub mod values;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use error::{ConfigError, Origin};
pub use keys::{closest_key, key, keys, validate_value, KeyKind, KeySpec};
pub use raw::{Assignment, LineKind, Piece, Quoting, RawConfig, RawLine, Unexpanded};
pub use values::{
    Accel, CacheMode, DiskBus, DiskFormat, Firmware, MacFormat, MemSize, NetType, NicModel,
    PortForward, RtcBase, Share, ShareFs, Size,
};

/// The system-wide config file.
pub const SYSTEM_FILE: &str = "/etc/vmk-config";
/// The environment variable naming a file to read instead of [`SYSTEM_FILE`] (tests and
/// trying a system-wide setting without root; it is held to the rules of a user's file).
/// A path that does not exist means no system-wide settings.
pub const SYSTEM_FILE_VAR: &str = "VMK_SYSTEM_CONFIG";
/// The user's config file, in the home directory.
pub const USER_FILE_NAME: &str = ".vmkrc";
/// The config shared by VMs beside each other, in the VM directory.
pub const GROUP_FILE_NAME: &str = "vmkrc";
/// The VM's own config, in the VM directory.
pub const VM_FILE_NAME: &str = "vm-config";

/// What [`load`] reads.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `-c FILE`: this VM's config (must exist); its directory is the VM directory.
    pub config_file: Option<PathBuf>,
    /// The VM directory when no `config_file` is given (default: the current directory).
    pub dir: Option<PathBuf>,
    /// Values from the command line, applied last: (`VMK_KEY`, value).
    pub overrides: Vec<(String, String)>,
    /// The system-wide file instead of `/etc/vmk-config` (tests).
    pub system_file: Option<PathBuf>,
    /// The user's file instead of `~/.vmkrc` (tests).
    pub user_file: Option<PathBuf>,
    /// Whether `VMK_*` environment variables count (and `$NAME` may fall back to the environment).
    pub env: bool,
    /// Use these variables instead of the process environment (tests).
    pub env_vars: Option<BTreeMap<String, String>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            config_file: None,
            dir: None,
            overrides: Vec::new(),
            system_file: None,
            user_file: None,
            env: true,
            env_vars: None,
        }
    }
}

impl LoadOptions {
    /// Everything as a tool run by a user reads it: all six sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// A key's environment variable that is set but not UTF-8 is an error, not unset.
    fn check_env_is_text(&self, name: &str) -> Result<(), ConfigError> {
        if !self.env || self.env_vars.is_some() {
            return Ok(());
        }
        match std::env::var(name) {
            Err(std::env::VarError::NotUnicode(v)) => Err(ConfigError::new(format!(
                "the value is not UTF-8 text: {}",
                crate::text::excerpt(&v.to_string_lossy())
            ))
            .with_key(name)
            .with_origin(&Origin::Env)),
            _ => Ok(()),
        }
    }

    fn env_var(&self, name: &str) -> Option<String> {
        if !self.env {
            return None;
        }
        match &self.env_vars {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }
}

/// One merged value and where it came from.
#[derive(Debug, Clone)]
struct Setting {
    value: String,
    origin: Origin,
}

/// Reads all sources and returns the checked, typed config.
pub fn load(opts: &LoadOptions) -> Result<VmConfig, ConfigError> {
    let cwd = std::env::current_dir()
        .map_err(|e| ConfigError::new(format!("cannot find the current directory: {e}")))?;
    let (dir, config_file, vm_display, required) = match &opts.config_file {
        Some(file) => {
            let abs = absolute(&cwd, file);
            let dir = abs
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            (dir, abs, file.display().to_string(), true)
        }
        None => {
            let dir = opts
                .dir
                .as_ref()
                .map(|d| absolute(&cwd, d))
                .unwrap_or_else(|| cwd.clone());
            let display = match &opts.dir {
                None => VM_FILE_NAME.to_string(),
                Some(d) => d.join(VM_FILE_NAME).display().to_string(),
            };
            (dir.clone(), dir.join(VM_FILE_NAME), display, false)
        }
    };
    let home = opts.env_var("HOME").map(PathBuf::from);
    let system_stand_in = opts.system_file.clone().or_else(|| {
        opts.env_var(SYSTEM_FILE_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let system = system_stand_in
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_FILE));
    let user = opts
        .user_file
        .clone()
        .or_else(|| home.as_ref().map(|h| h.join(USER_FILE_NAME)));
    let group_display = match (&opts.config_file, &opts.dir) {
        (None, None) => GROUP_FILE_NAME.to_string(),
        _ => dir.join(GROUP_FILE_NAME).display().to_string(),
    };

    let me = rustix::process::geteuid().as_raw();
    let holds_config = [dir.join(GROUP_FILE_NAME), config_file.clone()]
        .iter()
        .any(|p| std::fs::symlink_metadata(p).is_ok());
    if holds_config {
        check_vm_dir(&dir, me)?;
    }
    let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
    let system_kind = match system_stand_in {
        None => trust::Trusted::SystemFile,
        Some(_) => trust::Trusted::ConfigFile, // a test's stand-in
    };
    let mut sources: Vec<(PathBuf, String, bool, trust::Trusted)> = vec![(
        system.clone(),
        system.display().to_string(),
        false,
        system_kind,
    )];
    if let Some(user) = user {
        sources.push((
            user.clone(),
            user.display().to_string(),
            false,
            trust::Trusted::ConfigFile,
        ));
    }
    sources.push((
        dir.join(GROUP_FILE_NAME),
        group_display,
        false,
        trust::Trusted::ConfigFile,
    ));
    sources.push((
        config_file.clone(),
        vm_display.clone(),
        required,
        trust::Trusted::ConfigFile,
    ));
    let mut config_found = false;
    let mut budget = files::MAX_EXPANDED_BYTES;
    for (path, display, required, kind) in sources {
        let Some(raw) = read_source(&path, &display, required, kind, me)? else {
            continue;
        };
        config_found |= path == config_file;
        merge_file(&raw, &mut settings, opts, &mut budget)?;
    }
    for spec in keys() {
        opts.check_env_is_text(spec.name)?;
        if let Some(value) = opts.env_var(spec.name) {
            validate_value(spec.name, &value).map_err(|e| e.with_origin(&Origin::Env))?;
            settings.insert(
                spec.name.to_string(),
                Setting {
                    value,
                    origin: Origin::Env,
                },
            );
        }
    }
    for (k, value) in &opts.overrides {
        if key(k).is_none() {
            return Err(
                ConfigError::new(keys::unknown_key_message(k)).with_origin(&Origin::CommandLine)
            );
        }
        validate_value(k, value).map_err(|e| e.with_origin(&Origin::CommandLine))?;
        settings.insert(
            k.clone(),
            Setting {
                value: value.clone(),
                origin: Origin::CommandLine,
            },
        );
    }
    let mut cfg = VmConfig::from_settings(dir, config_file, vm_display, home, &settings)?;
    cfg.config_found = config_found;
    cfg.validate()?;
    Ok(cfg)
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    std::path::absolute(cwd.join(p)).unwrap_or_else(|_| cwd.join(p))
}

/// Refuses a VM directory that is not the user's (or root's) or that others can write to
/// ([`trust::check`]).
fn check_vm_dir(dir: &Path, me: u32) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        ConfigError::new(format!(
            "cannot read the VM directory {}: {e}",
            dir.display()
        ))
    })?;
    trust::check(
        dir,
        &dir.display().to_string(),
        &meta,
        trust::Trusted::VmDir,
        me,
    )
}

/// Reads and parses one source, after checking that it is trusted ([`trust::check`], on
/// the opened file); `None` when an optional file does not exist.
fn read_source(
    path: &Path,
    display: &str,
    required: bool,
    kind: trust::Trusted,
    me: u32,
) -> Result<Option<RawConfig>, ConfigError> {
    match files::open_config(path, display)? {
        Some((file, meta)) => {
            trust::check(path, display, &meta, kind, me)?;
            let bytes = files::read_bounded(file, display)?;
            RawConfig::parse(&bytes, display).map(Some)
        }
        None if !required => {
            log::trace!("no config file {display}");
            Ok(None)
        }
        None => Err(ConfigError::file(
            display,
            "no such config file: give an existing file with -c, or run `vmk newconfig`",
        )),
    }
}

/// Adds a file's assignments, expanded and checked, to `settings`.
fn merge_file(
    raw: &RawConfig,
    settings: &mut BTreeMap<String, Setting>,
    opts: &LoadOptions,
    budget: &mut usize,
) -> Result<(), ConfigError> {
    for (line, a) in raw.assignments() {
        let origin = Origin::File {
            path: raw.path().to_string(),
            line,
        };
        if keys::ORIGINAL_INTERNAL_KEYS.contains(&a.key.as_str()) {
            log::warn!(
                "{origin}: {} is a setting of the original vmk's script: vmk ignores it (-x or -v for debug output, -D for a dry run)",
                a.key
            );
            continue;
        }
        let limit = files::MAX_VALUE_BYTES.min(*budget);
        let value = a
            .expand_within(limit, |name| {
                settings.get(name).map(|s| s.value.clone()).or_else(|| {
                    if name.starts_with("VMK_") {
                        None
                    } else {
                        opts.env_var(name)
                    }
                })
            })
            .map_err(|e| {
                let message = match e {
                    raw::Unexpanded::Unset(name) => format!(
                        "${{{}}} is not set: only keys assigned earlier (or, outside VMK_, environment variables) can be referenced",
                        crate::text::excerpt(&name)
                    ),
                    raw::Unexpanded::TooLong if limit == files::MAX_VALUE_BYTES => format!(
                        "the value is longer than a value may be ({} KiB) once its references are expanded",
                        files::MAX_VALUE_BYTES >> 10
                    ),
                    raw::Unexpanded::TooLong => format!(
                        "expanding references makes more text than a config may ({} MiB over all values)",
                        files::MAX_EXPANDED_BYTES >> 20
                    ),
                };
                ConfigError::new(message).with_key(&a.key).with_origin(&origin)
            })?;
        if a.value
            .iter()
            .any(|p| matches!(p, Piece::Var(_) | Piece::Default { .. }))
        {
            *budget = budget.saturating_sub(value.len());
        }
        validate_value(&a.key, &value).map_err(|e| e.with_origin(&origin))?;
        if !a.key.starts_with("VMK_") {
            log::debug!(
                "{origin}: {} is not a vmk key; kept for ${{{}}} references",
                a.key,
                a.key
            );
        }
        settings.insert(a.key.clone(), Setting { value, origin });
    }
    Ok(())
}

/// One VM's configuration, typed and checked. Empty optional keys are `None`.
#[derive(Debug, Clone, Serialize)]
pub struct VmConfig {
    /// The VM directory (absolute).
    pub dir: PathBuf,
    /// The VM's config file (absolute; it may not exist when no `-c` was given).
    pub config_file: PathBuf,
    /// The config file as shown in messages.
    #[serde(skip)]
    pub config_display: String,
    /// Whether the VM's config file was there to read (else this is no VM directory).
    #[serde(skip)]
    pub config_found: bool,
    /// VMK_NAME.
    pub name: Option<String>,
    /// VMK_TAG.
    pub tag: Option<String>,
    /// VMK_VNC: the VM's number.
    pub vnc: u8,
    /// VMK_MEM.
    pub mem: MemSize,
    /// VMK_CPU.
    pub cpus: u32,
    /// VMK_DISK0 (absolute).
    pub disk0_path: Option<PathBuf>,
    /// VMK_DISK0_FORMAT; `None` means detect.
    pub disk0_format: Option<DiskFormat>,
    /// VMK_DISK0_CACHE.
    pub disk0_cache: CacheMode,
    /// VMK_DISK_CACHE.
    pub disk_cache: CacheMode,
    /// VMK_DISK_BUS.
    pub disk_bus: DiskBus,
    /// VMK_DISK1…VMK_DISK6 as configured (absolute); index 0 is disk1.
    pub disks: [Option<PathBuf>; 6],
    /// VMK_ISO as written (see [`VmConfig::iso`]).
    pub iso_name: Option<String>,
    /// VMK_ISO as a path: relative to the VM directory, `~/` expanded.
    pub iso_given: Option<PathBuf>,
    /// VMK_ISO_DIR (absolute).
    pub iso_dir: Option<PathBuf>,
    /// VMK_KERNEL (absolute).
    pub kernel: Option<PathBuf>,
    /// VMK_INITRD (absolute).
    pub initrd: Option<PathBuf>,
    /// VMK_APPEND.
    pub append: Option<String>,
    /// VMK_EXEC_INIT: the guest's init for one-shot (`--exec`) runs.
    pub exec_init: Option<String>,
    /// VMK_ARCH; `None` means detect (x86_64 for choosing qemu).
    pub arch: Option<String>,
    /// VMK_ACCEL.
    pub accel: Accel,
    /// VMK_MACHINE.
    pub machine: Option<String>,
    /// VMK_CPU_MODEL.
    pub cpu_model: Option<String>,
    /// VMK_FIRMWARE.
    pub firmware: Firmware,
    /// VMK_TPM.
    pub tpm: bool,
    /// VMK_NIC.
    pub nic: NicModel,
    /// VMK_RTC.
    pub rtc: RtcBase,
    /// VMK_NET_TYPE.
    pub net_type: NetType,
    /// VMK_BRIDGE.
    pub bridge: String,
    /// VMK_MAC_BASE_FORMAT.
    pub mac_format: MacFormat,
    /// VMK_IP.
    pub ip: Option<IpAddr>,
    /// VMK_HOSTNAME.
    pub hostname: Option<String>,
    /// VMK_TELNET_BASE.
    pub telnet_base: u16,
    /// VMK_SSH_BASE.
    pub ssh_base: u16,
    /// VMK_LISTEN.
    pub listen: IpAddr,
    /// VMK_CONSOLE: true for `telnet` (a TCP port), false for `socket` (a unix socket).
    pub console_telnet: bool,
    /// VMK_VNC_SOCKET.
    pub vnc_socket: bool,
    /// VMK_QEMU: a path (absolute) when it holds a `/`, else a program name for PATH.
    pub qemu: Option<PathBuf>,
    /// VMK_INST_DISK0.
    pub inst_disk0: Size,
    /// VMK_INST_DISK.
    pub inst_disk: Size,
    /// VMK_INST_APPEND.
    pub inst_append: Option<String>,
    /// VMK_EXTRA_ARGS, split into words.
    pub extra_args: Vec<String>,
    /// VMK_SSH_CREDENTIAL.
    pub ssh_credential: bool,
    /// VMK_CLOUD_INIT.
    pub cloud_init: bool,
    /// VMK_LIBVIRT_URI: the libvirt connection of `vmk libvirt` (`None`: libvirt's default).
    pub libvirt_uri: Option<String>,
    /// VMK_LIBVIRT_POOL: the storage pool a remote host gets the disk images in.
    pub libvirt_pool: String,
    /// VMK_SHARE, folders made absolute.
    pub shares: Vec<values::Share>,
    /// VMK_SHARE_FS.
    pub share_fs: ShareFs,
    /// VMK_PORTS.
    pub ports: Vec<values::PortForward>,
    /// Assignments of names outside `VMK_` (kept for references; not used by vmk).
    #[serde(skip)]
    pub other: BTreeMap<String, String>,
    /// Where each key that is not at its default came from.
    #[serde(skip)]
    pub origins: BTreeMap<String, Origin>,
}

/// Reads typed values out of the merged settings, with errors located at their origin.
struct Typed<'a> {
    settings: &'a BTreeMap<String, Setting>,
    dir: &'a Path,
    home: Option<&'a Path>,
}

impl Typed<'_> {
    /// The value of `key` (its default when unset or empty), and where it came from.
    fn text(&self, key: &str) -> (String, Origin) {
        match self.settings.get(key) {
            Some(s) if !s.value.is_empty() => (s.value.clone(), s.origin.clone()),
            _ => (
                keys::key(key).map(|k| k.default).unwrap_or("").to_string(),
                Origin::Default,
            ),
        }
    }

    fn opt_text(&self, key: &str) -> Option<String> {
        Some(self.text(key).0).filter(|v| !v.is_empty())
    }

    fn parse<T>(&self, key: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        let (value, origin) = self.text(key);
        f(&value).map_err(|expected| {
            ConfigError::new(format!(
                "expected {expected}, got \"{}\"",
                crate::text::excerpt(&value)
            ))
            .with_key(key)
            .with_origin(&origin)
        })
    }

    fn opt<T>(
        &self,
        key: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.opt_text(key) {
            None => Ok(None),
            Some(_) => self.parse(key, f).map(Some),
        }
    }

    fn parsed<T: std::str::FromStr<Err = String>>(&self, key: &str) -> Result<T, ConfigError> {
        self.parse(key, |s| s.parse())
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.opt_text(key)
            .map(|v| resolve_path(self.dir, self.home, &v))
    }
}

/// A config path made absolute: `~/x` in the home directory, `x` in the VM directory.
pub fn resolve_path(dir: &Path, home: Option<&Path>, value: &str) -> PathBuf {
    match (value.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => dir.join(value),
    }
}

impl VmConfig {
    /// Loads the config the way a tool invoked with `globals` should (all six sources).
    pub fn load_for(globals: &crate::cli::GlobalOpts) -> Result<VmConfig, ConfigError> {
        load(&LoadOptions {
            config_file: globals.config.clone(),
            ..LoadOptions::new()
        })
    }

    fn from_settings(
        dir: PathBuf,
        config_file: PathBuf,
        config_display: String,
        home: Option<PathBuf>,
        settings: &BTreeMap<String, Setting>,
    ) -> Result<VmConfig, ConfigError> {
        let t = Typed {
            settings,
            dir: &dir,
            home: home.as_deref(),
        };
        let disk = |i: usize| t.path(&format!("VMK_DISK{i}"));
        let qemu = t.opt_text("VMK_QEMU").map(|q| {
            if q.contains('/') {
                resolve_path(&dir, home.as_deref(), &q)
            } else {
                PathBuf::from(q)
            }
        });
        let cfg = VmConfig {
            name: t.opt("VMK_NAME", values::parse_word)?,
            tag: t.opt_text("VMK_TAG"),
            vnc: t.parse("VMK_VNC", values::parse_vnc)?,
            mem: t.parsed("VMK_MEM")?,
            cpus: t.parse("VMK_CPU", values::parse_cpus)?,
            disk0_path: t.path("VMK_DISK0"),
            disk0_format: t.opt("VMK_DISK0_FORMAT", |s| s.parse())?,
            disk0_cache: t.parsed("VMK_DISK0_CACHE")?,
            disk_cache: t.parsed("VMK_DISK_CACHE")?,
            disk_bus: t.parsed("VMK_DISK_BUS")?,
            disks: [disk(1), disk(2), disk(3), disk(4), disk(5), disk(6)],
            iso_name: t.opt_text("VMK_ISO"),
            iso_given: t.path("VMK_ISO"),
            iso_dir: t.path("VMK_ISO_DIR"),
            kernel: t.path("VMK_KERNEL"),
            initrd: t.path("VMK_INITRD"),
            append: t.opt_text("VMK_APPEND"),
            exec_init: t.opt("VMK_EXEC_INIT", values::parse_guest_path)?,
            arch: t.opt("VMK_ARCH", values::parse_word)?,
            accel: t.parsed("VMK_ACCEL")?,
            machine: t.opt("VMK_MACHINE", values::parse_word)?,
            cpu_model: t.opt_text("VMK_CPU_MODEL"),
            firmware: t.parsed("VMK_FIRMWARE")?,
            tpm: t.parse("VMK_TPM", values::parse_bool)?,
            nic: t.parsed("VMK_NIC")?,
            rtc: t.parsed("VMK_RTC")?,
            net_type: t.parsed("VMK_NET_TYPE")?,
            bridge: t.parse("VMK_BRIDGE", values::parse_word)?,
            mac_format: t.parsed("VMK_MAC_BASE_FORMAT")?,
            ip: t.opt("VMK_IP", values::parse_ip)?,
            hostname: t.opt("VMK_HOSTNAME", values::parse_hostname)?,
            telnet_base: t.parse("VMK_TELNET_BASE", values::parse_port)?,
            ssh_base: t.parse("VMK_SSH_BASE", values::parse_port)?,
            listen: t.parse("VMK_LISTEN", values::parse_ip)?,
            console_telnet: t.parse("VMK_CONSOLE", |s| match s {
                "socket" => Ok(false),
                "telnet" => Ok(true),
                _ => Err("socket or telnet".to_string()),
            })?,
            vnc_socket: t.parse("VMK_VNC_SOCKET", values::parse_bool)?,
            qemu,
            inst_disk0: t.parsed("VMK_INST_DISK0")?,
            inst_disk: t.parsed("VMK_INST_DISK")?,
            inst_append: t.opt_text("VMK_INST_APPEND"),
            extra_args: t
                .opt("VMK_EXTRA_ARGS", values::parse_words)?
                .unwrap_or_default(),
            ssh_credential: t.parse("VMK_SSH_CREDENTIAL", values::parse_bool)?,
            cloud_init: t.parse("VMK_CLOUD_INIT", values::parse_bool)?,
            libvirt_uri: t.opt_text("VMK_LIBVIRT_URI"),
            libvirt_pool: t.parse("VMK_LIBVIRT_POOL", values::parse_word)?,
            shares: t
                .opt("VMK_SHARE", |s| {
                    values::parse_shares(s, &|d| resolve_path(&dir, home.as_deref(), d))
                })?
                .unwrap_or_default(),
            share_fs: t.parsed("VMK_SHARE_FS")?,
            ports: t.opt("VMK_PORTS", values::parse_ports)?.unwrap_or_default(),
            other: settings
                .iter()
                .filter(|(k, _)| !k.starts_with("VMK_"))
                .map(|(k, s)| (k.clone(), s.value.clone()))
                .collect(),
            origins: settings
                .iter()
                .filter(|(k, s)| k.starts_with("VMK_") && !s.value.is_empty())
                .map(|(k, s)| (k.clone(), s.origin.clone()))
                .collect(),
            dir,
            config_file,
            config_display,
            config_found: true,
        };
        Ok(cfg)
    }

    /// A config with every key at its default, for the VM directory `dir` (tests, `newconfig`).
    pub fn defaults(dir: &Path) -> VmConfig {
        VmConfig::from_settings(
            dir.to_path_buf(),
            dir.join(VM_FILE_NAME),
            VM_FILE_NAME.into(),
            None,
            &BTreeMap::new(),
        )
        .expect("the defaults of the key table are valid")
    }

    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(message)
            .with_key(key)
            .with_origin(&self.origin(key))
    }

    /// Checks the rules that involve several keys: every port a base plus VMK_VNC makes is
    /// within 1…65535 (the bases are at least 1, VMK_VNC at most 99, so 5900 + VMK_VNC is
    /// too), and the ports the VM listens on differ from each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let vnc = u32::from(self.vnc);
        for (key, base) in [
            ("VMK_TELNET_BASE", self.telnet_base),
            ("VMK_SSH_BASE", self.ssh_base),
        ] {
            if u32::from(base) + vnc > u32::from(u16::MAX) {
                return Err(self.error(
                    key,
                    format!("{base} + VMK_VNC ({vnc}) is above the highest port, 65535"),
                ));
            }
        }
        let ports = self.ports();
        let mut used = vec![("VMK_VNC", "the VNC port, 5900 + VMK_VNC", ports.vnc)];
        if self.console_telnet {
            used.push((
                "VMK_TELNET_BASE",
                "the serial console's port, VMK_TELNET_BASE + VMK_VNC",
                ports.console,
            ));
        }
        if self.net_type == NetType::User {
            used.push((
                "VMK_SSH_BASE",
                "the ssh port, VMK_SSH_BASE + VMK_VNC",
                ports.ssh,
            ));
        }
        for (i, (key, what, port)) in used.iter().enumerate().skip(1) {
            if let Some((_, other, _)) = used[..i].iter().find(|(_, _, p)| p == port) {
                return Err(self.error(
                    key,
                    format!("{what} is {port}, which is {other} too: give the VM distinct ports"),
                ));
            }
        }
        if let Err(expected) = self.mac_format.mac(vnc) {
            return Err(self.error("VMK_MAC_BASE_FORMAT", format!("expected {expected}")));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(self.error(
                "VMK_INITRD",
                "is set but VMK_KERNEL is not: set VMK_KERNEL too, or empty VMK_INITRD",
            ));
        }
        if self.append.is_some() && self.kernel.is_none() {
            log::debug!(
                "VMK_APPEND is set but VMK_KERNEL is not: it is used only with direct kernel boot"
            );
        }
        Ok(())
    }

    /// The name for qemu's `-name`: VMK_NAME, else the VM directory's name.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "vmk".into())
        })
    }

    /// The VNC TCP port: 5900 + VMK_VNC.
    pub fn vnc_port(&self) -> u16 {
        self.ports().vnc
    }

    /// The serial console TCP port: VMK_TELNET_BASE + VMK_VNC.
    pub fn telnet_port(&self) -> u16 {
        self.ports().console
    }

    /// The host port forwarded to the guest's ssh with user networking: VMK_SSH_BASE + VMK_VNC.
    pub fn ssh_port(&self) -> u16 {
        self.ports().ssh
    }

    /// All three ports ([`crate::layout::VmPorts`]); [`VmConfig::validate`] has checked
    /// that none is past 65535 (saturated there otherwise).
    pub fn ports(&self) -> crate::layout::VmPorts {
        crate::layout::VmPorts::of(self.vnc, self.telnet_base, self.ssh_base).unwrap_or(
            crate::layout::VmPorts {
                vnc: crate::layout::vnc_port(self.vnc),
                console: self.telnet_base.saturating_add(u16::from(self.vnc)),
                ssh: self.ssh_base.saturating_add(u16::from(self.vnc)),
            },
        )
    }

    /// The VM's MAC address, made from VMK_MAC_BASE_FORMAT and VMK_VNC (checked by `validate`).
    pub fn mac(&self) -> String {
        self.mac_format
            .mac(u32::from(self.vnc))
            .unwrap_or_else(|_| "52:54:00:00:00:00".into())
    }

    /// The first disk image, or an error that says how to get one.
    pub fn disk0(&self) -> Result<&Path, ConfigError> {
        self.disk0_path.as_deref().ok_or_else(|| {
            if self.config_found {
                ConfigError::new(format!(
                    "VMK_DISK0 is not set in {}: set it or run `vmk mkdisk0`",
                    self.config_display
                ))
            } else {
                self.not_a_vm_directory()
            }
        })
    }

    /// Fails with a clear message when this is no VM directory (no config file was read),
    /// for commands that need a VM before they need its disk.
    pub fn require_vm_dir(&self) -> Result<(), ConfigError> {
        match self.config_found {
            true => Ok(()),
            false => Err(self.not_a_vm_directory()),
        }
    }

    /// The error for a directory without a VM config (and no VMK_DISK0 from elsewhere).
    fn not_a_vm_directory(&self) -> ConfigError {
        ConfigError::new(format!(
            "{} is not a VM directory: it has no {VM_FILE_NAME}. Make a new VM with \
             `vmk bootstrap DIR`, or a config to edit with `vmk newconfig > {VM_FILE_NAME}` \
             (or give one with -c FILE)",
            self.dir.display()
        ))
    }

    /// The extra disks, disk1…disk6 in order: each VMK_DISKn, or when that is empty the file
    /// `diskN` in the VM directory if it exists.
    pub fn extra_disks(&self) -> Vec<PathBuf> {
        (1..=6)
            .filter_map(|i| match &self.disks[i - 1] {
                Some(p) => Some(p.clone()),
                None => Some(self.dir.join(format!("disk{i}"))).filter(|p| p.exists()),
            })
            .collect()
    }

    /// The install medium, found as the original vmk found it: VMK_ISO as given (relative
    /// to the VM directory, `~/` expanded) when that file exists, else a bare file name in
    /// VMK_ISO_DIR. When neither exists: the VMK_ISO_DIR candidate for a bare name with
    /// VMK_ISO_DIR set, else the file as given (what a "missing" error then names).
    pub fn iso(&self) -> Option<PathBuf> {
        let name = self.iso_name.as_deref()?;
        let given = self
            .iso_given
            .clone()
            .unwrap_or_else(|| self.dir.join(name));
        let in_iso_dir = self
            .iso_dir
            .as_deref()
            .filter(|_| !name.contains('/'))
            .map(|d| d.join(name));
        match in_iso_dir {
            Some(d) if !given.exists() => Some(d),
            _ => Some(given),
        }
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
