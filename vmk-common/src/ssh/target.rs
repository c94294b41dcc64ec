//! Where this VM's sshd is: the forwarded port on VMK_LISTEN with user networking, or the
//! guest's own address (VMK_HOSTNAME, VMK_IP, the neighbour table entry of its MAC) when
//! bridged. Every ssh, scp and sshfs invocation goes to exactly this address; the host key
//! it answers with is checked against the VM's own known_hosts file ([`crate::ssh::hostkey`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::config::{NetType, VmConfig};
use anyhow::{bail, Context, Result};

/// The address and port of the VM's sshd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A host name or an IP address (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl Target {
    /// `root@HOST` for ssh and sshfs.
    pub fn login(&self) -> String {
        format!("root@{}", self.host)
    }

    /// `root@HOST:PATH` for scp and sshfs (IPv6 addresses in brackets).
    pub fn remote_path(&self, path: &str) -> String {
        if self.host.contains(':') {
            format!("root@[{}]:{path}", self.host)
        } else {
            format!("root@{}:{path}", self.host)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Finds the VM's sshd for `cfg`.
pub fn target(cfg: &VmConfig) -> Result<Target> {
    match cfg.net_type {
        NetType::User => Ok(Target {
            host: connect_address(cfg.listen).to_string(),
            port: cfg.ssh_port(),
        }),
        NetType::Bridge => {
            if let Some(h) = &cfg.hostname {
                return Ok(Target {
                    host: h.clone(),
                    port: 22,
                });
            }
            if let Some(ip) = cfg.ip {
                return Ok(Target {
                    host: ip.to_string(),
                    port: 22,
                });
            }
            let mac = cfg.mac();
            match neighbour_for_mac(&mac)? {
                Some(ip) => Ok(Target {
                    host: ip.to_string(),
                    port: 22,
                }),
                None => bail!(
                    "no address known for the VM's MAC {mac} in the neighbour table: \
                     set VMK_IP or VMK_HOSTNAME, or ping the guest's subnet first"
                ),
            }
        }
        NetType::None => Err(crate::usage!(
            "VMK_NET_TYPE is none: this VM has no network to ssh into (set VMK_NET_TYPE=user)"
        )),
    }
}

/// The address to connect to for a listen address: the wildcard means loopback.
pub fn connect_address(listen: IpAddr) -> IpAddr {
    match listen {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

/// Looks `mac` up in the kernel's neighbour tables: /proc/net/arp (IPv4), then `ip -6 neigh`.
pub fn neighbour_for_mac(mac: &str) -> Result<Option<IpAddr>> {
    if let Ok(arp) = std::fs::read_to_string("/proc/net/arp") {
        if let Some(ip) = parse_proc_arp(&arp, mac) {
            return Ok(Some(ip));
        }
    }
    let out = Command::new("ip")
        .args(["neigh", "show"])
        .output()
        .context("running `ip neigh show`")?;
    Ok(parse_ip_neigh(&String::from_utf8_lossy(&out.stdout), mac))
}

/// The IPv4 address of a complete entry for `mac` in /proc/net/arp's text.
pub fn parse_proc_arp(text: &str, mac: &str) -> Option<IpAddr> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device; flags 0x0 = incomplete.
        if f.len() >= 4 && f[3].eq_ignore_ascii_case(mac) && f[2] != "0x0" {
            f[0].parse().ok()
        } else {
            None
        }
    })
}

/// The first reachable-ish address for `mac` in `ip neigh show` output.
pub fn parse_ip_neigh(text: &str, mac: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let i = f.iter().position(|w| *w == "lladdr")?;
        let failed = f.iter().any(|w| *w == "FAILED" || *w == "INCOMPLETE");
        (!failed && f.get(i + 1)?.eq_ignore_ascii_case(mac))
            .then(|| f[0].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn no_network_is_a_config_mistake_exit_2() {
        let mut cfg = VmConfig::defaults(Path::new("/vm"));
        cfg.net_type = NetType::None;
        let err = target(&cfg).unwrap_err();
        assert_eq!(crate::cli::exit_status_of(&err), 2, "{err:#}");
    }

    #[test]
    fn user_net_uses_listen_and_forwarded_port() {
        let mut cfg = VmConfig::defaults(Path::new("/vm"));
        cfg.vnc = 3;
        let t = target(&cfg).unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 10023);
        cfg.listen = "0.0.0.0".parse().unwrap();
        assert_eq!(target(&cfg).unwrap().host, "127.0.0.1");
        cfg.listen = "::".parse().unwrap();
        let t = target(&cfg).unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.remote_path("/tmp"), "root@[::1]:/tmp");
        assert_eq!(t.to_string(), "[::1]:10023");
    }

    #[test]
    fn bridge_prefers_hostname_then_ip() {
        let mut cfg = VmConfig::defaults(Path::new("/vm"));
        cfg.net_type = NetType::Bridge;
        cfg.ip = Some("10.0.0.5".parse().unwrap());
        assert_eq!(target(&cfg).unwrap().host, "10.0.0.5");
        cfg.hostname = Some("guest1".into());
        let t = target(&cfg).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("guest1", 22));
        cfg.net_type = NetType::None;
        assert!(target(&cfg).is_err());
    }

    #[test]
    fn neighbour_tables_parse() {
        let arp =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                   192.168.1.9      0x1         0x0         52:54:00:00:00:01     *        br0\n\
                   192.168.1.7      0x1         0x2         52:54:00:00:00:01     *        br0\n";
        assert_eq!(
            parse_proc_arp(arp, "52:54:00:00:00:01"),
            Some("192.168.1.7".parse().unwrap())
        );
        assert_eq!(parse_proc_arp(arp, "52:54:00:00:00:02"), None);
        let neigh = "fe80::1 dev br0 lladdr 52:54:00:00:00:02 FAILED\n\
                     fe80::2 dev br0 lladdr 52:54:00:00:00:02 REACHABLE\n";
        assert_eq!(
            parse_ip_neigh(neigh, "52:54:00:00:00:02"),
            Some("fe80::2".parse().unwrap())
        );
    }
}
