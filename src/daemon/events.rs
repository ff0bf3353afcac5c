//! Events on an object's status, in the Kubernetes Event shape. A repeat of the latest event
//! (same type, reason and message) bumps its count instead of adding a line, as kubelet does.

use super::Reply;
use crate::objects::{stamp_events, Event, KIND_DISK, KIND_IMAGE_CACHE};

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
        involved_object: None,
        source: None,
    });
    if events.len() > MAX_EVENTS {
        events.remove(0);
    }
}

/// Every event a reply shows names its object and this node (`involvedObject`, `source`), as
/// Kubernetes Events do. Filled on the way out, so events stored before they carried these
/// fields show them too.
pub fn stamp_reply(mut reply: Reply) -> Reply {
    match &mut reply {
        Reply::ImageCache(c) => stamp_cache(c),
        Reply::ImageCacheList(l) => l.items.iter_mut().for_each(stamp_cache),
        Reply::Disk(disk) | Reply::ExistingDisk(disk) => stamp_disk(disk),
        Reply::DiskList(l) => l.items.iter_mut().for_each(stamp_disk),
        Reply::Deleted(_) | Reply::Verify(_) | Reply::Info(_) | Reply::Snapshot(_) => {}
    }
    reply
}

fn stamp_cache(c: &mut crate::objects::ImageCache) {
    if let Some(s) = c.status.as_mut() {
        stamp_events(&mut s.events, KIND_IMAGE_CACHE, &c.metadata);
    }
}

fn stamp_disk(disk: &mut crate::objects::Disk) {
    if let Some(s) = disk.status.as_mut() {
        stamp_events(&mut s.events, KIND_DISK, &disk.metadata);
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
