//! Who an event is about and who wrote it, as a Kubernetes Event's `involvedObject` and
//! `source` say: tools that read Events (and people used to `kubectl describe`) expect both.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::{Event, ObjectMeta};

/// The component every event names as its source.
pub const EVENT_COMPONENT: &str = "imagecached";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvolvedObject {
    pub kind: String,
    pub name: String,
    /// The object's uid (Disks, which have none, leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    pub component: String,
    /// The node's name, as kubelet's events carry it: the host name.
    pub host: String,
}

/// This node's name (the kernel's host name), read once.
pub fn node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// Fills `involvedObject` and `source` on the events that lack them (new ones, and those
/// written before events carried them), so every event an object shows names it.
pub fn stamp_events(events: &mut [Event], kind: &str, meta: &ObjectMeta) {
    for event in events.iter_mut() {
        if event.involved_object.is_none() {
            event.involved_object = Some(InvolvedObject {
                kind: kind.to_owned(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
            });
        }
        if event.source.is_none() {
            event.source = Some(EventSource {
                component: EVENT_COMPONENT.to_owned(),
                host: node_name().to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_names_the_object_and_this_node_and_keeps_what_is_there() {
        let event = |reason: &str| Event {
            type_: "Normal".into(),
            reason: reason.into(),
            message: "m".into(),
            count: 1,
            first_timestamp: "t".into(),
            last_timestamp: "t".into(),
            involved_object: None,
            source: None,
        };
        let meta = ObjectMeta {
            name: "c1".into(),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let mut events = vec![event("Created"), event("Pulled")];
        stamp_events(&mut events, "ImageCache", &meta);
        let other = ObjectMeta {
            name: "other".into(),
            ..Default::default()
        };
        stamp_events(&mut events, "Disk", &other);
        for e in &events {
            let o = e.involved_object.as_ref().unwrap();
            assert_eq!((o.kind.as_str(), o.name.as_str()), ("ImageCache", "c1"));
            assert_eq!(o.uid.as_deref(), Some("u-1"));
            let s = e.source.as_ref().unwrap();
            assert_eq!(s.component, "imagecached");
            assert!(!s.host.is_empty());
        }
        let json = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(json["involvedObject"]["kind"], "ImageCache");
        assert_eq!(json["source"]["component"], "imagecached");
        assert_eq!(json["reason"], "Created");
    }
}
