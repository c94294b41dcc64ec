//! Hostile-input cases: values of every key.

use super::*;

/// Values: each key's bad values (line 3 of a good config; `vmk run` for real), values in
/// the environment, keys spelled wrong, and values that are fine however odd they look.
pub(crate) fn values(all: &mut Vec<Case>) {
    use Category::Values as C;
    let bad: &[(&str, &[&[u8]])] = &[
        ("VMK_NAME", &[b"a,b", b"'a b'", b"\"x\x1by\"", b"'..,,'"]),
        (
            "VMK_TAG",
            &[b"\"\x1b]0;owned\x07\"", b"'a\x00b'", b"'\x1b[2J'"],
        ),
        (
            "VMK_VNC",
            &[b"100", b"-1", b"abc", b"99999999999999999999999", b"1e2"],
        ),
        (
            "VMK_MEM",
            &[
                b"lots",
                b"-1",
                b"0",
                b"1.5G",
                b"18446744073709551616",
                b"99999999999T",
                b"2X",
            ],
        ),
        ("VMK_CPU", &[b"0", b"1025", b"-1", b"four", b"4294967297"]),
        ("VMK_DISK0", &[b"'disk\x00.img'", b"\"disk\x1b[2J.img\""]),
        (
            "VMK_DISK0_FORMAT",
            &[b"vmdk", b"qcow2,backing_file=/etc/shadow"],
        ),
        ("VMK_DISK0_CACHE", &[b"fast", b"none,aio=native"]),
        ("VMK_DISK_CACHE", &[b"fast"]),
        ("VMK_DISK_BUS", &[b"usb", b"virtio,x=y"]),
        ("VMK_DISK1", &[b"'\x1b[2J'"]),
        ("VMK_DISK2", &[b"'a\x07b'"]),
        ("VMK_DISK3", &[b"'a\x00b'"]),
        ("VMK_DISK4", &[b"'a\x7fb'"]),
        ("VMK_DISK5", &[b"'a\x08b'"]),
        ("VMK_DISK6", &[b"'a\x1bb'"]),
        ("VMK_ISO", &[b"'\x1b]0;x\x07.iso'"]),
        ("VMK_ISO_DIR", &[b"'iso\x00dir'"]),
        ("VMK_KERNEL", &[b"'vmlinuz\x1b[2J'"]),
        ("VMK_INITRD", &[b"'initrd\x07'"]),
        ("VMK_APPEND", &[b"'console=ttyS0 \x1b[2J'"]),
        ("VMK_ARCH", &[b"'x86 64'", b"x86_64,evil"]),
        ("VMK_ACCEL", &[b"hvf", b"kvm:tcg"]),
        ("VMK_MACHINE", &[b"q35,smm=off", b"'pc q35'"]),
        ("VMK_CPU_MODEL", &[b"'host\x1b[2J'"]),
        ("VMK_NET_TYPE", &[b"tap", b"user,hostfwd=tcp::22-:22"]),
        ("VMK_BRIDGE", &[b"br0,script=/tmp/x", b"'br 0'"]),
        (
            "VMK_MAC_BASE_FORMAT",
            &[
                b"%s",
                b"%n",
                b"52:54:00:00:00:%02x%02x",
                b"52:54:00:00:00:%99999999999999999999x",
                b"52:54:00:00:00:01",
            ],
        ),
        ("VMK_IP", &[b"localhost", b"999.1.1.1"]),
        ("VMK_HOSTNAME", &[b"-bad", b"'a b'", b"a_b"]),
        ("VMK_TELNET_BASE", &[b"0", b"65536", b"-1", b"65535"]),
        ("VMK_SSH_BASE", &[b"0", b"70000"]),
        ("VMK_LISTEN", &[b"0.0.0.0:22", b"example.org"]),
        ("VMK_CONSOLE", &[b"serial", b"telnet,server"]),
        ("VMK_VNC_SOCKET", &[b"maybe"]),
        ("VMK_QEMU", &[b"'/usr/bin/qemu\x1b[2J'"]),
        ("VMK_INST_DISK0", &[b"0", b"30Q", b"99999999999999999999T"]),
        ("VMK_INST_DISK", &[b"-5"]),
        ("VMK_INST_APPEND", &[b"'textmode=1\x1b[2J'"]),
        ("VMK_EXTRA_ARGS", &[b"\"-device 'x\""]),
        ("VMK_SSH_CREDENTIAL", &[b"perhaps"]),
        ("VMK_CLOUD_INIT", &[b"2"]),
    ];
    for (key, values) in bad {
        for (i, v) in values.iter().enumerate() {
            let mut line = format!("{key}=").into_bytes();
            line.extend_from_slice(v);
            all.push(
                case(C, &format!("{}_{}", key.to_lowercase(), i + 1))
                    .line(line)
                    .says(&["vm-config:3:", key]),
            );
        }
    }
    all.push(
        case(C, "hostname_too_long")
            .line(format!("VMK_HOSTNAME={}", "a".repeat(300)))
            .says(&["vm-config:3:", "VMK_HOSTNAME"]),
    );
    all.push(
        case(C, "ssh_base_past_the_last_port")
            .line("VMK_VNC=99\nVMK_SSH_BASE=65500")
            .says(&["VMK_SSH_BASE", "65535"]),
    );
    all.push(
        case(C, "mac_format_for_a_high_vm_number")
            .line("VMK_VNC=99\nVMK_MAC_BASE_FORMAT=52:54:00:00:00:%02d")
            .code(0)
            .fine(),
    );
    all.push(
        case(C, "initrd_without_kernel")
            .line("VMK_INITRD=initrd.img")
            .file("initrd.img", Entry::Bytes(b"x".to_vec()))
            .says(&["VMK_INITRD", "VMK_KERNEL"]),
    );
    for (name, key, suggestion) in [
        ("lowercase_key", "vmk_mem", "VMK_MEM"),
        ("miscased_key", "VMK_mem", "VMK_MEM"),
        ("mixed_case_key", "Vmk_Mem", "VMK_MEM"),
        ("typo_key", "VMK_MEMM", "VMK_MEM"),
        ("typo_key_cache", "VMK_DISK_CAHCE", "VMK_DISK_CACHE"),
    ] {
        all.push(
            case(C, name)
                .line(format!("{key}=2G"))
                .says(&["vm-config:3:", key, suggestion]),
        );
    }
    // In the environment.
    all.push(
        case(C, "env_bad_mem")
            .env("VMK_MEM", "lots")
            .says(&["environment", "VMK_MEM"]),
    );
    all.push(
        case(C, "env_escape_sequence")
            .env("VMK_TAG", "\x1b]0;owned\x07")
            .says(&["environment", "VMK_TAG"]),
    );
    all.push(
        case(C, "env_cmdsubst_is_text")
            .env("VMK_TAG", "$(touch CANARY)")
            .fine(),
    );
    all.push(
        case(C, "env_non_utf8")
            .env("VMK_MEM", os(b"\xff\xfe2G"))
            .says(&["environment", "VMK_MEM"]),
    );
    all.push(
        case(C, "env_huge_value")
            .env("VMK_TAG", "e".repeat(100 << 10))
            .says(&["environment", "VMK_TAG"])
            .hides("e".repeat(200)),
    );
    // Fine however odd: a dry run shows them, escaped where qemu needs it.
    all.push(
        case(C, "disk_path_with_commas")
            .line("VMK_DISK0='a,b,format=qcow2.img'")
            .file("a,b,format=qcow2.img", Entry::Bytes(vec![0; 512]))
            .fine()
            .says(&["file=", "a,,b,,format=qcow2.img"]),
    );
    all.push(
        case(C, "name_is_plain")
            .line("VMK_NAME=my-vm.1")
            .fine()
            .says(&["guest=my-vm.1"]),
    );
    all.push(
        case(C, "mem_with_spaces")
            .line("VMK_MEM=' 4G '")
            .fine()
            .says(&["-m 4096"]),
    );
    all.push(
        case(C, "extra_args_are_words_not_shell")
            .line("VMK_EXTRA_ARGS='-device virtio-rng-pci $(touch CANARY) `id`'")
            .fine()
            .says(&["'$(touch'", "CANARY)'"]),
    );
    all.push(
        case(C, "cpu_model_with_flags")
            .line("VMK_CPU_MODEL='qemu64,+ssse3'")
            .fine()
            .says(&["qemu64,+ssse3"]),
    );
    all.push(
        case(C, "tag_with_unicode")
            .line("VMK_TAG=\"größer als ≥ 😀\"")
            .fine(),
    );
}
