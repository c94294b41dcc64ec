//! vmk-libvirt: hand a VM directory to libvirt (`vmk libvirt xml|define|start|stop|undefine`)
//! with the same hardware vmk would start itself: the domain XML is read from the qemu
//! command line builder's typed value ([`xml`]), and libvirt is driven through `virsh`,
//! the tool its users already have and trust, as vmk drives qemu and ssh.
//!
//! The connection is `--connect URI`, else VMK_LIBVIRT_URI, else libvirt's default
//! (`-c` is vmk's global config-file option, so the URI has no short option here). A
//! remote connection (a URI with a host) gets the disk images, and a kernel and initrd
//! booted directly, uploaded into the storage pool VMK_LIBVIRT_POOL ([`remote`]).

pub mod remote;
pub mod xml;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use vmk_common::cli::{GlobalOpts, Tool};
use vmk_common::config::VmConfig;
use vmk_common::libvirt::{self as lv, Record};
use vmk_common::qemu::{Mode, QemuCommand, RuntimePaths, DEFAULT_ARCH};
use vmk_media::preflight;

/// Hand this VM to libvirt.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-libvirt",
    version,
    about = "Hand this VM to libvirt: domain XML, define, start, stop, undefine",
    long_about = "Hand this VM to libvirt: domain XML, define, start, stop, undefine.\n\n\
        The domain XML is made from the same typed qemu command line `vmk run` uses: domain \
        type kvm, or qemu where vmk would use tcg; disks with bus, format and cache; \
        CD-ROMs; user networking (the same -netdev/-device with the ssh forward, passed in \
        <qemu:commandline>, as libvirt cannot forward a port of qemu's own user network), \
        a bridge with the MAC, or none; the serial console logged to the console log `vmk \
        info` names; VNC on VMK_LISTEN with the VM's display; direct kernel boot; the guest \
        agent's channel; the ssh key as an SMBIOS OEM string credential. NVMe disks are \
        refused (libvirt before 10 has no element for them).\n\n\
        libvirt is driven with virsh. The connection is --connect URI, else \
        VMK_LIBVIRT_URI, else libvirt's default (-c stays vmk's config option). On a \
        remote connection the disk images and CD-ROMs (and a kernel and initrd booted \
        directly) are uploaded, sparse, into the storage pool VMK_LIBVIRT_POOL as volumes \
        <domain>-<file name>, never over an existing volume; a failed define deletes what \
        it uploaded. A name defined by another VM directory (or not by vmk) is refused; \
        defining the same directory again updates its domain. `vmk info`, `vmk ps` and \
        `vmk run` know the domains vmk defined."
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// The commands of vmk-libvirt.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the libvirt domain XML of this VM (the hardware `vmk run` gives qemu)
    Xml,
    /// Define this VM as a libvirt domain (uploading its disks to a remote host's pool)
    Define(DefineArgs),
    /// Start the domain of this VM
    Start(ConnectArgs),
    /// Power the domain off gracefully (ACPI), destroy it after the timeout
    Stop(StopArgs),
    /// Remove the domain of this VM from libvirt (it must be stopped; volumes stay)
    Undefine(ConnectArgs),
}

/// Which libvirt.
#[derive(ClapArgs, Debug, Default)]
pub struct ConnectArgs {
    /// libvirt connection URI (default: VMK_LIBVIRT_URI, else libvirt's default)
    #[arg(long = "connect", value_name = "URI")]
    pub connect: Option<String>,
}

/// `define`.
#[derive(ClapArgs, Debug)]
pub struct DefineArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Start the domain once it is defined
    #[arg(long)]
    pub start: bool,
}

/// `stop`.
#[derive(ClapArgs, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Seconds to wait for the guest to power off before destroying the domain
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Runs vmk-libvirt.
pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = VmConfig::load_for(&args.global)?;
    let dry = args.global.dry_run;
    match &args.command {
        Command::Xml => {
            print!("{}", domain_for(&cfg)?.to_xml());
        }
        Command::Define(a) => define(&cfg, a, dry)?,
        Command::Start(a) => {
            let (uri, name) = target(&cfg, a)?;
            virsh_do(dry, Some(&uri), &["start", &name])?;
            eprintln!("vmk-libvirt: started domain {name} at {uri}");
        }
        Command::Stop(a) => stop(&cfg, a, dry)?,
        Command::Undefine(a) => undefine(&cfg, a, dry)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The qemu command line `vmk run` would use, as libvirt's domain.
pub fn domain_for(cfg: &VmConfig) -> Result<xml::Domain> {
    let cmd = run_command(cfg)?;
    xml::Domain::from_command(&cmd, cfg.arch.as_deref().unwrap_or(DEFAULT_ARCH))
}

/// The command line of `vmk run` for `cfg`, with the CD-ROMs every run attaches
/// (VMK_ISO, the cloud-init seed: [`vmk_media::run_cdroms`]).
pub fn run_command(cfg: &VmConfig) -> Result<QemuCommand> {
    let paths = RuntimePaths::new(&cfg.dir, cfg.disk0()?)?;
    let cmd = QemuCommand::from_config(cfg, Mode::Run, &paths)?;
    Ok(vmk_media::run_cdroms(cfg)
        .into_iter()
        .fold(cmd, |cmd, cdrom| cmd.add_cdrom(cdrom)))
}

/// What the domain's media need before libvirt may start it: the cloud-init seed written
/// and current.
fn prepare_media(cfg: &VmConfig) -> Result<()> {
    if cfg.cloud_init {
        vmk_media::cloudinit::ensure_seed(cfg)
            .context("VMK_CLOUD_INIT=yes needs a cloud-init seed")?;
    }
    Ok(())
}

/// The connection asked for: `--connect`, VMK_LIBVIRT_URI, or libvirt's default (`None`).
fn requested_uri<'a>(cfg: &'a VmConfig, conn: &'a ConnectArgs) -> Option<&'a str> {
    conn.connect.as_deref().or(cfg.libvirt_uri.as_deref())
}

/// The canonical URI of a connection, which also proves that it answers.
pub fn canonical_uri(uri: Option<&str>) -> Result<String> {
    let shown = uri.unwrap_or("libvirt's default connection");
    let out = lv::virsh_query(uri, &["uri"])
        .with_context(|| format!("libvirt at {shown} does not answer"))?;
    Ok(out.trim().to_string())
}

/// Whether `uri` names another host (`qemu+ssh://host/system`), not this one.
pub fn is_remote(uri: &str) -> bool {
    uri.split_once("://")
        .map(|(_, rest)| {
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit('@').next().unwrap_or_default();
            !host.is_empty()
        })
        .unwrap_or(false)
}

/// The connection and domain name of this VM: its record's, or the configured ones.
fn target(cfg: &VmConfig, conn: &ConnectArgs) -> Result<(String, String)> {
    match (lv::record_for(&cfg.dir)?, requested_uri(cfg, conn)) {
        (Some(rec), None) => Ok((rec.uri, rec.domain)),
        (Some(rec), Some(uri)) => {
            let uri = canonical_uri(Some(uri))?;
            let name = if uri == rec.uri {
                rec.domain
            } else {
                cfg.display_name()
            };
            Ok((uri, name))
        }
        (None, uri) => Ok((canonical_uri(uri)?, cfg.display_name())),
    }
}

/// Runs a virsh command (or prints it under `-D`).
fn virsh_do(dry: bool, uri: Option<&str>, args: &[&str]) -> Result<String> {
    if dry {
        let mut words = vec!["virsh".to_string()];
        if let Some(u) = uri {
            words.extend(["-c".to_string(), u.to_string()]);
        }
        words.extend(args.iter().map(|a| a.to_string()));
        println!("{}", vmk_common::shell::join(&words));
        return Ok(String::new());
    }
    lv::virsh_output(uri, args, None).with_context(|| {
        format!(
            "virsh {} at {}",
            args.first().unwrap_or(&""),
            uri.unwrap_or("libvirt's default connection")
        )
    })
}

/// A domain already defined under a name: the VM directory it was defined for (vmk's
/// metadata; `None` when not by vmk) and its uuid.
struct Existing {
    vm_dir: Option<String>,
    uuid: Option<String>,
}

fn existing_domain(uri: &str, name: &str) -> Result<Option<Existing>> {
    let Ok(xml) = lv::virsh_query(Some(uri), &["dumpxml", name]) else {
        return Ok(None);
    };
    Ok(Some(Existing {
        vm_dir: xml::vmk_dir_of(&xml)?,
        uuid: xml::text_at(&xml, &["domain", "uuid"])?,
    }))
}

fn define(cfg: &VmConfig, a: &DefineArgs, dry: bool) -> Result<()> {
    let cmd = run_command(cfg)?;
    // the files the config names, checked as `vmk run` checks them (a dry run warns)
    let missing = preflight::missing_files(cfg, &cmd);
    if dry {
        for m in &missing {
            log::warn!("{}", m.error(cfg));
        }
    } else if !missing.is_empty() {
        return Err(preflight::missing_files_error(cfg, &missing).into());
    }
    let mut domain = xml::Domain::from_command(&cmd, cfg.arch.as_deref().unwrap_or(DEFAULT_ARCH))?;
    let uri = canonical_uri(requested_uri(cfg, &a.conn))?;
    let name = domain.name.clone();
    let me = domain.vm_dir.clone();
    match existing_domain(&uri, &name)? {
        None => {}
        Some(Existing {
            vm_dir: Some(dir),
            uuid,
        }) if dir == me => {
            log::info!("domain {name} at {uri} is this VM's: defining it again");
            domain.uuid = uuid;
        }
        Some(Existing { vm_dir, .. }) => bail!(
            "domain {name} is already defined at {uri}{}: set VMK_NAME to another name, or undefine it",
            match vm_dir {
                Some(d) => format!(" for the VM directory {d}"),
                None => " (not by vmk)".into(),
            }
        ),
    }
    let remote = is_remote(&uri);
    if !dry {
        prepare_media(cfg)?;
    }
    let mut uploads = Vec::new();
    if remote && !dry {
        uploads = remote::upload(&uri, &cfg.libvirt_pool, &mut domain)?;
    }
    let result = define_xml(&uri, &domain, dry);
    if let Err(e) = result {
        remote::delete_volumes(&uri, &uploads);
        return Err(e);
    }
    if dry {
        return Ok(());
    }
    let local_disk0 = (!remote).then(|| domain.disks.first().map(|d| d.file.clone().into()));
    lv::write_record(&Record {
        dir: cfg.dir.clone(),
        domain: name.clone(),
        uri: uri.clone(),
        local_disk0: local_disk0.flatten(),
        volumes: uploads
            .iter()
            .map(|u| (u.pool.clone(), u.volume.clone()))
            .collect(),
    })?;
    eprintln!("vmk-libvirt: defined domain {name} at {uri}");
    println!("{name}");
    if a.start {
        virsh_do(false, Some(&uri), &["start", &name])?;
        eprintln!("vmk-libvirt: started domain {name}");
    }
    Ok(())
}

/// `virsh define` of the domain's XML, through a private temporary file.
fn define_xml(uri: &str, domain: &xml::Domain, dry: bool) -> Result<()> {
    let text = domain.to_xml();
    if dry {
        print!("{text}");
        return virsh_do(true, Some(uri), &["define", "DOMAIN.xml"]).map(drop);
    }
    let mut file = tempfile::Builder::new()
        .prefix("vmk-libvirt-")
        .suffix(".xml")
        .tempfile()
        .context("creating a temporary file for the domain XML")?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    let path = file
        .path()
        .to_str()
        .context("temporary file name is not UTF-8")?;
    virsh_do(false, Some(uri), &["define", path])?;
    Ok(())
}

fn state_of(uri: &str, name: &str) -> Result<String> {
    Ok(lv::virsh_query(Some(uri), &["domstate", name])?
        .trim()
        .to_string())
}

/// How often `stop` presses the power button again while the guest has not gone.
const SHUTDOWN_REPEAT: Duration = Duration::from_secs(10);

fn stop(cfg: &VmConfig, a: &StopArgs, dry: bool) -> Result<()> {
    let (uri, name) = target(cfg, &a.conn)?;
    if dry {
        virsh_do(true, Some(&uri), &["shutdown", &name])?;
        virsh_do(true, Some(&uri), &["destroy", &name])?;
        return Ok(());
    }
    if state_of(&uri, &name)? == "shut off" {
        eprintln!("vmk-libvirt: domain {name} is not running");
        return Ok(());
    }
    let begun = Instant::now();
    let timeout = Duration::from_secs(a.timeout);
    let mut asked: Option<Instant> = None;
    while begun.elapsed() < timeout {
        // asked again now and then: a guest still booting ignores the power button
        if asked.is_none_or(|t| t.elapsed() >= SHUTDOWN_REPEAT) {
            let pressed = virsh_do(false, Some(&uri), &["shutdown", &name]);
            // an error is only one when the domain has not gone meanwhile
            if pressed.is_err() && state_of(&uri, &name)? != "shut off" {
                pressed?;
            }
            asked = Some(Instant::now());
        }
        if state_of(&uri, &name)? == "shut off" {
            eprintln!(
                "vmk-libvirt: domain {name} powered off after {}",
                vmk_common::human::duration(begun.elapsed())
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    log::warn!(
        "domain {name} did not power off within {}: destroying it",
        vmk_common::human::duration(timeout)
    );
    virsh_do(false, Some(&uri), &["destroy", &name])?;
    eprintln!("vmk-libvirt: domain {name} destroyed (no power-off within the timeout)");
    Ok(())
}

fn undefine(cfg: &VmConfig, a: &ConnectArgs, dry: bool) -> Result<()> {
    let (uri, name) = target(cfg, a)?;
    if dry {
        return virsh_do(true, Some(&uri), &["undefine", &name]).map(drop);
    }
    let state = state_of(&uri, &name)?;
    if state != "shut off" {
        bail!("domain {name} at {uri} is {state}: run `vmk libvirt stop` first");
    }
    virsh_do(false, Some(&uri), &["undefine", &name])?;
    let rec = lv::record_for(&cfg.dir)?;
    if rec
        .as_ref()
        .is_some_and(|r| r.uri == uri && r.domain == name)
    {
        lv::remove_record(&cfg.dir)?;
    }
    eprintln!("vmk-libvirt: undefined domain {name} at {uri}");
    for (pool, vol) in rec.map(|r| r.volumes).unwrap_or_default() {
        eprintln!("vmk-libvirt: volume {vol} stays in pool {pool} (virsh vol-delete --pool {pool} {vol} removes it)");
    }
    Ok(())
}
