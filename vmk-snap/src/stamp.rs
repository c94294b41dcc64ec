//! Snapshot names: `<image>-YYYYMMDD-HHMMSS` in UTC, so names sort by time, read the same on
//! every machine and need no time-zone database (the civil date is [`vmk_common::time`]'s).
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

/// The parts of a snapshot file name `<base>-YYYYMMDD-HHMMSS[-N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapName {
    /// When it was taken.
    pub stamp: Stamp,
    /// The suffix added when two snapshots were taken in the same second (1 when none).
    pub seq: u32,
}

/// The snapshot name for `base` at `stamp`, with `seq` > 1 giving `-seq`.
pub fn snapshot_name(base: &str, stamp: &Stamp, seq: u32) -> String {
    if seq <= 1 {
        format!("{base}-{}", compact(stamp))
    } else {
        format!("{base}-{}-{seq}", compact(stamp))
    }
}

/// Whether `name` is a snapshot of `base` (exactly `<base>-YYYYMMDD-HHMMSS` or with `-N`),
/// and its time. Files beside it (`.note`, `.pid`, temporaries) do not match.
pub fn parse_snapshot_name(base: &str, name: &str) -> Option<SnapName> {
    let rest = name.strip_prefix(base)?.strip_prefix('-')?;
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
            Some(SnapName { stamp: s, seq: 1 })
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
        ] {
            assert_eq!(parse_snapshot_name("d", bad), None, "{bad}");
        }
    }
}
