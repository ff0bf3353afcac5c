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

/// A directory that cannot be named in an overlay option string as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path:?} cannot be given to overlayfs: it contains {found:?}, which its option string \
     would read as a separator or escape (the state root and disk mount paths are checked \
     for this at start and at create, so this path came some other way: report it)"
)]
pub struct UnsafeOverlayPath {
    pub path: PathBuf,
    pub found: char,
}

/// `path` as it goes into `upperdir=`, `workdir=` or `lowerdir=`: refused rather than let
/// a `,` add an option or a `:` add a lower layer.
fn option_path(path: &Path) -> Result<String, UnsafeOverlayPath> {
    match crate::mount_path::unsafe_char(path) {
        Some(found) => Err(UnsafeOverlayPath {
            path: path.to_owned(),
            found,
        }),
        None => Ok(path.display().to_string()),
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
pub fn for_snapshot(
    lowers: &[PathBuf],
    upper: Option<&Upper>,
    own: &Path,
) -> Result<Vec<MountSpec>, UnsafeOverlayPath> {
    Ok(match (lowers, upper) {
        ([], Some(u)) => vec![bind(&u.upper, false)],
        ([], None) => vec![bind(own, true)],
        ([only], None) => vec![bind(only, true)],
        _ => {
            let mut options = vec!["index=off".to_owned()];
            if let Some(u) = upper {
                options.push(format!("workdir={}", option_path(&u.work)?));
                options.push(format!("upperdir={}", option_path(&u.upper)?));
            }
            let lowers: Vec<String> = lowers
                .iter()
                .map(|p| option_path(p))
                .collect::<Result<_, _>>()?;
            options.push(format!("lowerdir={}", lowers.join(":")));
            vec![MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options,
            }]
        }
    })
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
            for_snapshot(&[], Some(&up), &own).unwrap(),
            vec![MountSpec {
                kind: "bind".into(),
                source: "/s/3/fs".into(),
                options: vec!["rw".into(), "rbind".into()]
            }]
        );
        // A view of nothing: its own empty directory, read-only.
        assert_eq!(
            for_snapshot(&[], None, &own).unwrap()[0].options,
            vec!["ro", "rbind"]
        );
        // A view of one layer: that layer, read-only, no overlay.
        let one = for_snapshot(&[p("/s/1/fs")], None, &own).unwrap();
        assert_eq!(one[0].kind, "bind");
        assert_eq!(one[0].source, "/s/1/fs");
        assert_eq!(one[0].options, vec!["ro", "rbind"]);
        // An active snapshot over two layers.
        let active = for_snapshot(&[p("/s/2/fs"), p("/s/1/fs")], Some(&up), &own).unwrap();
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
        let view = for_snapshot(&[p("/s/2/fs"), p("/s/1/fs")], None, &own).unwrap();
        assert_eq!(
            view[0].options,
            vec!["index=off", "lowerdir=/s/2/fs:/s/1/fs"]
        );
    }

    #[test]
    fn separators_never_reach_an_overlay_option() {
        let own = p("/s/3/fs");
        let evil = Upper {
            upper: p("/d/x,upperdir=/"),
            work: p("/s/3/work"),
        };
        let err = for_snapshot(&[p("/s/2/fs"), p("/s/1/fs")], Some(&evil), &own).unwrap_err();
        assert_eq!(err.found, ',');
        for lower in ["/d/a:/etc", "/d/a b", "/d/a\nb"] {
            let err = for_snapshot(&[p(lower), p("/s/1/fs")], None, &own).unwrap_err();
            assert_eq!(err.path, p(lower), "{err}");
        }
    }
}
