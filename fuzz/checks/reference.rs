//! Image references: any string either fails to parse or parses to a reference whose printed
//! form parses back to the same reference (the stored and wire form is the printed one).

use imagecache::registry::ImageReference;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = text.parse::<ImageReference>() else {
        return;
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
}
