//! The mounts containerd is given for a snapshot: the same shapes containerd's own overlayfs
//! snapshotter returns, so its applier and runtime treat ours exactly like its own (the
//! overlay applier writes straight into `upperdir` and reads the `lowerdir`s for what lies
//! below).

use std::path::{Path, PathBuf};

/// One mount, as containerd's `Mount` message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where an active snapshot writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upper {
    pub upper: PathBuf,
    pub work: PathBuf,
}

fn bind(source: &Path, read_only: bool) -> MountSpec {
    MountSpec {
        kind: "bind".into(),
        source: source.display().to_string(),
        options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

/// The mounts of a snapshot.
///
/// - `lowers`: the parents' directories, nearest parent first (overlayfs's order).
/// - `upper`: for an active snapshot, its upper and work directories; `None` for a view.
/// - `own`: the snapshot's own (empty) directory, bound when there is nothing below it.
///
/// `index=off`: overlayfs would otherwise record each upper's lowers and refuse to mount a
/// lower layer under a second upper that shares it, which every container of an image does.
pub fn for_snapshot(lowers: &[PathBuf], upper: Option<&Upper>, own: &Path) -> Vec<MountSpec> {
    match (lowers, upper) {
        ([], Some(u)) => vec![bind(&u.upper, false)],
        ([], None) => vec![bind(own, true)],
        ([only], None) => vec![bind(only, true)],
        _ => {
            let mut options = vec!["index=off".to_owned()];
            if let Some(u) = upper {
                options.push(format!("workdir={}", u.work.display()));
                options.push(format!("upperdir={}", u.upper.display()));
            }
            let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
            options.push(format!("lowerdir={}", lowers.join(":")));
            vec![MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn shapes_match_containerds_overlayfs_snapshotter() {
        let up = Upper {
            upper: p("/s/3/fs"),
            work: p("/s/3/work"),
        };
        let own = p("/s/3/fs");
        // An active base layer: its own directory, writable.
        assert_eq!(
            for_snapshot(&[], Some(&up), &own),
            vec![MountSpec {
                kind: "bind".into(),
                source: "/s/3/fs".into(),
                options: vec!["rw".into(), "rbind".into()]
            }]
        );
        // A view of nothing: its own empty directory, read-only.
        assert_eq!(
            for_snapshot(&[], None, &own)[0].options,
            vec!["ro", "rbind"]
        );
        // A view of one layer: that layer, read-only, no overlay.
        let one = for_snapshot(&[p("/s/1/fs")], None, &own);
        assert_eq!(one[0].kind, "bind");
        assert_eq!(one[0].source, "/s/1/fs");
        assert_eq!(one[0].options, vec!["ro", "rbind"]);
        // An active snapshot over two layers.
        let active = for_snapshot(&[p("/s/2/fs"), p("/s/1/fs")], Some(&up), &own);
        assert_eq!(
            active,
            vec![MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    "workdir=/s/3/work".into(),
                    "upperdir=/s/3/fs".into(),
                    "lowerdir=/s/2/fs:/s/1/fs".into()
                ]
            }]
        );
        // A view of two layers: lowers only.
        let view = for_snapshot(&[p("/s/2/fs"), p("/s/1/fs")], None, &own);
        assert_eq!(
            view[0].options,
            vec!["index=off", "lowerdir=/s/2/fs:/s/1/fs"]
        );
    }
}
