//! The images vmk-ayinstall writes, read back by independent tools (isoinfo, blkid,
//! fsck.fat, mtools, python's XML parser), and the ISO reader against genisoimage's output.
//! Each test skips loudly when its tool is missing (and fails under VMK_TEST_REQUIRE_ALL).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::{run_system_tests, Need, SystemTest};

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "seed_iso_read_by_isoinfo_and_blkid",
            &[Need::Program("isoinfo"), Need::Program("blkid")],
            seed_iso_read_by_isoinfo_and_blkid,
        ),
        SystemTest::new(
            "tree_iso_read_by_isoinfo",
            &[Need::Program("isoinfo")],
            tree_iso_read_by_isoinfo,
        ),
        SystemTest::new(
            "floppy_read_by_fsck_fat_and_mtools",
            &[
                Need::Program("fsck.fat"),
                Need::Program("mdir"),
                Need::Program("mtype"),
                Need::Program("blkid"),
            ],
            floppy_read_by_fsck_fat_and_mtools,
        ),
        SystemTest::new(
            "loader_taken_off_genisoimage_media",
            &[Need::Program("genisoimage")],
            loader_taken_off_genisoimage_media,
        ),
        SystemTest::new(
            "assembled_profiles_parse_with_python_xml",
            &[Need::Program("python3")],
            assembled_profiles_parse_with_python_xml,
        ),
    ])
}

fn bin() -> Command {
    // the tests' private HOME, runtime directory and (absent) system config
    let mut c = vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(env!("CARGO_BIN_EXE_vmk-ayinstall"));
    c.env(
        "VMK_AUTOINST_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../autoinst"),
    );
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

/// Runs `cmd`, requiring success; returns stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn seed_iso_read_by_isoinfo_and_blkid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIvmktestkey vmk@test";
    std::fs::write(d.join("vm-key.pub"), format!("{key}\n"))?;
    let seed = d.join("seed.iso");
    let printed = run(bin()
        .current_dir(d)
        .args(["cloudinit", "--hostname", "guest7", "-o"])
        .arg(&seed))?;
    ensure!(
        printed.trim() == seed.display().to_string(),
        "prints the seed's path: {printed}"
    );

    let blkid = run(Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&seed))?;
    ensure!(blkid.contains("TYPE=iso9660\n"), "blkid type: {blkid}");
    ensure!(blkid.contains("LABEL=cidata\n"), "blkid label: {blkid}");

    let info = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&seed))?;
    for want in [
        "Volume id: cidata",
        "Joliet with UCS level 3 found",
        "Rock Ridge signatures version 1 found",
    ] {
        ensure!(info.contains(want), "isoinfo -d lacks {want:?}:\n{info}");
    }
    let rr = run(Command::new("isoinfo").args(["-R", "-f", "-i"]).arg(&seed))?;
    ensure!(
        sorted_lines(&rr) == ["/meta-data", "/user-data"],
        "Rock Ridge names: {rr}"
    );
    let joliet = run(Command::new("isoinfo").args(["-J", "-f", "-i"]).arg(&seed))?;
    ensure!(
        sorted_lines(&joliet) == ["/meta-data", "/user-data"],
        "Joliet names: {joliet}"
    );

    let user_data = run(Command::new("isoinfo")
        .args(["-R", "-x", "/user-data", "-i"])
        .arg(&seed))?;
    ensure!(
        user_data.starts_with("#cloud-config\n"),
        "user-data: {user_data}"
    );
    ensure!(
        user_data.contains(key),
        "user-data lacks the key: {user_data}"
    );
    ensure!(
        user_data.contains("disable_root: false"),
        "user-data: {user_data}"
    );
    let meta = run(Command::new("isoinfo")
        .args(["-J", "-x", "/meta-data", "-i"])
        .arg(&seed))?;
    ensure!(
        meta.contains("local-hostname: \"guest7\""),
        "meta-data: {meta}"
    );

    // Without options: seed.iso in the VM directory, the hostname from vm-config.
    std::fs::write(d.join("vm-config"), "VMK_HOSTNAME=fromconfig\n")?;
    let printed = run(bin().current_dir(d).env("HOME", d).arg("seed"))?;
    ensure!(
        printed.trim() == d.join("seed.iso").display().to_string(),
        "{printed}"
    );
    let meta = run(Command::new("isoinfo")
        .args(["-R", "-x", "/meta-data", "-i"])
        .arg(d.join("seed.iso")))?;
    ensure!(
        meta.contains("local-hostname: \"fromconfig\"")
            && meta.contains("instance-id: \"vmk-fromconfig\""),
        "meta-data: {meta}"
    );
    Ok(())
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// A deeper tree with many entries (directory extents over several sectors), a file of
/// several MB and an empty file, extracted by isoinfo byte for byte.
fn tree_iso_read_by_isoinfo() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let src = d.join("src");
    let mut expected = Vec::new();
    for i in 0..60 {
        let rel = format!("boot/x86_64/loader/file-with-a-long-name-{i:02}.cfg");
        write(
            &src.join(&rel),
            format!("content {i}\n").repeat(i + 1).as_bytes(),
        )?;
        expected.push(rel);
    }
    let big: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&src.join("boot/x86_64/loader/linux"), &big)?;
    write(&src.join("boot/x86_64/loader/initrd"), b"")?;
    write(&src.join("content.key"), b"key\n")?;
    let iso = d.join("tree.iso");
    run(bin()
        .args(["mkiso", "-V", "SLE-15-TEST", "-o"])
        .arg(&iso)
        .arg(&src))?;

    let listing = run(Command::new("isoinfo").args(["-R", "-f", "-i"]).arg(&iso))?;
    for rel in expected
        .iter()
        .chain([&"boot/x86_64/loader/linux".to_string()])
    {
        ensure!(
            listing.lines().any(|l| l == format!("/{rel}")),
            "isoinfo -R -f lacks /{rel}:\n{listing}"
        );
    }
    let out = Command::new("isoinfo")
        .args(["-R", "-x", "/boot/x86_64/loader/linux", "-i"])
        .arg(&iso)
        .output()?;
    ensure!(
        out.status.success() && out.stdout == big,
        "the 3 MB kernel differs after isoinfo -x ({} bytes)",
        out.stdout.len()
    );
    let some = run(Command::new("isoinfo")
        .args([
            "-R",
            "-x",
            "/boot/x86_64/loader/file-with-a-long-name-07.cfg",
            "-i",
        ])
        .arg(&iso))?;
    ensure!(some == "content 7\n".repeat(8), "file 07: {some:?}");
    // And our own reader finds the loader in it.
    let found = run(bin().arg("loader").arg(&iso))?;
    ensure!(
        found == "boot/x86_64/loader/linux\nboot/x86_64/loader/initrd\n",
        "loader: {found}"
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

fn floppy_read_by_fsck_fat_and_mtools() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let profile = "<?xml version=\"1.0\"?>\n<profile xmlns=\"http://www.suse.com/1.0/yast2ns\">\n"
        .to_string()
        + &"  <!-- padding so the file spans several clusters -->\n".repeat(40)
        + "</profile>\n";
    std::fs::write(d.join("autoinst.xml"), &profile)?;
    std::fs::write(d.join("notes.txt"), "second file\n")?;
    let img = d.join("fd.img");
    run(bin()
        .args(["mkfloppy", "-L", "AUTOINST", "-o"])
        .arg(&img)
        .arg(d.join("autoinst.xml"))
        .arg(format!(
            "A Long Name.text={}",
            d.join("notes.txt").display()
        )))?;
    ensure!(
        std::fs::metadata(&img)?.len() == 1_474_560,
        "a 1.44 MB image"
    );

    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg("-v")
        .arg(&img)
        .output()?;
    let fsck_text =
        String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
    ensure!(fsck.status.success(), "fsck.fat -n failed:\n{fsck_text}");
    ensure!(
        fsck_text.contains("FATs, 12 bit entries"),
        "not FAT12:\n{fsck_text}"
    );
    ensure!(
        !fsck_text
            .to_lowercase()
            .contains("free cluster summary wrong"),
        "{fsck_text}"
    );

    let mdir = run(Command::new("mdir").arg("-i").arg(&img).arg("::"))?;
    ensure!(
        mdir.contains("AUTOINST XML") && mdir.contains("autoinst.xml"),
        "mdir lacks AUTOINST.XML/autoinst.xml:\n{mdir}"
    );
    ensure!(
        mdir.contains("A Long Name.text"),
        "mdir lacks the long name:\n{mdir}"
    );
    ensure!(
        mdir.contains("Volume in drive : is AUTOINST"),
        "label:\n{mdir}"
    );
    let by_long = run(Command::new("mtype")
        .arg("-i")
        .arg(&img)
        .arg("::/autoinst.xml"))?;
    let by_short = run(Command::new("mtype")
        .arg("-i")
        .arg(&img)
        .arg("::/AUTOINST.XML"))?;
    ensure!(
        by_long == profile && by_short == profile,
        "mtype content differs"
    );
    let notes = run(Command::new("mtype")
        .arg("-i")
        .arg(&img)
        .arg("::/A Long Name.text"))?;
    ensure!(notes == "second file\n", "notes: {notes:?}");

    let blkid = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img))?;
    ensure!(
        blkid.contains("TYPE=vfat\n") && blkid.contains("LABEL=AUTOINST\n"),
        "blkid: {blkid}"
    );
    Ok(())
}

/// SUSE-layout media as genisoimage makes them: with Rock Ridge and Joliet, and plain
/// ISO 9660 (upper-case `LINUX.;1` names only); two architectures on one medium.
fn loader_taken_off_genisoimage_media() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let tree = d.join("tree");
    let kernel: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    write(&tree.join("boot/x86_64/loader/linux"), &kernel)?;
    write(&tree.join("boot/x86_64/loader/initrd"), b"x86_64 initrd\n")?;
    write(&tree.join("boot/aarch64/linux"), b"aarch64 kernel\n")?;
    write(&tree.join("boot/aarch64/initrd"), b"aarch64 initrd\n")?;
    write(&tree.join("media.1/products"), b"/ SLES 15\n")?;
    for (name, flags) in [
        ("rr-joliet", &["-R", "-J"][..]),
        ("plain", &[][..]),
        ("joliet", &["-J"][..]),
    ] {
        let iso = d.join(format!("{name}.iso"));
        run(Command::new("genisoimage")
            .args(["-quiet", "-V", "SLE-15"])
            .args(flags)
            .arg("-o")
            .arg(&iso)
            .arg(&tree))?;
        let out = d.join(format!("out-{name}"));
        std::fs::create_dir(&out)?;
        let o = bin()
            .env_remove("VMK_ARCH")
            .arg("loader")
            .arg("-o")
            .arg(&out)
            .arg(&iso)
            .output()?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(o.status.success(), "{name}: loader failed: {stderr}");
        ensure!(
            stderr.contains("found the x86_64 installer"),
            "{name}: says which arch: {stderr}"
        );
        ensure!(
            std::fs::read(out.join("linux"))? == kernel,
            "{name}: kernel differs"
        );
        ensure!(
            std::fs::read(out.join("initrd"))? == b"x86_64 initrd\n",
            "{name}: initrd differs"
        );
        let o = bin()
            .arg("loader")
            .args(["--arch", "aarch64", "-o"])
            .arg(&out)
            .arg(&iso)
            .output()?;
        ensure!(
            o.status.success(),
            "{name}: aarch64: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        ensure!(
            std::fs::read(out.join("linux"))? == b"aarch64 kernel\n",
            "{name}: aarch64 kernel"
        );
        let o = bin()
            .arg("loader")
            .args(["--arch", "s390x"])
            .arg(&iso)
            .output()?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(1),
            "{name}: a missing arch fails with 1"
        );
        ensure!(
            stderr.contains("no installer for s390x") && stderr.contains("aarch64, x86_64"),
            "{name}: {stderr}"
        );
    }
    Ok(())
}

/// Every snippet alone, and the default list, assembled and parsed by python's expat:
/// exactly the chosen sections, in order, under `<profile>`.
fn assembled_profiles_parse_with_python_xml() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let list = run(bin().args(["profile", "--list"]))?;
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    ensure!(
        names.len() >= 13,
        "at least one snippet per section: {list}"
    );
    for name in &names {
        let out = run(bin().args(["profile", "-s", name]))?;
        let sections = python_sections(dir.path(), &out)?;
        ensure!(sections.len() == 1, "{name}: one section, got {sections:?}");
    }
    let default_list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../autoinst/default.list");
    let out = run(bin().args(["profile", "-f"]).arg(&default_list).args([
        "-s",
        "ntp/pool",
        "-s",
        "add-on/leap-update",
    ]))?;
    let sections = python_sections(dir.path(), &out)?;
    let want = [
        "general",
        "partitioning",
        "bootloader",
        "software",
        "users",
        "networking",
        "firewall",
        "timezone",
        "keyboard",
        "language",
        "services-manager",
        "ntp-client",
        "add-on",
    ];
    ensure!(sections == want, "sections {sections:?}");
    // `profile --check` agrees, and points into a broken file.
    let file = dir.path().join("profile.xml");
    let checked = run(bin().args(["profile", "--check"]).arg(&file))?;
    ensure!(
        checked.contains("well-formed profile with general, partitioning"),
        "{checked}"
    );
    std::fs::write(&file, out.replace("</bootloader>", "</bootlader>"))?;
    let o = bin().args(["profile", "--check"]).arg(&file).output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(1) && err.contains("profile.xml:") && err.contains("bootlader"),
        "{err}"
    );
    // Two snippets of one section are refused, naming both.
    let o = bin()
        .args([
            "profile",
            "-s",
            "users/root-test",
            "-s",
            "users/root-and-tester",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success()
            && err.contains("users/root-test and users/root-and-tester both set <users>"),
        "{err}"
    );
    Ok(())
}

/// Top-level element names under the root, parsed by python3's xml.dom.minidom; fails
/// when the root is not a yast2ns `profile`.
fn python_sections(dir: &Path, xml: &str) -> Result<Vec<String>> {
    let file: PathBuf = dir.join("profile.xml");
    std::fs::write(&file, xml)?;
    let script = "import sys, xml.dom.minidom as m\n\
        d = m.parse(sys.argv[1]).documentElement\n\
        assert d.tagName == 'profile', d.tagName\n\
        assert d.getAttribute('xmlns') == 'http://www.suse.com/1.0/yast2ns'\n\
        print('\\n'.join(c.tagName for c in d.childNodes if c.nodeType == c.ELEMENT_NODE))\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()?;
    if !out.status.success() {
        bail!(
            "python's XML parser rejects the profile: {}\n{xml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
