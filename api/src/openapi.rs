//! The OpenAPI document's info, tags and security schemes; operations come from the
//! handlers' annotations (see `build_router`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Messages API",
        description = "The app tier of the two-tier message board: post, list, edit and delete \
                       messages. Errors are RFC 9457 problem documents (application/problem+json).",
        license(name = "MIT"),
    ),
    tags(
        (name = "messages", description = "The message board"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "What the service tells about itself"),
        (name = "compatibility", description = "Routes of the original Flask app"),
    ),
    modifiers(&EditToken),
)]
pub struct ApiDoc;

struct EditToken;

impl Modify for EditToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "edit_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The edit_token returned when the message was created, or the admin token.",
                    ))
                    .build(),
            ),
        );
    }
}
