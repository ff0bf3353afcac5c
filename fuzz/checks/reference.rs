//! Image references: any string either fails to parse or parses to a reference whose printed
//! form parses back to the same reference (the stored and wire form is the printed one).

use imagecache::registry::ImageReference;

/// Returns whether `data` got past the parse into the assertions that follow it (the
/// corpus replay counts these, so a check that bails out early on everything shows).
pub fn check(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(parsed) = text.parse::<ImageReference>() else {
        return false;
    };
    let printed = parsed.to_string();
    let again: ImageReference = printed
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, parsed, "{text:?} printed as {printed:?}");
    assert_eq!(again.to_string(), printed);
    assert!(!parsed.registry().is_empty() && !parsed.repository().is_empty());
    assert!(
        parsed.tag().is_some() || parsed.digest().is_some(),
        "{text:?}: neither tag nor digest"
    );
    assert!(!parsed.manifest_ref().is_empty());
    // The serde form is the printed one.
    let json = serde_json::to_string(&parsed).unwrap();
    assert_eq!(
        serde_json::from_str::<ImageReference>(&json).unwrap(),
        parsed
    );
    true
}
