//! `vmk libvirt` before it asks libvirt anything: a file the config names and the VM would
//! open is missing, and define refuses as `vmk run` refuses (exit 2, file:line and key),
//! without calling virsh.

use std::path::Path;

use vmk_testkit::isolation::TestEnv;

/// A `virsh` that only records that it was called.
fn fake_virsh(bin: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(bin).unwrap();
    let calls = bin.join("virsh-calls");
    vmk_testkit::write_executable(
        &bin.join("virsh"),
        &format!("#!/bin/sh\necho \"$*\" >> '{}'\nexit 1\n", calls.display()),
    )
    .unwrap();
    calls
}

#[test]
fn define_refuses_a_missing_iso_like_run_without_asking_libvirt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("disk0.img"), [0u8; 512]).unwrap();
    std::fs::write(
        dir.join("vm-config"),
        "VMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\nVMK_ISO=product-base.iso\n",
    )
    .unwrap();
    let calls = fake_virsh(&dir.join("bin"));
    let env = TestEnv::inside(dir).unwrap();
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let define = |tool: &str, args: &[&str]| {
        env.command(tool)
            .args(args)
            .current_dir(dir)
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let lv = define(env!("CARGO_BIN_EXE_vmk-libvirt"), &["define"]);
    let lv_err = String::from_utf8_lossy(&lv.stderr);
    assert_eq!(lv.status.code(), Some(2), "{lv_err}");
    for want in [
        "vm-config:4",
        "VMK_ISO",
        "install medium",
        "product-base.iso does not exist",
    ] {
        assert!(lv_err.contains(want), "no {want:?} in: {lv_err}");
    }
    assert!(
        !calls.exists(),
        "virsh was called: {:?}",
        std::fs::read_to_string(&calls)
    );
    // the same words as vmk run's refusal (after each tool's name)
    vmk_testkit::require(&[vmk_testkit::Need::Built("vmk-run")]);
    let run = define(
        &vmk_testkit::workspace_bin("vmk-run").display().to_string(),
        &["run"],
    );
    let run_err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{run_err}");
    let message = |s: &str| s.split_once(": ").map(|(_, m)| m.trim().to_string());
    assert_eq!(message(&lv_err), message(&run_err));

    // a dry run warns and goes on
    let dry = define(env!("CARGO_BIN_EXE_vmk-libvirt"), &["-D", "define"]);
    let dry_err = String::from_utf8_lossy(&dry.stderr);
    assert!(dry_err.contains("VMK_ISO"), "{dry_err}");
}
