//! Rendering for people: kubectl-style tables, ages and YAML.

use anyhow::Result;

use crate::daemon::clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Wide,
}

/// kubectl's AGE: the largest unit or two that matter ("45s", "3m12s", "5h", "12d").
pub fn age(timestamp: Option<&str>) -> String {
    let Some(t) = timestamp.and_then(clock::parse) else {
        return "<unknown>".into();
    };
    let secs = (clock::now() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.len() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Prints the API's answer as it came (`-o json`) or as YAML (`-o yaml`); false when the
/// format asks for a table instead.
pub fn print_raw(body: &[u8], format: Option<Format>) -> Result<bool> {
    match format {
        Some(Format::Json) => println!("{}", String::from_utf8_lossy(body)),
        Some(Format::Yaml) => print!("{}", yaml(body)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The API's JSON as YAML.
pub fn yaml(json: &[u8]) -> Result<String> {
    let value: serde_json::Value = serde_json::from_slice(json)?;
    Ok(serde_saphyr::to_string(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let t = table(
            &["NAME", "AGE"],
            &[
                vec!["web".into(), "5s".into()],
                vec!["a-long-name".into(), "3m".into()],
            ],
        );
        assert_eq!(t, "NAME          AGE\nweb           5s\na-long-name   3m\n");
    }

    #[test]
    fn ages_pick_sensible_units() {
        let ago = |s: i64| clock::format(clock::now() - time::Duration::seconds(s));
        assert_eq!(age(Some(&ago(5))), "5s");
        assert_eq!(age(Some(&ago(200))), "3m20s");
        assert_eq!(age(Some(&ago(3 * 86400))), "3d");
        assert_eq!(age(None), "<unknown>");
    }
}
