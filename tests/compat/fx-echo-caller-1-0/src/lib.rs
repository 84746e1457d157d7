//! Fixture: calls the `echo` SPI as declared at 1.0.0 (no `describe`, no `Echoed::length`)
//! from inside a module: `/echo?text=T[&target=M]` answers what came back, so a test can call a
//! module built against 1.1.0 through an older caller.

use echo_spi::{Echo, EchoSpi};
use pedestal_module_api::{
    Module,
    axum::{Json, Router, extract::Query, routing::get},
    export_module,
    serde_json::{Value, json},
    spi,
};

struct OldCaller;

impl Module for OldCaller {
    fn router(&self) -> Router {
        Router::new().route(
            "/echo",
            get(|Query(params): Query<std::collections::HashMap<String, String>>| async move {
                let text = params.get("text").cloned().unwrap_or_default();
                let remote = match params.get("target") {
                    Some(target) => spi::implementation::<EchoSpi>(target),
                    None => spi::any::<EchoSpi>(),
                };
                let answer: Value = match remote.echo(text).await {
                    Ok(echoed) => json!({"text": echoed.text, "by": echoed.by}),
                    Err(e) => json!({"code": e.code, "message": e.message}),
                };
                Json(answer)
            }),
        )
    }
}

export_module!(OldCaller, requires = [EchoSpi]);
