//! vmk-common: what every vmk tool shares, so that each tool stays a thin layer of commands.
//!
//! - [`cli`]: global options, logging, error reporting and exit codes of every tool.
//! - [`config`]: the six config sources, parsed (never executed) into a typed [`config::VmConfig`].
//! - [`qemu`]: the one typed builder of qemu command lines.
//! - [`state`], [`qmp`]: pidfiles, process identity, the QMP client.
//! - [`fileops`]: reflink/NOCOW copies that never leave half-written files.
//! - [`ssh`]: the ssh client side: the VM's sshd, its host key, waiting for it.
//! - [`commands`]: the one table of the names typed after `vmk`.
//! - [`frontdoor`]: the `vmk` command that execs `vmk-<command>`.

pub mod chroot;
pub mod cli;
pub mod commands;
pub mod config;
pub mod copy;
pub mod error;
pub mod fileops;
pub mod frontdoor;
pub mod host;
pub mod human;
pub mod jsonline;
pub mod layout;
pub mod libvirt;
pub mod loopdev;
pub mod mountinfo;
pub mod process;
pub mod qemu;
pub mod qemu_img;
pub mod qmp;
pub mod shell;
pub mod signals;
pub mod ssh;
pub mod state;
pub mod swtpm;
pub mod text;
pub mod time;
pub mod virtiofsd;
