//! Hostile-input cases: the arguments of every tool.

use super::*;

/// Command lines of every tool.
pub(crate) fn arguments(all: &mut Vec<Case>) {
    use Category::Arguments as C;
    let huge = "h".repeat(100 << 10);
    let esc = "\x1b]0;owned\x07\x1b[2J";
    let usage: &[(&str, &[&str], &[&str])] = &[
        ("no_arguments", &[], &["Usage: vmk"]),
        ("unknown_command", &["nosuch"], &["nosuch"]),
        ("unknown_command_escape", &[esc], &["no such command"]),
        ("help_unknown", &["help", "nosuch"], &["nosuch"]),
        ("help_escape", &["help", esc], &["no such command"]),
        ("dash_c_without_file", &["-c"], &["-c"]),
        ("run_unknown_option", &["run", "--nosuch"], &["--nosuch"]),
        ("run_extra_argument", &["run", "extra"], &["extra"]),
        (
            "run_escape_argument",
            &["run", esc],
            &["unexpected argument"],
        ),
        ("run_json_with_value", &["run", "--json=yes"], &["--json"]),
        ("info_extra", &["info", "--json", "x"], &["x"]),
        ("ps_unknown_option", &["ps", "--all"], &["--all"]),
        ("isrunning_extra", &["isrunning", "x"], &["x"]),
        ("stop_negative_timeout", &["stop", "-t", "-1"], &["-1"]),
        (
            "stop_huge_timeout",
            &["stop", "-t", "99999999999999999999999"],
            &["--timeout"],
        ),
        (
            "stop_word_timeout",
            &["stop", "--timeout", "soon"],
            &["--timeout"],
        ),
        ("kill_extra", &["kill", "-9"], &["-9"]),
        ("console_bad_wait", &["console", "-w", "x"], &["--wait"]),
        ("console_negative_wait", &["console", "-w", "-5"], &["-5"]),
        (
            "waitssh_bad_timeout",
            &["waitssh", "-t", "x"],
            &["--timeout"],
        ),
        (
            "waitssh_negative_timeout",
            &["waitssh", "-t", "-1"],
            &["-1"],
        ),
        ("snap_unknown", &["snap", "nosuch"], &["nosuch"]),
        ("snap_run_extra", &["snap", "run", "x"], &["x"]),
        ("dsnap_unknown", &["dsnap", "nosuch"], &["nosuch"]),
        ("dsnap_revert_missing_name", &["dsnap", "revert"], &["NAME"]),
        (
            "dsnap_revert_traversal",
            &["dsnap", "revert", "../../etc/passwd"],
            &["../../etc/passwd"],
        ),
        (
            "dsnap_rm_traversal",
            &["dsnap", "rm", "../disk0.img"],
            &["../disk0.img"],
        ),
        (
            "dsnap_revert_escape",
            &["dsnap", "revert", esc],
            &["no snapshot"],
        ),
        ("fsnap_missing_file", &["fsnap"], &["FILE"]),
        ("cpfile_one_argument", &["cpfile", "disk0.img"], &["DST"]),
        // `clone` alone is the original's `./<name>-clone` (vmk-clone/tests/cli.rs)
        (
            "clone_name_with_slash",
            &["clone", "-o", "out", "-n", "a/b"],
            &["a/b"],
        ),
        (
            "clone_name_empty",
            &["clone", "-o", "out", "-n", ""],
            &["-n"],
        ),
        (
            "clone_name_dotdot",
            &["clone", "-o", "out", "-n", ".."],
            &[".."],
        ),
        (
            "clone_name_dot",
            &["clone", "-o", "out", "-n", "."],
            &["-n"],
        ),
        (
            "clone_name_escape",
            &["clone", "-o", "out", "-n", esc],
            &["control character"],
        ),
        (
            "clone_vnc_100",
            &["clone", "-o", "out", "-n", "c", "--vnc", "100"],
            &["--vnc"],
        ),
        (
            "clone_vnc_negative",
            &["clone", "-o", "out", "-n", "c", "--vnc", "-1"],
            &["-1"],
        ),
        ("set_nothing", &["set"], &["KEY"]),
        ("set_missing_value", &["set", "VMK_MEM"], &["VALUE"]),
        (
            "set_bad_mem",
            &["set", "VMK_MEM", "lots"],
            &["VMK_MEM", "lots"],
        ),
        (
            "set_typo_key",
            &["set", "VMK_MEMM", "1"],
            &["VMK_MEMM", "VMK_MEM"],
        ),
        (
            "set_typo_short_key",
            &["set", "memm", "1"],
            &["memm", "VMK_MEM"],
        ),
        (
            "set_key_with_space",
            &["set", "A B", "1"],
            &["not a key name"],
        ),
        ("set_empty_key", &["set", "", "1"], &["not a key name"]),
        ("set_escape_key", &["set", esc, "1"], &["not a key name"]),
        ("set_escape_value", &["set", "VMK_TAG", esc], &["VMK_TAG"]),
        (
            "set_newline_in_name",
            &["set", "VMK_NAME", "a\nb"],
            &["VMK_NAME"],
        ),
        (
            "set_cmdsubst_name",
            &["set", "VMK_NAME", "$(touch CANARY)"],
            &["VMK_NAME"],
        ),
        ("set_vnc_100", &["set", "VMK_VNC", "100"], &["VMK_VNC"]),
        (
            "set_port_too_high",
            &["set", "VMK_TELNET_BASE", "65536"],
            &["VMK_TELNET_BASE"],
        ),
        (
            "set_bad_bool",
            &["set", "cloud_init", "maybe"],
            &["VMK_CLOUD_INIT"],
        ),
        (
            "set_mem_huge",
            &["set", "mem", "99999999999T"],
            &["VMK_MEM"],
        ),
        (
            "completions_unknown_shell",
            &["completions", "tcsh"],
            &["tcsh"],
        ),
        ("sshkeygen_bad_type", &["sshkeygen", "-t", "dsa"], &["dsa"]),
        ("sshkey_unknown", &["sshkey", "nosuch"], &["nosuch"]),
        ("scp_one_argument", &["scp", "x"], &["GUESTPATH"]),
        (
            "mount_bad_backend",
            &["-D", "mount", "--backend", "nosuch"],
            &["nosuch"],
        ),
        ("ayinstall_unknown", &["ayinstall", "nosuch"], &["nosuch"]),
        (
            "ayinstall_bad_timeout",
            &["-D", "ayinstall", "--timeout", "x"],
            &["--timeout"],
        ),
        (
            "profile_snippet_traversal",
            &["ayinstall", "profile", "-s", "../../etc/passwd"],
            &["../../etc/passwd"],
        ),
        (
            "profile_snippet_escape",
            &["ayinstall", "profile", "-s", esc],
            &["snippet"],
        ),
        ("bootstrap_no_dir", &["-D", "bootstrap"], &["DIR"]),
        (
            "bootstrap_bad_vnc",
            &["-D", "bootstrap", "--vnc", "100", "new"],
            &["--vnc"],
        ),
        (
            "bootstrap_bad_size",
            &["-D", "bootstrap", "--size", "lots", "new"],
            &["--size"],
        ),
        (
            "bootstrap_bad_name",
            &["-D", "bootstrap", "--name", "a,b", "new"],
            &["--name"],
        ),
        (
            "bootstrap_bad_distro",
            &["-D", "bootstrap", "--distro", "gentoo", "new"],
            &["gentoo"],
        ),
    ];
    for (name, args, says) in usage {
        all.push(case(C, name).args(args).says(says));
    }
    all.push(
        case(C, "console_nan_wait")
            .args(&["console", "-w", "NaN"])
            .code(1)
            .says(&["not running"]),
    );
    all.push(
        case(C, "huge_command_name")
            .args(&[huge.as_str()])
            .says(&["no such command"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_unknown_option")
            .args(&["run", &format!("--{huge}")])
            .says(&["unexpected argument"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_set_key")
            .args(&["set", &format!("VMK_{huge}"), "1"])
            .says(&["unknown key"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_clone_name")
            .args(&["clone", "-o", "out", "-n", huge.as_str()])
            .says(&["-n"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "clone_name_too_long_for_the_filesystem")
            .args(&["clone", "-o", "out", "-n", &"n".repeat(300)])
            .says(&["-n"]),
    );
    all.push(
        case(C, "non_utf8_argument")
            .args(&[os(b"set"), os(b"VMK_TAG"), os(b"\xff\xfe")])
            .says(&["UTF-8"]),
    );
    all.push(
        case(C, "non_utf8_command")
            .args(&[os(b"r\xffun")])
            .says(&["UTF-8"]),
    );
    // Fine: they run and change only what they should.
    all.push(
        case(C, "set_mem")
            .args(&["set", "VMK_MEM", "4G"])
            .code(0)
            .writes()
            .says(&["VMK_MEM=4G"]),
    );
    all.push(
        case(C, "set_shell_text_is_quoted")
            .args(&["set", "VMK_TAG", "$(touch CANARY); `id`"])
            .code(0)
            .writes(),
    );
    all.push(
        case(C, "set_dry_run_writes_nothing")
            .args(&["-D", "set", "VMK_MEM", "4G"])
            .code(0),
    );
    all.push(case(C, "newconfig").args(&["newconfig"]).code(0));
    all.push(case(C, "info").args(&["info"]).code(0).says(&["stopped"]));
    all.push(case(C, "isrunning_not").args(&["isrunning"]).code(1));
    all.push(case(C, "dsnap_list_empty").args(&["dsnap", "list"]).code(0));
    all.push(
        case(C, "many_verbose_flags")
            .args(&[&["-D"][..], &["-v"; 200][..], &["run"][..]].concat())
            .code(0)
            .max_output(64 << 10),
    );
}
