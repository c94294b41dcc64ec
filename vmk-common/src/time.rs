//! UTC calendar time from Unix seconds, without a date crate: the one civil-date conversion
//! behind every timestamp vmk writes (snapshot names, dates in generated CD and floppy
//! images, the date in a bootstrapped VM's config).
//!
//! UTC only: local time needs the system's zone rules (libc `localtime_r` is `unsafe`,
//! which the workspace denies), and UTC reads the same on every machine.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC date and time of day, broken down as filesystems store it. Orders by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime {
    /// Full year, e.g. 2024 (proleptic Gregorian).
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

impl UtcTime {
    /// The current time (the epoch if the clock is set before 1970).
    pub fn now() -> UtcTime {
        UtcTime::from_unix(unix_now())
    }

    /// The time to write into a new image: `SOURCE_DATE_EPOCH` when set (the
    /// reproducible-builds convention, so images can be made byte for byte again), else now.
    pub fn for_new_image() -> UtcTime {
        let secs = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(unix_now);
        UtcTime::from_unix(secs)
    }

    /// Breaks seconds since 1970-01-01T00:00:00Z down into a date and time of day.
    pub fn from_unix(secs: i64) -> UtcTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`, for people.
impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            UtcTime::from_unix(0),
            UtcTime {
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
            UtcTime::from_unix(951_827_696),
            UtcTime {
                year: 2000,
                month: 2,
                day: 29,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        let t = UtcTime::from_unix(1_735_689_599);
        assert_eq!((t.year, t.month, t.day, t.hour), (2024, 12, 31, 23));
        assert_eq!(UtcTime::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UtcTime::from_unix(951_782_400).rfc3339(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            UtcTime::from_unix(1_709_251_199).rfc3339(),
            "2024-02-29T23:59:59Z"
        );
        assert_eq!(
            UtcTime::from_unix(4_102_444_800).rfc3339(),
            "2100-01-01T00:00:00Z"
        );
        assert_eq!(UtcTime::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn shown_to_people_and_ordered_by_time() {
        let t = UtcTime::from_unix(1_704_164_645);
        assert_eq!(t.to_string(), "2024-01-02 03:04:05 UTC");
        assert!(UtcTime::from_unix(-1) < UtcTime::from_unix(0));
        assert!(UtcTime::from_unix(1_704_164_645) < UtcTime::from_unix(1_704_164_646));
        assert!(UtcTime::from_unix(951_782_400) < UtcTime::from_unix(1_704_164_645));
        let now = UtcTime::now();
        assert!(now.year >= 2024, "{now}");
    }

    #[test]
    fn source_date_epoch_is_read() {
        // Only this test touches the variable in this test binary.
        std::env::set_var("SOURCE_DATE_EPOCH", "951827696");
        let t = UtcTime::for_new_image();
        std::env::remove_var("SOURCE_DATE_EPOCH");
        assert_eq!(t, UtcTime::from_unix(951_827_696));
    }
}
