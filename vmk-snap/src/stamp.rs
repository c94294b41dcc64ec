//! Snapshot names: `<image>-YYYYMMDD-HHMMSS` in UTC, so names sort by time, read the same on
//! every machine and need no time-zone database (a 20-line civil-date formatter, no time crate).
//!
//! UTC was chosen over local time because local time needs the system's zone rules (libc
//! `localtime_r` is `unsafe`, which the workspace denies) and because a name taken before a
//! DST change would otherwise sort after one taken later.

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time, split into UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Year, e.g. 2024.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute, 0–59.
    pub minute: u32,
    /// Second, 0–59.
    pub second: u32,
}

impl Stamp {
    /// The current time.
    pub fn now() -> Stamp {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Stamp::from_unix(secs)
    }

    /// Seconds since 1970-01-01T00:00:00Z → calendar fields (Howard Hinnant's civil_from_days).
    pub fn from_unix(secs: i64) -> Stamp {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Stamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `YYYYMMDD-HHMMSS`, the form used in snapshot names.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339), the form shown by `dsnap list`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Parses [`Stamp::compact`] back; `None` for anything else.
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
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
        let stamp = Stamp {
            year: i64::from(n(0..4)?),
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
        format!("{base}-{}", stamp.compact())
    } else {
        format!("{base}-{}-{seq}", stamp.compact())
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
        stamp: Stamp::parse_compact(stamp)?,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_to_civil() {
        assert_eq!(Stamp::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Stamp::from_unix(951_782_400).rfc3339(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            Stamp::from_unix(1_709_251_199).rfc3339(),
            "2024-02-29T23:59:59Z"
        );
        assert_eq!(Stamp::from_unix(4_102_444_800).compact(), "21000101-000000");
        assert_eq!(Stamp::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
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
