//! Civil (UTC) timestamps for the filesystems vmk writes, without a date crate.
//!
//! ISO 9660 and FAT store broken-down dates. Images are reproducible when
//! `SOURCE_DATE_EPOCH` is set (the reproducible-builds convention); otherwise they carry
//! the current time.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC date and time, broken down as filesystems store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Full year, e.g. 2024.
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
}

impl Timestamp {
    /// The time for new images: `SOURCE_DATE_EPOCH` when set, else now.
    pub fn for_new_image() -> Timestamp {
        let secs = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            });
        Timestamp::from_unix(secs)
    }

    /// Breaks seconds since 1970-01-01T00:00:00Z down into a date (proleptic Gregorian).
    pub fn from_unix(secs: i64) -> Timestamp {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Timestamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            Timestamp::from_unix(0),
            Timestamp {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29T12:34:56Z
        assert_eq!(
            Timestamp::from_unix(951_827_696),
            Timestamp {
                year: 2000,
                month: 2,
                day: 29,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        // 2024-12-31T23:59:59Z
        let t = Timestamp::from_unix(1_735_689_599);
        assert_eq!((t.year, t.month, t.day, t.hour), (2024, 12, 31, 23));
    }
}
