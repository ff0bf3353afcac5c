//! Events on an object's status, in the Kubernetes Event shape. A repeat of the latest event
//! (same type, reason and message) bumps its count instead of adding a line, as kubelet does.

use crate::objects::Event;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Events kept per object; the oldest go first so a flapping cache cannot grow without bound.
const MAX_EVENTS: usize = 100;

pub fn record(events: &mut Vec<Event>, type_: &str, reason: &str, message: String, now: &str) {
    if let Some(last) = events.last_mut() {
        if last.type_ == type_ && last.reason == reason && last.message == message {
            last.count += 1;
            last.last_timestamp = now.to_owned();
            return;
        }
    }
    events.push(Event {
        type_: type_.to_owned(),
        reason: reason.to_owned(),
        message,
        count: 1,
        first_timestamp: now.to_owned(),
        last_timestamp: now.to_owned(),
    });
    if events.len() > MAX_EVENTS {
        events.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_not_appended() {
        let mut ev = Vec::new();
        record(&mut ev, NORMAL, "Pulling", "Pulling image a".into(), "t1");
        record(&mut ev, NORMAL, "Pulling", "Pulling image a".into(), "t2");
        record(&mut ev, NORMAL, "Pulling", "Pulling image b".into(), "t3");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].count, 2);
        assert_eq!(ev[0].first_timestamp, "t1");
        assert_eq!(ev[0].last_timestamp, "t2");
    }
}
