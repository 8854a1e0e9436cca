//! Stop strings matched across token boundaries: text that could be the start of a stop string
//! is held back until the next delta shows whether it is one, so a stop string is never sent,
//! even in part, and the text before it always is.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to send after a delta.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub emit: String,
    /// A stop string was found: `emit` is the text before it and generation must end.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops, held: String::new() }
    }

    pub fn push(&mut self, delta: &str) -> Step {
        if self.stops.is_empty() {
            return Step { emit: delta.to_string(), stopped: false };
        }
        self.held.push_str(delta);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return Step { emit, stopped: true };
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self.stops.iter().map(|s| partial_suffix(&self.held, s)).max().unwrap_or(0);
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Step { emit, stopped: false }
    }

    /// Text held back when generation ends for another reason: it was not a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on a character
/// boundary of `text`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && stop.as_bytes().starts_with(&text.as_bytes()[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let s = m.push(d);
            out.push_str(&s.emit);
            if s.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_deltas_is_not_emitted() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn held_text_that_is_not_a_stop_is_released() {
        assert_eq!(run(&["END"], &["hello E", "X"]), ("hello EX".into(), false));
        assert_eq!(run(&["END"], &["tail EN"]), ("tail EN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["c", "ab"], &["xxabc"]), ("xx".into(), true));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        let s = m.push("café");
        assert_eq!(s.emit, "caf");
        assert_eq!(m.push("?").emit, "é?");
    }

    #[test]
    fn every_prefix_is_emitted_exactly_once_without_stops() {
        let text = "the quick brown fox";
        let mut m = StopMatcher::new(vec!["zz".into(), "fox jumps".into()]);
        let mut out = String::new();
        for c in text.chars() {
            out.push_str(&m.push(&c.to_string()).emit);
        }
        out.push_str(&m.flush());
        assert_eq!(out, text);
    }
}
