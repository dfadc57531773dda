//! The OpenAPI 3 document, generated from the handlers' annotations and
//! checked in at `openapi/strato.json` (a test fails when they differ;
//! regenerate with `stack-manager openapi > openapi/strato.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

pub fn document() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Strato API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Tenant and operator API of the Strato private cloud. Every error is \
                     `{ \"error\": code, \"message\": ... }`. Authenticate with `Authorization: Bearer <token>`.",
                ))
                .build(),
        )
        .build();
    for part in crate::http::docs()
        .into_iter()
        .chain([crate::internal::Doc::openapi_doc()])
    {
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.schemas.insert(
        "ErrorBody".into(),
        <api::ErrorBody as utoipa::PartialSchema>::schema(),
    );
    components.schemas.insert(
        "ErrorCode".into(),
        <api::ErrorCode as utoipa::PartialSchema>::schema(),
    );
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
        _,
        _,
        &str,
    >("bearer", [])]);
    doc
}

pub fn document_json() -> String {
    let mut s = document().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}
