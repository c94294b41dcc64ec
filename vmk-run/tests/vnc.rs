//! `vmk vnc` and the VM's VNC display, read by an independent client: a few lines of RFB
//! (RFC 6143: handshake, no security, raw framebuffer) in this test, not qemu's or vmk's
//! code. The busybox guest shows its console on the VGA screen (`console=tty0`); the test
//! clears that console and fills it through the serial console, and the framebuffer read
//! over RFB follows: nearly empty, then full of text, and each time the same picture as
//! qemu's own `screendump`. `vmk vnc` hands the display's address to the viewer it finds
//! (a recording `vncviewer` first on PATH), and that address is the one read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::guest::{self, BUSYBOX_READY};
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::PidfileGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// A hang guard, not a timing claim.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "vnc_shows_the_guest_console_to_an_rfb_client",
        &[Need::Qemu, Need::Busybox, Need::Kernel],
        vnc_shows_the_console,
    )])
}

/// A picture: width, height and RGB bytes.
#[derive(Debug)]
struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Picture {
    /// The share of pixels that differ from the most common colour (the background).
    fn ink(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for p in self.rgb.chunks(3) {
            *counts.entry(p).or_insert(0usize) += 1;
        }
        let background = counts.values().max().copied().unwrap_or(0);
        let total = self.width * self.height;
        (total - background) as f64 / total as f64
    }

    /// The share of pixels that differ between two pictures of the same size.
    fn difference(&self, other: &Picture) -> Result<f64> {
        ensure!(
            (self.width, self.height) == (other.width, other.height),
            "sizes differ: {}x{} and {}x{}",
            self.width,
            self.height,
            other.width,
            other.height
        );
        let differ = self
            .rgb
            .chunks(3)
            .zip(other.rgb.chunks(3))
            .filter(|(a, b)| a != b)
            .count();
        Ok(differ as f64 / (self.width * self.height) as f64)
    }
}

fn read_u16(s: &mut TcpStream) -> Result<u16> {
    let mut b = [0; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut TcpStream) -> Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// An RFB session after the handshake: the connection and the framebuffer's size.
struct Rfb {
    s: TcpStream,
    width: u16,
    height: u16,
}

impl Rfb {
    /// Version 3.8, security type None, shared session; asks for 32-bit true colour
    /// (blue, green, red, unused in memory) and raw encoding.
    fn connect(port: u16) -> Result<Rfb> {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to the VNC port {port}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut version = [0; 12];
        s.read_exact(&mut version)?;
        ensure!(version.starts_with(b"RFB 003."), "not RFB: {version:?}");
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0; 1];
        s.read_exact(&mut n)?;
        ensure!(n[0] > 0, "the server refused the connection");
        let mut types = vec![0; usize::from(n[0])];
        s.read_exact(&mut types)?;
        ensure!(
            types.contains(&1),
            "no security type None offered: {types:?}"
        );
        s.write_all(&[1])?;
        ensure!(read_u32(&mut s)? == 0, "security handshake failed");
        s.write_all(&[1])?; // ClientInit: shared
        let width = read_u16(&mut s)?;
        let height = read_u16(&mut s)?;
        let mut format_and_name_len = [0; 20];
        s.read_exact(&mut format_and_name_len)?;
        let name_len = u32::from_be_bytes(format_and_name_len[16..20].try_into()?);
        let mut name = vec![0; name_len as usize];
        s.read_exact(&mut name)?;
        eprintln!(
            "RFB: {width}x{height}, desktop {:?}",
            String::from_utf8_lossy(&name)
        );
        // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 255 each, shifts
        // red 16, green 8, blue 0
        let mut msg = vec![0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0];
        msg.extend([0, 0, 0]);
        s.write_all(&msg)?;
        // SetEncodings: raw only
        s.write_all(&[2, 0, 0, 1, 0, 0, 0, 0])?;
        Ok(Rfb { s, width, height })
    }

    /// The whole framebuffer (a non-incremental update request, raw rectangles).
    fn capture(&mut self) -> Result<Picture> {
        let (w, h) = (usize::from(self.width), usize::from(self.height));
        let mut req = vec![3, 0, 0, 0, 0, 0];
        req.extend(self.width.to_be_bytes());
        req.extend(self.height.to_be_bytes());
        self.s.write_all(&req)?;
        let mut rgb = vec![0u8; w * h * 3];
        let mut covered = 0usize;
        while covered < w * h {
            let mut kind = [0; 1];
            self.s.read_exact(&mut kind)?;
            match kind[0] {
                0 => {}
                2 => continue, // Bell
                k => bail!("unexpected RFB server message {k}"),
            }
            let mut pad = [0; 1];
            self.s.read_exact(&mut pad)?;
            let rects = read_u16(&mut self.s)?;
            for _ in 0..rects {
                let x = usize::from(read_u16(&mut self.s)?);
                let y = usize::from(read_u16(&mut self.s)?);
                let rw = usize::from(read_u16(&mut self.s)?);
                let rh = usize::from(read_u16(&mut self.s)?);
                let encoding = read_u32(&mut self.s)? as i32;
                ensure!(
                    encoding == 0,
                    "the server sent encoding {encoding}, not raw"
                );
                let mut px = vec![0u8; rw * rh * 4];
                self.s.read_exact(&mut px)?;
                for row in 0..rh {
                    for col in 0..rw {
                        let p = &px[(row * rw + col) * 4..][..4];
                        let at = ((y + row) * w + x + col) * 3;
                        rgb[at..at + 3].copy_from_slice(&[p[2], p[1], p[0]]);
                    }
                }
                covered += rw * rh;
            }
        }
        Ok(Picture {
            width: w,
            height: h,
            rgb,
        })
    }
}

/// qemu's own picture of the display (QMP `screendump`, a binary PPM).
fn screendump(qmp: &Path, file: &Path) -> Result<Picture> {
    let mut q = vmk_common::qmp::Qmp::connect(qmp, Duration::from_secs(10))?;
    q.execute(
        "screendump",
        Some(serde_json::json!({ "filename": file.to_str().context("path")? })),
    )?;
    let data = std::fs::read(file)?;
    // "P6\n<w> <h>\n255\n" then RGB
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !data[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
    }
    ensure!(
        fields[0] == "P6" && fields[3] == "255",
        "not a PPM: {fields:?}"
    );
    let (width, height): (usize, usize) = (fields[1].parse()?, fields[2].parse()?);
    let rgb = data[at + 1..].to_vec();
    ensure!(rgb.len() == width * height * 3, "short PPM");
    Ok(Picture { width, height, rgb })
}

fn vmk_run(env: &TestEnv, dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    env.run_logged(
        env!("CARGO_BIN_EXE_vmk-run"),
        dir,
        args,
        stdin.map(str::as_bytes),
    )
}

fn vnc_shows_the_console() -> Result<()> {
    let g = guest::busybox_guest()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    std::fs::File::create(dir.join("disk0.raw"))?.set_len(16 << 20)?;
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=vnc\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\nVMK_CPU=1\n\
             VMK_ACCEL=tcg\nVMK_NET_TYPE=none\n{}VMK_KERNEL='{}'\nVMK_INITRD='{}'\n\
             VMK_APPEND='console=tty0 {}'\n",
            slot.config_line(),
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
    )?;
    let env = TestEnv::inside(dir)?;
    let armed = PidfileGuard::arm(&dir.join("disk0.raw.pid"));
    ensure!(
        vmk_run(&env, dir, &["run"], None)?.status.success(),
        "vmk-run run failed"
    );
    let guard = armed.into_guard()?;
    guest::wait_for_file_line(
        &dir.join("disk0.raw.console.log"),
        BUSYBOX_READY,
        BOOT_TIMEOUT,
    )?;

    // `vmk vnc` execs the first viewer on PATH with the display's address
    let bin = dir.join("bin");
    std::fs::create_dir(&bin)?;
    vmk_testkit::write_executable(
        &bin.join("vncviewer"),
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/viewer-args\"\n",
    )?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = env.command(env!("CARGO_BIN_EXE_vmk-run"));
    let out = cmd.arg("vnc").current_dir(dir).env("PATH", path).output()?;
    ensure!(out.status.success(), "vmk-run vnc: {out:?}");
    let args = std::fs::read_to_string(bin.join("viewer-args"))?;
    let display = args.trim();
    ensure!(
        display == format!("127.0.0.1:{}", slot.number()),
        "the viewer got {display:?}"
    );
    let port = 5900
        + display
            .rsplit(':')
            .next()
            .context("no display number")?
            .parse::<u16>()?;

    let qmp = dir.join("disk0.raw.qmp");
    let mut rfb = Rfb::connect(port)?;
    let console = |text: &str| -> Result<()> {
        let out = vmk_run(&env, dir, &["console"], Some(text))?;
        ensure!(out.status.success(), "vmk-run console failed");
        Ok(())
    };
    // an empty screen: clear the VGA console, no cursor
    console("printf '\\033[2J\\033[H\\033[?25l' > /dev/tty0\n")?;
    let empty = rfb.capture()?;
    let empty_dump = screendump(&qmp, &dir.join("empty.ppm"))?;
    eprintln!(
        "cleared: ink {:.4} over RFB, {:.4} in the screendump",
        empty.ink(),
        empty_dump.ink()
    );
    ensure!(
        empty.ink() < 0.002,
        "the cleared screen shows {:.4} ink",
        empty.ink()
    );
    ensure!(
        empty.difference(&empty_dump)? < 0.002,
        "RFB and screendump differ"
    );
    // a full screen: 20 lines of text
    console("for i in $(seq 1 20); do echo MMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMM; done > /dev/tty0\n")?;
    let full = rfb.capture()?;
    let full_dump = screendump(&qmp, &dir.join("full.ppm"))?;
    eprintln!(
        "text: ink {:.4} over RFB, {:.4} in the screendump",
        full.ink(),
        full_dump.ink()
    );
    ensure!(
        full.ink() > 0.05,
        "the screen shows only {:.4} ink",
        full.ink()
    );
    ensure!(
        full.difference(&full_dump)? < 0.002,
        "RFB and screendump differ"
    );
    ensure!(
        full.difference(&empty)? > 0.05,
        "the text did not reach the VNC display"
    );
    drop(guard);
    Ok(())
}
