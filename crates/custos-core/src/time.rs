//! Instants and policy durations.
//!
//! docs/POLICY.md, Terms: times are RFC 3339 with an offset, kept in UTC at millisecond precision (finer
//! fractions truncated, second 60 invalid). `Nd` is N × 86,400 s; `Ny` is N × 12 calendar months
//! on the UTC date, clamped to the month's end.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

const MS_PER_DAY: i64 = 86_400_000;

/// An instant in UTC, at millisecond precision.
///
/// INVARIANT: always within years 0001..=9999, so it can be printed as RFC 3339 with a
/// four-digit year. Arithmetic saturates at those bounds rather than wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a text is not a valid timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("`{0}` is not an RFC 3339 time with an offset (e.g. 2025-08-28T00:00:00Z)")]
    Syntax(String),
    #[error("`{0}` has second 60; leap seconds are not valid times here")]
    LeapSecond(String),
    #[error("`{0}` is outside years 0001 to 9999")]
    OutOfRange(String),
}

impl Timestamp {
    /// Earliest representable instant, 0001-01-01T00:00:00.000Z.
    pub const MIN: Timestamp = Timestamp(-62_135_596_800_000);
    /// Latest representable instant, 9999-12-31T23:59:59.999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// Parses RFC 3339 (`Z` or `±hh:mm`), truncating fractions below a millisecond.
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| TimestampError::Syntax(text.to_owned()))?;
        // The parser maps 23:59:60 to 23:59:59.999999999; the spec makes it invalid instead.
        // After a successful parse the seconds always sit at bytes 17..19.
        if text.get(17..19) == Some("60") {
            return Err(TimestampError::LeapSecond(text.to_owned()));
        }
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(millis)
            .ok()
            .map(Timestamp)
            .filter(|t| (Self::MIN..=Self::MAX).contains(t))
            .ok_or_else(|| TimestampError::OutOfRange(text.to_owned()))
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// The instant `millis` after the epoch, if it is within the supported range.
    pub fn from_unix_millis(millis: i64) -> Option<Timestamp> {
        Some(Timestamp(millis)).filter(|t| (Self::MIN..=Self::MAX).contains(t))
    }

    fn saturating_from_millis(millis: i64) -> Timestamp {
        Timestamp(millis.clamp(Self::MIN.0, Self::MAX.0))
    }

    /// Adds a policy duration, saturating at the end of year 9999.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        match duration {
            Duration::Days(days) => {
                Self::saturating_from_millis(self.0.saturating_add(i64::from(days) * MS_PER_DAY))
            }
            Duration::Years(years) => self.add_years(years),
        }
    }

    /// N × 12 calendar months on the UTC date, clamped to the month's end; time of day kept.
    fn add_years(self, years: u32) -> Timestamp {
        let day_number = self.0.div_euclid(MS_PER_DAY);
        let millis_of_day = self.0.rem_euclid(MS_PER_DAY);
        let Some(date) = date_from_day_number(day_number) else {
            return Timestamp::MAX;
        };
        let Some(year) = i32::try_from(years)
            .ok()
            .and_then(|y| date.year().checked_add(y))
        else {
            return Timestamp::MAX;
        };
        if year > 9999 {
            return Timestamp::MAX;
        }
        let day = date.day().min(date.month().length(year));
        match Date::from_calendar_date(year, date.month(), day) {
            Ok(target) => {
                Self::saturating_from_millis(day_number_of(target) * MS_PER_DAY + millis_of_day)
            }
            Err(_) => Timestamp::MAX,
        }
    }
}

/// Days since 1970-01-01 → calendar date.
fn date_from_day_number(day_number: i64) -> Option<Date> {
    let julian = i32::try_from(day_number + i64::from(UNIX_EPOCH_JULIAN_DAY)).ok()?;
    Date::from_julian_day(julian).ok()
}

fn day_number_of(date: Date) -> i64 {
    i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// As RFC 3339 in UTC with milliseconds, `YYYY-MM-DDTHH:MM:SS.sssZ`: how every answer prints a
/// time.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.sssZ`, the one form custos prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let day_number = self.0.div_euclid(MS_PER_DAY);
        let ms = self.0.rem_euclid(MS_PER_DAY);
        let Some(date) = date_from_day_number(day_number) else {
            return Err(fmt::Error);
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            date.year(),
            u8::from(date.month()),
            date.day(),
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }
}

/// A policy duration: `Nd` (exact days) or `Ny` (calendar years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Duration {
    Days(u32),
    Years(u32),
}

/// Why a text is not a policy duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a duration: write a whole number followed by `d` (days) or `y` (years), e.g. `30d` or `5y`, at most 36500d or 100y"
)]
pub struct DurationError(pub String);

impl Duration {
    /// Parses `30d` or `5y`.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let error = || DurationError(text.to_owned());
        let digits = text.get(..text.len().saturating_sub(1)).ok_or_else(error)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let count: u32 = digits.parse().map_err(|_| error())?;
        match text.as_bytes().last() {
            Some(b'd') if count <= 36_500 => Ok(Duration::Days(count)),
            Some(b'y') if count <= 100 => Ok(Duration::Years(count)),
            _ => Err(error()),
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Duration::Days(0) | Duration::Years(0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Duration::Days(n) => write!(f, "{n}d"),
            Duration::Years(n) => write!(f, "{n}y"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn offsets_are_normalized_to_utc_and_fractions_truncated_to_milliseconds() {
        assert_eq!(
            ts("2025-08-28T02:00:00.1239+02:00").to_string(),
            "2025-08-28T00:00:00.123Z"
        );
        assert_eq!(ts("1969-12-31T23:59:59.9999Z").unix_millis(), -1);
    }

    #[test]
    fn second_sixty_and_missing_offsets_are_rejected() {
        for bad in [
            "2016-12-31T23:59:60Z",
            "2025-08-28T00:00:00",
            "2025-08-28",
            "2025-02-30T00:00:00Z",
            "2025-08-28T24:00:00Z",
            " 2025-08-28T00:00:00Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(matches!(
            Timestamp::parse("2016-12-31T23:59:60Z"),
            Err(TimestampError::LeapSecond(_))
        ));
    }

    #[test]
    fn years_are_calendar_years_clamped_to_month_end() {
        let cases = [
            ("2028-02-29T10:00:00Z", 1, "2029-02-28T10:00:00.000Z"),
            ("2028-02-29T10:00:00Z", 4, "2032-02-29T10:00:00.000Z"),
            ("2025-09-11T08:00:00Z", 5, "2030-09-11T08:00:00.000Z"),
            ("9998-06-01T00:00:00Z", 5, "9999-12-31T23:59:59.999Z"),
        ];
        for (start, years, expected) in cases {
            assert_eq!(
                ts(start).saturating_add(Duration::Years(years)).to_string(),
                expected
            );
        }
    }

    #[test]
    fn days_are_exact_multiples_of_86400_seconds() {
        assert_eq!(
            ts("2025-08-02T10:00:00Z")
                .saturating_add(Duration::Days(30))
                .to_string(),
            "2025-09-01T10:00:00.000Z"
        );
    }

    #[test]
    fn durations_parse_only_days_and_years() {
        assert_eq!(Duration::parse("30d"), Ok(Duration::Days(30)));
        assert_eq!(Duration::parse("5y"), Ok(Duration::Years(5)));
        for bad in [
            "",
            "d",
            "5",
            "5m",
            "-5d",
            "5 d",
            "1.5y",
            "101y",
            "+5d",
            "99999999999d",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
