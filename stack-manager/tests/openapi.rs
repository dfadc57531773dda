//! The checked-in OpenAPI document must match what the code generates.

#[test]
fn checked_in_openapi_matches_the_code() {
    let generated = stack_manager::openapi::document_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/strato.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    if generated != checked_in {
        panic!(
            "openapi/strato.json is out of date with the code. Regenerate it with\n  \
             cargo run -p stack-manager -- openapi > openapi/strato.json"
        );
    }
}

#[test]
fn every_operation_documents_its_responses() {
    let doc = stack_manager::openapi::document();
    let mut operations = 0;
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("get", &item.get),
            ("post", &item.post),
            ("put", &item.put),
            ("patch", &item.patch),
            ("delete", &item.delete),
        ] {
            if let Some(op) = op {
                operations += 1;
                assert!(
                    !op.responses.responses.is_empty(),
                    "{method} {path} documents no response"
                );
            }
        }
    }
    assert!(operations > 50, "only {operations} operations documented");
}
