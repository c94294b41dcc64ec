//! Hostile-input cases: config syntax.

use super::*;

/// Config syntax: line 3 of an otherwise good config. `vmk run` for real (with the fake
/// qemu): a refused config runs nothing at all.
pub(crate) fn configs(all: &mut Vec<Case>) {
    use Category::Configs as C;
    let subst = "command substitution is not supported";
    let refused: &[(&str, &str, &[&str])] = &[
        (
            "cmdsubst_bare",
            "VMK_NAME=$(touch CANARY)",
            &["VMK_NAME", subst],
        ),
        (
            "cmdsubst_double_quoted",
            "VMK_TAG=\"x$(touch CANARY)\"",
            &["VMK_TAG", subst],
        ),
        (
            "cmdsubst_nested",
            "VMK_TAG=\"$(touch $(echo CANARY))\"",
            &["VMK_TAG", subst],
        ),
        (
            "cmdsubst_after_reference",
            "VMK_TAG=${VMK_DISK0}$(touch CANARY)",
            &["VMK_TAG", subst],
        ),
        (
            "backticks_bare",
            "VMK_NAME=`touch CANARY`",
            &["VMK_NAME", subst],
        ),
        (
            "backticks_double_quoted",
            "VMK_TAG=\"a`touch CANARY`\"",
            &["VMK_TAG", subst],
        ),
        ("arithmetic", "VMK_MEM=$((1024*2))", &["VMK_MEM", subst]),
        ("semicolon", "VMK_NAME=a;touch CANARY", &["VMK_NAME", "`;`"]),
        ("pipe", "VMK_NAME=a|touch CANARY", &["VMK_NAME", "`|`"]),
        ("and_list", "VMK_NAME=a&&touch CANARY", &["VMK_NAME", "`&`"]),
        ("background", "VMK_NAME=a&", &["VMK_NAME", "`&`"]),
        ("redirect_out", "VMK_NAME=a>CANARY", &["VMK_NAME", "`>`"]),
        (
            "redirect_in",
            "VMK_NAME=a</etc/passwd",
            &["VMK_NAME", "`<`"],
        ),
        ("subshell", "VMK_NAME=(touch CANARY)", &["VMK_NAME", "`(`"]),
        (
            "text_after_value",
            "VMK_NAME=a touch CANARY",
            &["VMK_NAME", "unexpected text"],
        ),
        (
            "space_after_equals",
            "VMK_MEM= 2048",
            &["VMK_MEM", "unexpected text"],
        ),
        (
            "param_operator",
            "VMK_NAME=${X:-$(touch CANARY)}",
            &["VMK_NAME", "the word of ${NAME:-word} must be plain text"],
        ),
        (
            "param_unclosed_brace",
            "VMK_NAME=${VMK_VNC",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "param_empty_brace",
            "VMK_NAME=${}",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "param_positional",
            "VMK_NAME=${1}",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "reference_unset",
            "VMK_NAME=${VMK_NOPE}",
            &["VMK_NAME", "${VMK_NOPE} is not set"],
        ),
        (
            "reference_later_key",
            "VMK_TAG=$VMK_NAME\nVMK_NAME=x",
            &["VMK_TAG", "${VMK_NAME} is not set"],
        ),
        (
            "unclosed_single_quote",
            "VMK_NAME='abc",
            &["VMK_NAME", "unterminated single quote"],
        ),
        (
            "unclosed_double_quote",
            "VMK_TAG=\"abc",
            &["VMK_TAG", "unterminated double quote"],
        ),
        (
            "unclosed_quote_swallows_the_rest",
            "VMK_TAG=\"x\nVMK_MEM=1\n# touch CANARY",
            &["VMK_TAG", "unterminated double quote"],
        ),
        ("plain_command", "touch CANARY", &["expected an assignment"]),
        (
            "leading_semicolon",
            "; touch CANARY",
            &["expected an assignment"],
        ),
        ("export_alone", "export", &["expected an assignment"]),
        (
            "export_without_value",
            "export VMK_MEM",
            &["expected an assignment"],
        ),
        (
            "export_option",
            "export -n VMK_MEM=2048",
            &["expected an assignment"],
        ),
        (
            "export_twice",
            "export export VMK_MEM=2048",
            &["expected an assignment"],
        ),
        (
            "readonly",
            "readonly VMK_MEM=2048",
            &["expected an assignment"],
        ),
        ("local", "local VMK_MEM=2048", &["expected an assignment"]),
        (
            "space_before_equals",
            "VMK_MEM =2048",
            &["expected an assignment"],
        ),
        (
            "if_statement",
            "if true; then touch CANARY; fi",
            &["expected an assignment"],
        ),
        (
            "function",
            "f() { touch CANARY; }",
            &["expected an assignment"],
        ),
        (
            "here_document",
            "cat <<EOF >CANARY",
            &["expected an assignment"],
        ),
        ("dot_source", ". ./CANARY", &["expected an assignment"]),
        ("source", "source /etc/passwd", &["expected an assignment"]),
        ("eval", "eval 'touch CANARY'", &["expected an assignment"]),
        (
            "alias",
            "alias ls='touch CANARY'",
            &["expected an assignment"],
        ),
        ("set_option", "set -e", &["expected an assignment"]),
        (
            "key_starts_with_digit",
            "1VMK=2",
            &["expected an assignment"],
        ),
        ("key_with_umlaut", "VMK_NÄME=x", &["expected an assignment"]),
        ("key_with_dash", "VMK-MEM=1", &["expected an assignment"]),
    ];
    for (name, line, says) in refused {
        all.push(case(C, name).line(line).says(&["vm-config:3:"]).says(says));
    }
    all.push(
        case(C, "escape_sequence_in_key")
            .line(b"VMK_\x1b]0;owned\x07MEM=1")
            .says(&["vm-config:3:", "expected an assignment"]),
    );
    all.push(
        case(C, "cr_only_line_endings")
            .config("VMK_DISK0=disk0.img\rVMK_ACCEL=tcg\r")
            .says(&["vm-config:1:", "VMK_DISK0"]),
    );
    all.push(
        case(C, "crlf_line_endings")
            .config("VMK_DISK0=disk0.img\r\nVMK_ACCEL=tcg\r\nVMK_MEM=2G\r\n")
            .fine()
            .says(&["-m 2048"]),
    );
    all.push(
        case(C, "tabs_and_comments_everywhere")
            .config("#!/bin/sh\n\t# c\n\texport\tVMK_DISK0='disk0.img'\t# c\n VMK_ACCEL=tcg #\n")
            .fine()
            .says(&["disk0.img"]),
    );
    all.push(
        case(C, "quoted_shell_is_text")
            .line("VMK_TAG='$(touch CANARY); `id` | & ;'")
            .fine(),
    );
    all.push(
        case(C, "escape_sequences_in_a_comment")
            .line("# \x1b]0;owned\x07\x1b[2J\u{9b}")
            .fine(),
    );
    all.push(
        case(C, "empty_file")
            .config("")
            .says(&["VMK_DISK0 is not set"]),
    );
    all.push(
        case(C, "only_comments")
            .config("#!/bin/sh\n# nothing here\n\n")
            .says(&["VMK_DISK0 is not set"]),
    );
    all.push(
        case(C, "nul_bytes_only")
            .config(vec![0u8; 4096])
            .says(&["vm-config:1:"]),
    );
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0".to_vec();
    elf.extend((0..4000u32).map(|i| (i * 7 % 256) as u8));
    all.push(case(C, "binary_file").config(elf).says(&["vm-config:1:"]));
    all.push(
        case(C, "invalid_utf8_in_comment")
            .line(b"# caf\xe9 \xff\xfe")
            .says(&["vm-config:3:", "UTF-8"]),
    );
    all.push(
        case(C, "invalid_utf8_in_value")
            .line(b"VMK_TAG=\"\xc3\x28\"")
            .says(&["vm-config:3:", "UTF-8"]),
    );
    all.push(
        case(C, "bom_at_start")
            .config(format!("\u{feff}{BASE}VMK_MEM=2G\n"))
            .fine()
            .says(&["-m 2048"]),
    );
    all.push(
        case(C, "bom_inside_the_file")
            .line("\u{feff}VMK_MEM=2G")
            .says(&["vm-config:3:", "\\u{feff}"]),
    );
    let ten_mb = 10 << 20;
    all.push(
        case(C, "ten_mb_comment_line")
            .config(format!("{BASE}# {}\n", "x".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "ten_mb_value")
            .config(format!("{BASE}VMK_TAG=\"{}\"\n", "y".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("y".repeat(200)),
    );
    all.push(
        case(C, "ten_mb_without_newline")
            .config(format!("{BASE}VMK_TAG={}", "z".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("z".repeat(200)),
    );
    all.push(
        case(C, "two_mb_of_comment_lines")
            .config(format!("{BASE}{}", "# a comment line\n".repeat(2 << 16)))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "hundred_kb_value")
            .config(format!("{BASE}VMK_TAG=\"{}\"\n", "v".repeat(100 << 10)))
            .says(&["vm-config:3:", "VMK_TAG"])
            .hides("v".repeat(200)),
    );
    let doubling = |key: &str, seed: &str, lines: usize| {
        let mut s = format!("{BASE}{key}={seed}\n");
        for _ in 0..lines {
            s.push_str(&format!("{key}=${{{key}}}${{{key}}}\n"));
        }
        s
    };
    all.push(
        case(C, "self_doubling_reference")
            .config(doubling("A", "xxxxxxxxxxxxxxxx", 40))
            .says(&["vm-config:", "A:"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "self_doubling_vmk_key")
            .config(
                doubling("VMK_TAG", "$(touch CANARY)", 40)
                    .replace("=$(", "='$(")
                    .replace("Y)\n", "Y)'\n"),
            )
            .says(&["vm-config:", "VMK_TAG"])
            .hides("CANARY)$(touch CANARY)$(touch CANARY)"),
    );
    let mut cross = format!("{BASE}A=abcdefgh\n");
    for _ in 0..20 {
        cross.push_str("B=${A}${A}${A}\nA=\"${B}$B\"\n");
    }
    all.push(
        case(C, "doubling_across_two_names")
            .config(cross)
            .says(&["vm-config:"])
            .hides("abcdefgh".repeat(30)),
    );
    all.push(
        case(C, "fifty_thousand_assignments")
            .config(format!("{BASE}{}", "VMK_TAG=x\n".repeat(50_000)))
            .fine(),
    );
    all.push(
        case(C, "long_unknown_vmk_key")
            .line(format!("VMK_{}=1", "A".repeat(100_000)))
            .says(&["vm-config:3:", "unknown key"])
            .hides("A".repeat(200)),
    );
    all.push(
        case(C, "long_name_outside_vmk")
            .line(format!("{}=1", "B".repeat(100_000)))
            .fine(),
    );
    all.push(
        case(C, "vmkrc_cmdsubst")
            .file("vmkrc", Entry::Bytes(b"VMK_MEM=$(touch CANARY)\n".to_vec()))
            .says(&["vmkrc:1:", "VMK_MEM", subst]),
    );
    all.push(
        case(C, "home_vmkrc_backticks")
            .file(
                ".vmkrc",
                Entry::Bytes(b"# mine\nVMK_TAG=`touch CANARY`\n".to_vec()),
            )
            .says(&[".vmkrc:2:", "VMK_TAG", subst]),
    );
    all.push(
        case(C, "home_vmkrc_semicolon")
            .file(
                ".vmkrc",
                Entry::Bytes(b"VMK_ISO_DIR=$HOME;touch CANARY\n".to_vec()),
            )
            .says(&[".vmkrc:1:", "VMK_ISO_DIR", "`;`"]),
    );
}
