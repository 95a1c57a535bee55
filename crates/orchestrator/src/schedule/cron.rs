//! A schedule's cron expression in its time zone: checked, and the occurrences it names.
//!
//! Expressions have 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds
//! first (`*/5 * * * * *`: every 5 seconds), or are one of `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@hourly`; fields take lists, ranges, steps, names
//! (`MON`, `JAN`) and `L`, `W`, `#` (croner's dialect, POSIX day-of-month OR day-of-week).
//! They are evaluated in an IANA time zone, so `0 9 * * *` in `Europe/Paris` is 09:00 there
//! across daylight-saving changes.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use lineq_core::validation::ValidationError;

/// The longest expression accepted (as the SQL side checks).
pub const MAX_CRON_LEN: usize = 256;

/// What to do with occurrences that fell while no orchestrator could fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Missed {
    /// Fire the latest missed occurrence once; pass over the earlier ones.
    #[serde(rename = "skip")]
    Skip,
    /// Fire the latest `max` missed occurrences, oldest first; pass over the earlier ones.
    #[serde(rename = "catch-up")]
    CatchUp {
        /// At most this many (1 to 1000).
        max: u32,
    },
}

impl Missed {
    /// The stored names: `skip`, `catch-up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::CatchUp { .. } => "catch-up",
        }
    }

    /// From the stored columns.
    pub fn from_columns(missed: &str, catch_up_max: Option<i32>) -> Result<Self, ValidationError> {
        match (missed, catch_up_max) {
            ("skip", None) => Ok(Missed::Skip),
            ("catch-up", Some(n)) if (1..=1000).contains(&n) => {
                Ok(Missed::CatchUp { max: n as u32 })
            }
            ("catch-up", Some(n)) => Err(ValidationError::new(
                "catch_up_max",
                format!("it is 1 to 1000 (got {n})"),
            )),
            ("catch-up", None) => Err(ValidationError::new(
                "catch_up_max",
                "missed = catch-up needs the most missed occurrences to fire: 1 to 1000",
            )),
            ("skip", Some(n)) => Err(ValidationError::new(
                "catch_up_max",
                format!("it applies to missed = catch-up only (got {n} with skip)"),
            )),
            (other, _) => Err(ValidationError::new(
                "missed",
                format!("it is skip or catch-up (got {other:?})"),
            )),
        }
    }

    /// `catch_up_max` as stored: `None` for skip.
    pub fn catch_up_max(self) -> Option<i32> {
        match self {
            Missed::Skip => None,
            Missed::CatchUp { max } => Some(max as i32),
        }
    }
}

/// A checked cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

/// What one fire does: the occurrence it fires, the missed ones it passes over, and the
/// occurrence after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// The occurrence to fire.
    pub occurrence: DateTime<Utc>,
    /// Missed occurrences passed over by the policy (counted up to [`MAX_COUNTED`]).
    pub skipped: u64,
    /// The first of them.
    pub skipped_from: Option<DateTime<Utc>>,
    /// The occurrence after the fired one; `None` when the expression names no later one.
    pub next: Option<DateTime<Utc>>,
}

/// Which way to search.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

/// `t` without its fraction of a second.
fn floor(t: DateTime<Utc>) -> DateTime<Utc> {
    chrono::DurationRound::duration_trunc(t, chrono::TimeDelta::seconds(1)).unwrap_or(t)
}

/// Skipped occurrences are counted one by one up to this many (an every-second schedule down
/// for a year would otherwise take a while to count).
pub const MAX_COUNTED: u64 = 100_000;

impl CronSchedule {
    /// Checks `expression` and `timezone` (errors name the field `cron` or `timezone`). An
    /// expression that never fires (`0 0 30 2 *`) is refused.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, ValidationError> {
        let tz: Tz = timezone.parse().map_err(|_| {
            ValidationError::new(
                "timezone",
                format!(
                    "unknown time zone {timezone:?}; use an IANA name such as UTC or Europe/Paris"
                ),
            )
        })?;
        let text = expression.trim();
        if text.is_empty() {
            return Err(ValidationError::new(
                "cron",
                "it is required: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first",
            ));
        }
        if expression.chars().count() > MAX_CRON_LEN {
            return Err(ValidationError::new(
                "cron",
                format!(
                    "it is {} characters; the limit is {MAX_CRON_LEN}",
                    expression.chars().count()
                ),
            ));
        }
        if let Some(c) = text.chars().find(|c| c.is_control() && !c.is_whitespace()) {
            return Err(ValidationError::new(
                "cron",
                format!("it contains the control character {c:?}"),
            ));
        }
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(ValidationError::new(
                "cron",
                format!(
                    "{text:?} has {fields} fields; a cron expression has 5 (minute hour day-of-month month day-of-week), or 6 with seconds first"
                ),
            ));
        }
        if text.starts_with('@')
            && ![
                "@yearly",
                "@annually",
                "@monthly",
                "@weekly",
                "@daily",
                "@hourly",
            ]
            .contains(&text.to_ascii_lowercase().as_str())
        {
            return Err(ValidationError::new(
                "cron",
                format!(
                    "{text:?}: the shorthands are @yearly, @annually, @monthly, @weekly, @daily and @hourly"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| ValidationError::new("cron", format!("{text:?} is not valid: {e}")))?;
        let s = Self { cron, tz };
        if s.next_after(Utc::now()).is_none() {
            return Err(ValidationError::new(
                "cron",
                format!("{text:?} names no future time, so it would never fire"),
            ));
        }
        Ok(s)
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Occurrences are whole seconds; croner wants a whole-second start.
        self.find(floor(t), false, Direction::Forward)
    }

    /// The first occurrence at or after `t`.
    fn at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let f = floor(t);
        if f == t {
            self.find(t, true, Direction::Forward)
        } else {
            self.find(f, false, Direction::Forward)
        }
    }

    /// The last occurrence at or before `t`.
    fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.find(floor(t), true, Direction::Backward)
    }

    /// The last occurrence strictly before `t` (a whole second).
    fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.find(floor(t), false, Direction::Backward)
    }

    fn find(&self, t: DateTime<Utc>, inclusive: bool, d: Direction) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let found = match d {
            Direction::Forward => self.cron.find_next_occurrence(&local, inclusive),
            Direction::Backward => self.cron.find_previous_occurrence(&local, inclusive),
        };
        found.ok().map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` occurrences at or after `from`.
    pub fn upcoming(&self, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cur = self.at_or_after(from);
        while let Some(t) = cur {
            if out.len() >= n {
                break;
            }
            out.push(t);
            cur = self.next_after(t);
        }
        out
    }

    /// How many occurrences fall in `[from, until)`, counted up to [`MAX_COUNTED`].
    fn count_between(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        let mut n = 0;
        let mut cur = self.at_or_after(from);
        while let Some(t) = cur {
            if t >= until || n >= MAX_COUNTED {
                break;
            }
            n += 1;
            cur = self.next_after(t);
        }
        n
    }

    /// What to fire now: `due` is the schedule's `next_fire_at` (not after `now`). Occurrences
    /// from `due` up to `now` are the missed ones when there is more than one; `missed` says
    /// which of them fire (see [`Missed`]). In steady state `due` is the only one, and it
    /// fires.
    pub fn plan(&self, due: DateTime<Utc>, now: DateTime<Utc>, missed: Missed) -> FirePlan {
        // The latest occurrence at or before now (never before `due`, which is due).
        let latest = self.at_or_before(now).filter(|t| *t >= due).unwrap_or(due);
        let occurrence = match missed {
            Missed::Skip => latest,
            Missed::CatchUp { max } => {
                // Walk back from the latest at most max - 1 occurrences, not before `due`.
                let mut first = latest;
                for _ in 1..max {
                    match self.previous_before(first) {
                        Some(p) if p >= due => first = p,
                        _ => break,
                    }
                }
                first
            }
        };
        let skipped = if occurrence > due {
            self.count_between(due, occurrence)
        } else {
            0
        };
        FirePlan {
            occurrence,
            skipped,
            skipped_from: (skipped > 0).then_some(due),
            next: self.next_after(occurrence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    #[test]
    fn five_and_six_fields_and_shorthands() {
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(every_second.next_after(at(1, 0, 0)), Some(at(1, 0, 1)));
        let every_minute = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(every_minute.next_after(at(1, 0, 0)), Some(at(1, 1, 0)));
        let daily = CronSchedule::parse("@daily", "UTC").unwrap();
        assert_eq!(
            daily.next_after(at(1, 0, 0)),
            Some(Utc.with_ymd_and_hms(2026, 3, 11, 0, 0, 0).unwrap())
        );
        assert_eq!(
            every_minute.upcoming(at(1, 0, 0), 3),
            vec![at(1, 0, 0), at(1, 1, 0), at(1, 2, 0)]
        );
    }

    #[test]
    fn time_zones_shift_occurrences() {
        // 09:00 in Paris is 08:00 UTC in winter (10 March 2026 is before the change).
        let paris = CronSchedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(at(0, 0, 0)), Some(at(8, 0, 0)));
    }

    #[test]
    fn bad_input_names_the_field() {
        for (cron, tz, field) in [
            ("not a cron", "UTC", "cron"),
            ("61 * * * *", "UTC", "cron"),
            ("* * * * * * *", "UTC", "cron"),
            ("", "UTC", "cron"),
            ("* * * * \u{0} *", "UTC", "cron"),
            ("@sometimes", "UTC", "cron"),
            ("0 0 30 2 *", "UTC", "cron"),
            ("* * * * *", "Mars/Olympus_Mons", "timezone"),
            ("* * * * *", "", "timezone"),
        ] {
            let e = CronSchedule::parse(cron, tz).expect_err(cron);
            assert_eq!(e.field, field, "{cron} {tz}: {e}");
        }
    }

    #[test]
    fn steady_state_fires_the_due_occurrence() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let p = s.plan(
            at(1, 0, 5),
            at(1, 0, 5) + chrono::Duration::milliseconds(3),
            Missed::Skip,
        );
        assert_eq!(
            p,
            FirePlan {
                occurrence: at(1, 0, 5),
                skipped: 0,
                skipped_from: None,
                next: Some(at(1, 0, 6)),
            }
        );
    }

    #[test]
    fn skip_fires_the_latest_missed_once() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        // Due at :05, now :14.5: :05..:13 are passed over, :14 fires, :15 is next.
        let p = s.plan(
            at(1, 0, 5),
            at(1, 0, 14) + chrono::Duration::milliseconds(500),
            Missed::Skip,
        );
        assert_eq!(p.occurrence, at(1, 0, 14));
        assert_eq!(p.skipped, 9);
        assert_eq!(p.skipped_from, Some(at(1, 0, 5)));
        assert_eq!(p.next, Some(at(1, 0, 15)));
    }

    #[test]
    fn catch_up_fires_the_latest_n_oldest_first() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let now = at(1, 0, 14) + chrono::Duration::milliseconds(500);
        let p = s.plan(at(1, 0, 5), now, Missed::CatchUp { max: 3 });
        // :12, :13, :14 are the latest three; :12 fires first, :5..:11 are passed over.
        assert_eq!(p.occurrence, at(1, 0, 12));
        assert_eq!(p.skipped, 7);
        assert_eq!(p.next, Some(at(1, 0, 13)));
        // The next fire finds :13 due and fewer than 3 missed: nothing more is passed over.
        let p2 = s.plan(at(1, 0, 13), now, Missed::CatchUp { max: 3 });
        assert_eq!((p2.occurrence, p2.skipped), (at(1, 0, 13), 0));
        // Fewer missed than the maximum: all of them fire.
        let p3 = s.plan(at(1, 0, 13), now, Missed::CatchUp { max: 10 });
        assert_eq!((p3.occurrence, p3.skipped), (at(1, 0, 13), 0));
    }

    #[test]
    fn missed_columns_round_trip() {
        for m in [Missed::Skip, Missed::CatchUp { max: 7 }] {
            assert_eq!(
                Missed::from_columns(m.as_str(), m.catch_up_max()).unwrap(),
                m
            );
        }
        assert_eq!(
            Missed::from_columns("catch-up", Some(0)).unwrap_err().field,
            "catch_up_max"
        );
        assert_eq!(
            Missed::from_columns("later", None).unwrap_err().field,
            "missed"
        );
    }
}
