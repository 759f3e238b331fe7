//! The conformance corpus (`tests/conformance/records.json`, written from
//! `docs/protocol.md` in another language): the Rust reader must reach every verdict.

use prism_mesh::protocol::{validate_put, EventRecord};
use serde_json::Value;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn the_rust_reader_reaches_every_verdict_of_the_conformance_corpus() {
    let corpus: Value = serde_json::from_str(include_str!("../conformance/records.json"))
        .expect("records.json is JSON");
    let cases = corpus["cases"].as_array().expect("cases");
    let mut wrong = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let body = hex(case["body"].as_str().unwrap());
        let expected = case["valid"].as_bool().unwrap();
        let verdict = match case["kind"].as_str().unwrap() {
            "put" => validate_put(
                case["key"].as_str().unwrap(),
                case["nats_ttl"].as_str(),
                &body,
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            "event" => EventRecord::decode(&body)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => panic!("unknown kind {other}"),
        };
        if verdict.is_ok() != expected {
            wrong.push(format!(
                "{name} ({}): expected {}, got {verdict:?}",
                case["why"].as_str().unwrap(),
                if expected { "valid" } else { "invalid" }
            ));
        }
        if expected {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(
        valid >= 10 && invalid >= 30,
        "{valid} valid, {invalid} invalid"
    );
    assert!(wrong.is_empty(), "verdicts differ:\n{}", wrong.join("\n"));
}
