//! The property each fuzz target checks, one plain function per target taking the raw
//! input bytes. Every function panics when the property does not hold (which AFL reports
//! as a crash) and returns normally otherwise. Shared, through `#[path]`, by the AFL
//! binaries in `fuzz/src/bin/` and by the regression test `tests/fuzz_corpus.rs`.

use opalcrs::control::{Reply, RequestEnvelope};
use opalcrs::params::file as param_file;
use opalcrs::snapshot::metadata::{
    TOKEN_COMPONENT, TOKEN_COMPONENT_1_6, TOKEN_CONTEXT, TOKEN_PARAM, TOKEN_PID,
};
use opalcrs::snapshot::{extract_expected_component, read_token, Manifest, Metadata};
use std::path::Path;

/// `Metadata::parse` never panics; whatever it returns that `render` accepts reads back
/// equal; `read_token` and `extract_expected_component` never panic.
pub fn metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = Metadata::parse(&text);
    if let Ok(rendered) = parsed.render() {
        let reparsed = Metadata::parse(&rendered);
        assert_eq!(
            reparsed, parsed,
            "parse(render(parse(input))) != parse(input); rendered = {rendered:?}"
        );
        // Rendering is deterministic, so a second round gives the same text.
        assert_eq!(reparsed.render().ok().as_deref(), Some(rendered.as_str()));
    }
    for token in
        [TOKEN_PID, TOKEN_COMPONENT, TOKEN_COMPONENT_1_6, TOKEN_CONTEXT, TOKEN_PARAM, "#", ""]
    {
        let _ = read_token(&text, token);
    }
    let _ = extract_expected_component(&text);
}

/// `Manifest::from_json` never panics.
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Manifest::from_json(&text);
}

/// The parameter-file parser never panics and every entry it returns has a non-empty name
/// without blanks and a line number within the text.
pub fn param_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (entries, warnings) = param_file::parse(&text, Some(Path::new("/home/u")));
    let lines = text.split('\n').count();
    for entry in &entries {
        assert!(!entry.name.is_empty(), "empty parameter name in {entry:?}");
        assert!(!entry.name.contains(char::is_whitespace), "blank in parameter name {entry:?}");
        assert!(
            (1..=lines).contains(&entry.line),
            "line {} out of 1..={lines}: {entry:?}",
            entry.line
        );
    }
    for warning in &warnings {
        assert!((1..=lines).contains(&warning.line), "line out of 1..={lines}: {warning:?}");
    }
}

/// Decoding a request or a reply never panics; a decoded request encodes and decodes back
/// equal.
pub fn control(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(request) = serde_json::from_str::<RequestEnvelope>(&text) {
        let encoded = serde_json::to_string(&request).expect("a decoded request encodes");
        let decoded: RequestEnvelope = serde_json::from_str(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded request {encoded:?} does not decode: {e}"));
        assert_eq!(decoded, request, "request round trip through {encoded:?}");
    }
    if let Ok(reply) = serde_json::from_str::<Reply>(&text) {
        let _ = serde_json::to_string(&reply);
    }
}
