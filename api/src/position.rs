//! A place in the change log that survives gaps and out-of-order commits.
//!
//! Sequence numbers are allocated when a transaction inserts its event, and become visible
//! when it commits: event 8 may commit before event 7, and on a Galera cluster numbers step
//! by the cluster size, leaving gaps that never fill. A single "last seen" number cannot say
//! what a reader has had, so a position is a floor (every event up to it) plus the events
//! above the floor already had. It travels as the event `id` of the live stream, and comes
//! back as `Last-Event-ID`.
//!
//! The token is the floor, then the distances between the events above it, each a step or
//! a run of equal steps (`STEPxCOUNT`), separated by dots: `41` is everything up to 41;
//! `41.2.3x2` is everything up to 41, and 43, 46 and 49.

use std::collections::BTreeSet;
use std::fmt;

/// The most events above the floor that a token may carry. Each is a bind value of the
/// replay query a resume runs (`db::events::since`), and the watcher keeps half of it above
/// a gap (`events::MAX_ABOVE_GAP`): 512 events, which at the create rate `make bench`
/// measures on one MariaDB (about 3,000/s) still waits for a gap ten times the p99 of a
/// create before giving it up, so a late commit reaches the streams.
pub const MAX_ABOVE: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    floor: i64,
    above: BTreeSet<i64>,
}

impl Position {
    /// Every event up to `floor`.
    pub fn at(floor: i64) -> Self {
        Self { floor: floor.max(0), above: BTreeSet::new() }
    }

    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// The events had above the floor, lowest first.
    pub fn above(&self) -> &BTreeSet<i64> {
        &self.above
    }

    /// The highest event had.
    pub fn highest(&self) -> i64 {
        self.above.last().copied().unwrap_or(self.floor)
    }

    pub fn contains(&self, seq: i64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// Adds an event; false if it was had already.
    pub fn insert(&mut self, seq: i64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.above.insert(seq);
        self.compact();
        true
    }

    /// Moves the floor up to `seq`, giving up on the events missing below it: they belong
    /// to transactions that rolled back (or will never be waited for).
    pub fn raise_floor(&mut self, seq: i64) {
        if seq > self.floor {
            self.floor = seq;
            self.above.retain(|&had| had > seq);
            self.compact();
        }
    }

    /// Everything either position has.
    pub fn merge(&mut self, other: &Self) {
        self.raise_floor(other.floor);
        self.above.extend(other.above.iter().filter(|&&seq| seq > self.floor));
        self.compact();
    }

    fn compact(&mut self) {
        // Checked: a token may put the floor at the very top of the numbers.
        while let Some(next) = self.floor.checked_add(1)
            && self.above.first() == Some(&next)
        {
            self.floor = next;
            self.above.pop_first();
        }
    }

    /// Reads a token; `None` for anything that is not one, or that carries more than
    /// `MAX_ABOVE` events above its floor.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.trim().split('.');
        let floor: i64 = parts.next()?.parse().ok().filter(|floor| *floor >= 0)?;
        let mut position = Self::at(floor);
        let mut last = floor;
        for part in parts {
            let (step, count) = match part.split_once('x') {
                Some((step, count)) => (step.parse::<i64>().ok()?, count.parse::<usize>().ok()?),
                None => (part.parse::<i64>().ok()?, 1),
            };
            // `above` never holds more than MAX_ABOVE here, so the subtraction cannot wrap.
            if step < 1 || count < 1 || count > MAX_ABOVE - position.above.len() {
                return None;
            }
            for _ in 0..count {
                last = last.checked_add(step)?;
                position.above.insert(last);
            }
        }
        position.compact();
        Some(position)
    }
}

impl fmt::Display for Position {
    /// The token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.floor)?;
        let mut last = self.floor;
        let mut run: Option<(i64, usize)> = None;
        let flush = |f: &mut fmt::Formatter<'_>, run: Option<(i64, usize)>| match run {
            Some((step, 1)) => write!(f, ".{step}"),
            Some((step, count)) => write!(f, ".{step}x{count}"),
            None => Ok(()),
        };
        for &seq in &self.above {
            let step = seq - last;
            last = seq;
            run = match run {
                Some((current, count)) if current == step => Some((step, count + 1)),
                other => {
                    flush(f, other)?;
                    Some((step, 1))
                }
            };
        }
        flush(f, run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(floor: i64, above: &[i64]) -> Position {
        let mut position = Position::at(floor);
        for &seq in above {
            position.insert(seq);
        }
        position
    }

    #[test]
    fn a_position_without_gaps_is_a_plain_number() {
        assert_eq!(Position::at(41).to_string(), "41");
        assert_eq!(position(41, &[42, 43]).to_string(), "43");
        assert_eq!(Position::parse("41"), Some(Position::at(41)));
    }

    #[test]
    fn tokens_carry_the_events_above_a_gap_in_runs() {
        let stepped = position(41, &[43, 46, 49, 50]);
        assert_eq!(stepped.to_string(), "41.2.3x2.1");
        assert_eq!(Position::parse("41.2.3x2.1"), Some(stepped));
        let out_of_order = position(10, &[12]);
        assert_eq!(out_of_order.to_string(), "10.2");
        assert!(
            out_of_order.contains(12) && out_of_order.contains(9) && !out_of_order.contains(11)
        );
    }

    #[test]
    fn a_filled_gap_moves_the_floor() {
        let mut position = position(10, &[12, 13]);
        assert!(position.insert(11));
        assert_eq!(position, Position::at(13));
        assert!(!position.insert(12), "had already");
    }

    #[test]
    fn raising_the_floor_gives_up_the_gaps_below() {
        let mut position = position(10, &[13, 16, 17]);
        position.raise_floor(13);
        assert_eq!(position.to_string(), "13.3.1");
        position.raise_floor(16);
        assert_eq!(position, Position::at(17));
    }

    #[test]
    fn merging_keeps_everything_either_had() {
        let mut mine = position(10, &[12, 20]);
        mine.merge(&position(15, &[18]));
        assert_eq!(mine, position(15, &[18, 20]));
        mine.merge(&Position::at(3));
        assert_eq!(mine, position(15, &[18, 20]));
    }

    #[test]
    fn the_top_of_the_numbers_is_a_floor_like_any_other() {
        let top = Position::at(i64::MAX);
        assert_eq!(Position::parse("9223372036854775807"), Some(top.clone()));
        assert_eq!(Position::parse("9223372036854775806.1"), Some(top.clone()));
        let mut raised = position(1, &[i64::MAX]);
        raised.raise_floor(i64::MAX);
        assert_eq!(raised, top);
    }

    #[test]
    fn what_is_not_a_token_is_refused() {
        for token in [
            "",
            "abc",
            "-1",
            "4.",
            "4.0",
            "4.-2",
            "4.2x0",
            "4.x3",
            "4.2x",
            "4.1.a",
            "1.1x99999",
            "0.1.1x18446744073709551615",
            "9223372036854775807.1",
            "9223372036854775808",
        ] {
            assert_eq!(Position::parse(token), None, "{token:?}");
        }
        assert_eq!(
            Position::parse(&format!("1.1x{MAX_ABOVE}")),
            Some(Position::at(1 + MAX_ABOVE as i64))
        );
    }
}
