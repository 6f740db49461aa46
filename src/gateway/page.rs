//! The browser view at `/`: a page that draws a stream's features live (mel spectrogram, pitch
//! track, loudness), fed by the live feed of a stream or by the browser's microphone through the
//! WebSocket ingest. Every asset is compiled into the binary; `/ui/info` tells the page what it
//! needs to know before it has a token.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;

use super::Shared;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const DRAW_JS: &str = include_str!("page/draw.js");
const WORKLET_JS: &str = include_str!("page/worklet.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// The page's routes (no token: the page itself holds no data, and asks for the token).
pub(super) fn routes() -> Router<Shared> {
    let asset = |content_type: &'static str, body: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        })
    };
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/ui/app.js",
            asset("text/javascript; charset=utf-8", APP_JS),
        )
        .route(
            "/ui/draw.js",
            asset("text/javascript; charset=utf-8", DRAW_JS),
        )
        .route(
            "/ui/worklet.js",
            asset("text/javascript; charset=utf-8", WORKLET_JS),
        )
        .route("/ui/style.css", asset("text/css; charset=utf-8", STYLE_CSS))
        .route("/ui/info", get(info))
}

/// What the page needs first: whether to ask for a token, the rate to capture at, and the
/// frame geometry (for the delay of a frame's last sample).
async fn info(State(gateway): State<Shared>) -> impl IntoResponse {
    let settings = &gateway.settings;
    axum::Json(json!({
        "tokens_required": gateway.tokens.required(),
        "sample_rate": settings.input.sample_rate,
        "frame_length": settings.dsp.frame_length,
        "hop_length": settings.dsp.hop_length,
        "history": settings.mongo.enabled,
        "pitch_fmin": settings.dsp.pitch_fmin,
        "pitch_fmax": settings.dsp.pitch_fmax,
    }))
}
