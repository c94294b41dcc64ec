//! Hostile-input cases: config files and disk images that are not what they claim.

use super::*;

/// Config files that are not plain files, not the user's, or not there.
pub(crate) fn files(all: &mut Vec<Case>) {
    use Category::Files as C;
    let not_regular = "not a regular file";
    for (name, entry) in [
        ("config_fifo", Entry::Fifo),
        ("config_directory", Entry::Dir),
        (
            "config_symlink_to_dev_zero",
            Entry::Symlink("/dev/zero".into()),
        ),
        (
            "config_symlink_to_dev_null",
            Entry::Symlink("/dev/null".into()),
        ),
    ] {
        all.push(
            case(C, name)
                .file("vm-config", entry)
                .says(&["vm-config", not_regular]),
        );
    }
    all.push(
        case(C, "config_fifo_info")
            .file("vm-config", Entry::Fifo)
            .args(&["info"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "config_fifo_dry_run")
            .file("vm-config", Entry::Fifo)
            .args(&["-D", "run"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "config_symlink_to_etc_passwd")
            .file("vm-config", Entry::Symlink("/etc/passwd".into()))
            .says(&["vm-config:1:"]),
    );
    all.push(
        case(C, "config_symlink_to_a_secret")
            .file(
                "~/secret",
                Entry::Bytes(b"root:not-a-config\nSECOND-LINE-SECRET\n".to_vec()),
            )
            .file("vm-config", Entry::Symlink("../secret".into()))
            .says(&["vm-config:1:"])
            .hides("SECOND-LINE-SECRET"),
    );
    all.push(
        case(C, "config_long_first_line_quoted_short")
            .config(format!("{}\n", "S".repeat(10_000)))
            .says(&["vm-config:1:"])
            .hides("S".repeat(200)),
    );
    all.push(
        case(C, "config_dangling_symlink")
            .file("vm-config", Entry::Symlink("nowhere".into()))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_symlink_loop")
            .file("loop-a", Entry::Symlink("vm-config".into()))
            .file("vm-config", Entry::Symlink("loop-a".into()))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_unreadable")
            .file("vm-config", Entry::Mode(0o000))
            .nobody()
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_world_writable")
            .file("vm-config", Entry::Mode(0o666))
            .says(&["vm-config", "chmod"]),
    );
    all.push(
        case(C, "config_someone_elses")
            .file("vm-config", Entry::Nobody)
            .says(&["vm-config", "chown"]),
    );
    all.push(
        case(C, "vm_directory_world_writable")
            .file(".", Entry::Mode(0o777))
            .says(&["chmod"]),
    );
    all.push(
        case(C, "vmkrc_fifo")
            .file("vmkrc", Entry::Fifo)
            .says(&["vmkrc", not_regular]),
    );
    all.push(
        case(C, "vmkrc_directory")
            .file("vmkrc", Entry::Dir)
            .says(&["vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_fifo")
            .file(".vmkrc", Entry::Fifo)
            .says(&[".vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_dev_zero")
            .file(".vmkrc", Entry::Symlink("/dev/zero".into()))
            .says(&[".vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_world_writable")
            .file(".vmkrc", Entry::Bytes(b"VMK_MEM=2G\n".to_vec()))
            .file(".vmkrc", Entry::Mode(0o666))
            .says(&[".vmkrc", "chmod"]),
    );
    // -c FILE
    all.push(
        case(C, "dash_c_fifo")
            .file("other", Entry::Fifo)
            .args(&["-c", "other", "run"])
            .says(&["other", not_regular]),
    );
    for (name, path) in [
        ("dash_c_dev_zero", "/dev/zero"),
        ("dash_c_dev_null", "/dev/null"),
        ("dash_c_dev_tty", "/dev/tty"),
    ] {
        all.push(case(C, name).args(&["-c", path, "run"]).says(&[path]));
    }
    all.push(
        case(C, "dash_c_directory")
            .args(&["-c", ".", "run"])
            .says(&[not_regular]),
    );
    all.push(
        case(C, "dash_c_root")
            .args(&["-c", "/", "run"])
            .says(&["/"]),
    );
    all.push(
        case(C, "dash_c_missing")
            .args(&["-c", "missing-config", "run"])
            .says(&["missing-config", "no such config file"]),
    );
    all.push(case(C, "dash_c_empty").args(&["-c", "", "run"]));
    all.push(case(C, "dash_c_very_long_path").args(&[
        OsString::from("-c"),
        "p/".repeat(3000).into(),
        "run".into(),
    ]));
    all.push(
        case(C, "dash_c_escape_sequence")
            .args(&["-c", "\x1b]0;owned\x07", "run"])
            .says(&["no such config file"]),
    );
    all.push(
        case(C, "dash_c_non_utf8")
            .args(&[os(b"-c"), os(b"conf\xff\xfe"), os(b"run")])
            .says(&["no such config file"]),
    );
    all.push(
        case(C, "dash_c_symlink_to_fifo")
            .file("fifo", Entry::Fifo)
            .file("link", Entry::Symlink("fifo".into()))
            .args(&["-c", "link", "info"])
            .says(&["link", not_regular]),
    );
    // vmk set reads and writes the config itself.
    all.push(
        case(C, "set_config_fifo")
            .file("vm-config", Entry::Fifo)
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "set_config_dev_zero")
            .file("vm-config", Entry::Symlink("/dev/zero".into()))
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "set_dash_c_fifo")
            .file("other", Entry::Fifo)
            .args(&["set", "-c", "other", "VMK_MEM", "2G"])
            .says(&["other", not_regular]),
    );
    all.push(
        case(C, "set_config_ten_mb")
            .config(format!("{BASE}# {}\n", "x".repeat(10 << 20)))
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "set_config_with_cmdsubst")
            .line("VMK_NAME=$(touch CANARY)")
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config:3:", "VMK_NAME", "command substitution"]),
    );
    all.push(
        case(C, "clone_config_fifo")
            .file("vm-config", Entry::Fifo)
            .args(&["clone", "-o", "out", "-n", "c1"])
            .says(&["vm-config", not_regular]),
    );
}

/// Disk images, kernels and files handed to commands that are not what they should be.
pub(crate) fn disks(all: &mut Vec<Case>) {
    use Category::Disks as C;
    for (name, entry) in [
        ("disk0_fifo", Entry::Fifo),
        ("disk0_char_device", Entry::Symlink("/dev/zero".into())),
        ("disk0_directory", Entry::Dir),
        ("disk0_symlink_to_fifo", Entry::Symlink("fifo".into())),
    ] {
        for dry in [false, true] {
            let args: &[&str] = if dry { &["-D", "run"] } else { &["run"] };
            all.push(
                case(C, &format!("{name}{}", if dry { "_dry_run" } else { "" }))
                    .file("fifo", Entry::Fifo)
                    .file("disk0.img", entry.clone())
                    .args(args)
                    .says(&["disk0.img"]),
            );
        }
    }
    for dry in [false, true] {
        let args: &[&str] = if dry { &["-D", "run"] } else { &["run"] };
        let suffix = if dry { "_dry_run" } else { "" };
        // A run refuses; a dry run shows the command line and warns, naming the key.
        let code = if dry { 0 } else { 2 };
        all.push(
            case(C, &format!("disk0_missing{suffix}"))
                .line("VMK_DISK0=missing.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK0", "missing.img"]),
        );
        all.push(
            case(C, &format!("disk1_missing{suffix}"))
                .line("VMK_DISK1=scratch1.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK1", "scratch1.img"]),
        );
        all.push(
            case(C, &format!("disk6_missing{suffix}"))
                .line("VMK_DISK6=/nonexistent/scratch6.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK6", "scratch6.img"]),
        );
        all.push(
            case(C, &format!("kernel_missing{suffix}"))
                .line("VMK_KERNEL=vmlinuz")
                .args(args)
                .code(code)
                .says(&["VMK_KERNEL", "vmlinuz"]),
        );
        all.push(
            case(C, &format!("initrd_missing{suffix}"))
                .line("VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img")
                .file("vmlinuz", Entry::Bytes(b"not really a kernel".to_vec()))
                .args(args)
                .code(code)
                .says(&["VMK_INITRD", "initrd.img"]),
        );
    }
    all.push(
        case(C, "disk0_leading_dash")
            .line("VMK_DISK0=-drive.img")
            .file("-drive.img", Entry::Bytes(vec![0; 512]))
            .fine()
            .says(&["-drive.img,format=raw"]),
    );
    all.push(
        case(C, "disk0_escape_in_file_name")
            .line(b"VMK_DISK0='d\x1b[2J.img'")
            .file("d\x1b[2J.img", Entry::Bytes(vec![0; 512]))
            .args(&["-D", "run"])
            .says(&["vm-config:3:", "VMK_DISK0"]),
    );
    all.push(
        case(C, "disk0_qcow2_magic_only")
            .file("disk0.img", Entry::Bytes(b"QFI\xfb".to_vec()))
            .fine()
            .says(&["format=qcow2"]),
    );
    all.push(
        case(C, "run_with_good_config_calls_qemu")
            .args(&["run"])
            .code(1)
            .qemu()
            .writes()
            .says(&["pidfile"]),
    );
    // Files given to commands.
    all.push(
        case(C, "fsnap_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["fsnap", "fifo"])
            .code(2)
            .says(&["fifo", "not a regular file"]),
    );
    all.push(
        case(C, "fsnap_dev_zero")
            .args(&["fsnap", "/dev/zero"])
            .code(2)
            .says(&["/dev/zero", "not a regular file"]),
    );
    all.push(
        case(C, "fsnap_directory")
            .file("dir", Entry::Dir)
            .args(&["fsnap", "dir"])
            .code(2)
            .says(&["dir"]),
    );
    all.push(
        case(C, "fsnap_missing")
            .args(&["fsnap", "missing"])
            .code(2)
            .says(&["missing"]),
    );
    all.push(
        case(C, "cpfile_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["cpfile", "fifo", "copy"])
            .code(2)
            .says(&["fifo", "not a regular file"]),
    );
    all.push(
        case(C, "cpfile_dev_null")
            .args(&["cpfile", "/dev/null", "copy"])
            .code(2)
            .says(&["/dev/null", "not a regular file"]),
    );
    all.push(
        case(C, "cpfile_onto_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["cpfile", "disk0.img", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["ayinstall", "profile", "--check", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_dev_zero")
            .args(&["ayinstall", "profile", "--check", "/dev/zero"])
            .code(1)
            .says(&["/dev/zero"]),
    );
    all.push(
        case(C, "profile_snippet_list_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["ayinstall", "profile", "-f", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_ten_mb_garbage")
            .file("big.xml", Entry::Bytes(vec![b'<'; 10 << 20]))
            .args(&["ayinstall", "profile", "--check", "big.xml"])
            .code(1)
            .says(&["big.xml"]),
    );
}
