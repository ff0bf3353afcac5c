//! The part of containerd's filter syntax its clients send to a snapshotter's List:
//! `field==value`, `field!=value` and `field` (present), joined by ',' (and); several filters
//! are or-ed. Fields: `name`, `parent`, `kind`, `labels.<key>` or `labels."<key>"`. Values
//! may be bare or double-quoted. containerd's own metadata layer filters what comes back
//! again, but a snapshotter that ignored filters would hand every `ctr snapshots ls --filter`
//! the whole list.

use super::{Result, SnapshotError, SnapshotInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Field,
    op: Op,
}

/// A parsed set of filters: matches when any filter's clauses all hold.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Vec<Clause>>);

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let parsed = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_filter(f))
            .collect::<Result<_>>()?;
        Ok(Filters(parsed))
    }

    pub fn matches(&self, info: &SnapshotInfo) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.iter().all(|c| c.matches(info)))
    }
}

impl Clause {
    fn matches(&self, info: &SnapshotInfo) -> bool {
        let value = match &self.field {
            Field::Name => Some(info.name.as_str()),
            Field::Parent => info.parent.as_deref(),
            Field::Kind => Some(info.kind.as_str()),
            Field::Label(k) => info.labels.get(k).map(String::as_str),
        };
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Equal(want) => value.unwrap_or("") == want,
            Op::NotEqual(want) => value.unwrap_or("") != want,
        }
    }
}

fn invalid(filter: &str, why: &str) -> SnapshotError {
    SnapshotError::InvalidArgument(format!(
        "filter {filter:?}: {why} (supported: name, parent, kind, labels.<key> with ==, != or \
         presence, joined by ',')"
    ))
}

/// Reads a double-quoted string starting at `s[0] == '"'`; returns it and the rest.
fn quoted<'a>(filter: &str, s: &'a str) -> Result<(String, &'a str)> {
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            '"' => return Ok((out, &s[1 + i + 1..])),
            c => out.push(c),
        }
    }
    Err(invalid(filter, "unterminated quote"))
}

fn parse_filter(filter: &str) -> Result<Vec<Clause>> {
    let mut clauses = Vec::new();
    let mut rest = filter.trim();
    while !rest.is_empty() {
        let (field, after) = parse_field(filter, rest)?;
        let (op, after) = parse_op(filter, after.trim_start())?;
        clauses.push(Clause { field, op });
        rest = after.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(invalid(filter, &format!("unexpected {rest:?}")));
        }
    }
    Ok(clauses)
}

fn parse_field<'a>(filter: &str, s: &'a str) -> Result<(Field, &'a str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (word, rest) = s.split_at(end);
    match word {
        "name" => Ok((Field::Name, rest)),
        "parent" => Ok((Field::Parent, rest)),
        "kind" => Ok((Field::Kind, rest)),
        "labels" => {
            let rest = rest
                .strip_prefix('.')
                .ok_or_else(|| invalid(filter, "labels needs a key: labels.<key>"))?;
            if rest.starts_with('"') {
                let (key, rest) = quoted(filter, rest)?;
                Ok((Field::Label(key), rest))
            } else {
                let end = rest.find(['=', '!', '~', ',']).unwrap_or(rest.len());
                let (key, rest) = rest.split_at(end);
                Ok((Field::Label(key.trim().to_owned()), rest))
            }
        }
        other => Err(invalid(filter, &format!("unknown field {other:?}"))),
    }
}

fn parse_op<'a>(filter: &str, s: &'a str) -> Result<(Op, &'a str)> {
    let (ctor, rest): (fn(String) -> Op, &str) = if let Some(r) = s.strip_prefix("==") {
        (Op::Equal, r)
    } else if let Some(r) = s.strip_prefix("!=") {
        (Op::NotEqual, r)
    } else if s.starts_with("~=") {
        return Err(invalid(
            filter,
            "regular expressions (~=) are not supported",
        ));
    } else {
        return Ok((Op::Present, s));
    };
    let rest = rest.trim_start();
    if rest.starts_with('"') {
        let (value, rest) = quoted(filter, rest)?;
        Ok((ctor(value), rest))
    } else {
        let end = rest.find(',').unwrap_or(rest.len());
        let (value, rest) = rest.split_at(end);
        Ok((ctor(value.trim().to_owned()), rest))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::SnapshotKind;

    fn info(name: &str, parent: Option<&str>, labels: &[(&str, &str)]) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            parent: parent.map(Into::into),
            kind: SnapshotKind::Committed,
            created: 0,
            updated: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn f(s: &[&str]) -> Filters {
        Filters::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_filter_containerds_metadata_layer_sends() {
        let layer = info(
            "sha256:bb",
            Some("k8s.io/3/sha256:aa"),
            &[("containerd.io/snapshot.ref", "sha256:bb")],
        );
        let filter =
            f(&[r#"labels."containerd.io/snapshot.ref"==sha256:bb,parent=="k8s.io/3/sha256:aa""#]);
        assert!(filter.matches(&layer));
        let other_parent = info(
            "sha256:bb",
            Some("x"),
            &[("containerd.io/snapshot.ref", "sha256:bb")],
        );
        assert!(!filter.matches(&other_parent));
    }

    #[test]
    fn clauses_and_filters() {
        let s = info("a", None, &[("k", "v"), ("gc", "")]);
        assert!(f(&[]).matches(&s));
        assert!(f(&["name==a"]).matches(&s));
        assert!(!f(&["name==b"]).matches(&s));
        assert!(f(&["name==b", "kind==committed"]).matches(&s));
        assert!(!f(&["name==a,kind==active"]).matches(&s));
        assert!(f(&["labels.k"]).matches(&s));
        assert!(!f(&["labels.missing"]).matches(&s));
        assert!(f(&["labels.k!=w"]).matches(&s));
        assert!(f(&["parent==\"\""]).matches(&s));
        assert!(Filters::parse(&["colour==red".into()]).is_err());
        assert!(Filters::parse(&["name~=a.*".into()]).is_err());
        assert!(Filters::parse(&["labels.\"open".into()]).is_err());
    }
}
