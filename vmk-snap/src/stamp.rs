//! Snapshot names: `<image>-YYYYMMDD-HHMMSS` in UTC, so names sort by time, read the same on
//! every machine and need no time-zone database (the civil date is [`vmk_common::time`]'s).
//!
//! Snapshots the original vmk took are named `<image>-YYYY-MM-DD_HH:MM:SS` in local time;
//! they are the image's snapshots too ([`parse_snapshot_name`] reads both forms), shown
//! with their local time as written (no zone: vmk reads no time-zone database).
//!
//! UTC was chosen over local time because local time needs the system's zone rules (libc
//! `localtime_r` is `unsafe`, which the workspace denies) and because a name taken before a
//! DST change would otherwise sort after one taken later.

/// A point in time, split into UTC calendar fields (`Stamp::now()`, `.rfc3339()`: the
/// form shown by `dsnap list`).
pub use vmk_common::time::UtcTime as Stamp;

/// `YYYYMMDD-HHMMSS`, the form used in snapshot names.
pub fn compact(stamp: &Stamp) -> String {
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        stamp.year, stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second
    )
}

/// Parses [`compact`] back; `None` for anything else.
pub fn parse_compact(s: &str) -> Option<Stamp> {
    let b = s.as_bytes();
    if b.len() != 15
        || b[8] != b'-'
        || !s[..8]
            .bytes()
            .chain(s[9..].bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u8>().ok();
    let stamp = Stamp {
        year: s[0..4].parse().ok()?,
        month: n(4..6)?,
        day: n(6..8)?,
        hour: n(9..11)?,
        minute: n(11..13)?,
        second: n(13..15)?,
    };
    let valid = (1..=12).contains(&stamp.month)
        && (1..=31).contains(&stamp.day)
        && stamp.hour < 24
        && stamp.minute < 60
        && stamp.second < 61;
    valid.then_some(stamp)
}

/// Parses the original vmk's `YYYY-MM-DD_HH:MM:SS` (local time); `None` for anything else.
pub fn parse_original(s: &str) -> Option<Stamp> {
    let b = s.as_bytes();
    let seps = [(4, b'-'), (7, b'-'), (10, b'_'), (13, b':'), (16, b':')];
    if b.len() != 19 || seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 14 {
        return None;
    }
    parse_compact(&format!("{}-{}", &digits[..8], &digits[8..]))
}

/// The parts of a snapshot file name `<base>-YYYYMMDD-HHMMSS[-N]` (or the original vmk's
/// `<base>-YYYY-MM-DD_HH:MM:SS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapName {
    /// When it was taken.
    pub stamp: Stamp,
    /// The suffix added when two snapshots were taken in the same second (1 when none).
    pub seq: u32,
    /// Named the original vmk's way: `stamp` is the local time the name says, not UTC.
    pub local: bool,
}

impl SnapName {
    /// When it was taken, for `dsnap list`: RFC 3339 in UTC, or the original's local time
    /// as written (`YYYY-MM-DDTHH:MM:SS`, no zone).
    pub fn time(&self) -> String {
        let utc = self.stamp.rfc3339();
        match self.local {
            false => utc,
            true => utc.trim_end_matches('Z').to_string(),
        }
    }
}

/// The snapshot name for `base` at `stamp`, with `seq` > 1 giving `-seq`.
pub fn snapshot_name(base: &str, stamp: &Stamp, seq: u32) -> String {
    if seq <= 1 {
        format!("{base}-{}", compact(stamp))
    } else {
        format!("{base}-{}-{seq}", compact(stamp))
    }
}

/// Whether `name` is a snapshot of `base` (exactly `<base>-YYYYMMDD-HHMMSS` or with `-N`,
/// or the original vmk's `<base>-YYYY-MM-DD_HH:MM:SS`), and its time. Files beside it
/// (`.note`, `.pid`, temporaries) do not match.
pub fn parse_snapshot_name(base: &str, name: &str) -> Option<SnapName> {
    let rest = name.strip_prefix(base)?.strip_prefix('-')?;
    if let Some(stamp) = parse_original(rest) {
        return Some(SnapName {
            stamp,
            seq: 1,
            local: true,
        });
    }
    let (stamp, seq) = match rest.len() {
        15 => (rest, 1),
        n if n > 16 && rest.as_bytes()[15] == b'-' => {
            let seq = &rest[16..];
            if !seq.bytes().all(|c| c.is_ascii_digit()) || seq.starts_with('0') {
                return None;
            }
            (&rest[..15], seq.parse().ok().filter(|s| *s > 1)?)
        }
        _ => return None,
    };
    Some(SnapName {
        stamp: parse_compact(stamp)?,
        seq,
        local: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The civil-date conversion and rfc3339() are tested in vmk_common::time.
    #[test]
    fn compact_form() {
        assert_eq!(compact(&Stamp::from_unix(4_102_444_800)), "21000101-000000");
        assert_eq!(compact(&Stamp::from_unix(951_827_696)), "20000229-123456");
        assert_eq!(compact(&Stamp::from_unix(-1)), "19691231-235959");
        let s = Stamp::from_unix(1_709_251_199);
        assert_eq!(parse_compact(&compact(&s)), Some(s));
    }

    #[test]
    fn names_round_trip() {
        let s = Stamp::from_unix(1_714_567_890);
        assert_eq!(
            snapshot_name("disk0.img", &s, 1),
            "disk0.img-20240501-125130"
        );
        assert_eq!(snapshot_name("d", &s, 3), "d-20240501-125130-3");
        assert_eq!(
            parse_snapshot_name("disk0.img", "disk0.img-20240501-125130"),
            Some(SnapName {
                stamp: s,
                seq: 1,
                local: false
            })
        );
        assert_eq!(
            parse_snapshot_name("d", "d-20240501-125130-12").map(|n| n.seq),
            Some(12)
        );
        for bad in [
            "d-20240501-125130.note",
            "d-20240501-125130.pid",
            "d-20240501-125130-",
            "d-20240501-125130-1",
            "d-20240501-125130-02",
            "d-2024050-125130",
            "d-20241301-125130",
            "dd-20240501-125130",
            "d-20240501x125130",
            ".d-20240501-125130.vmk-tmp-1-2",
            "d-2024-05-01_12:51:3",
            "d-2024-05-01_12:51:30.note",
            "d-2024-05-01 12:51:30",
            "d-2024-13-01_12:51:30",
            "d-2024-05-01_12-51-30",
            "d-2024-05-+1_12:51:30",
        ] {
            assert_eq!(parse_snapshot_name("d", bad), None, "{bad}");
        }
    }

    /// The original vmk's names (`<disk0>-YYYY-MM-DD_HH:MM:SS`, local time) are snapshots
    /// too, shown with the time they say and no zone.
    #[test]
    fn original_names_are_snapshots() {
        let n = parse_snapshot_name("sles.qcow2", "sles.qcow2-2019-03-04_05:06:07").unwrap();
        assert!(n.local);
        assert_eq!(n.time(), "2019-03-04T05:06:07");
        assert_eq!(n.stamp, parse_compact("20190304-050607").unwrap());
        let new = parse_snapshot_name("d", "d-20190304-050607").unwrap();
        assert_eq!(new.time(), "2019-03-04T05:06:07Z");
    }
}
