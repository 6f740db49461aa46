//! The browser view at `/`, in headless Chromium (Debian's `chromium` + `chromium-driver`)
//! driven over WebDriver, against the real local Kafka and FerretDB and a worker in process:
//! the microphone mode with Chromium's fake capture device playing a shipped WAV (through a
//! 16 kHz context, and through the worklet's resampler), the watch mode on a stream from
//! `specflow produce` (live, then from the stored start), the token prompt and the error
//! messages. What a user would see is asserted: the stored frames are speech, not silence (loud
//! and voiced frames, from MongoDB), the page's voiced count equals MongoDB's, the drawn columns
//! of the spectrogram vary, and the delay is positive or "ahead of real time". Screenshots go to
//! `target/test-artifacts/gateway_page/`.

use specflow_test_support::testing as common;
mod gateway_support;

use common::*;
use gateway_support::browser::{Browser, Region, artifacts_dir, pixel_spread};
use gateway_support::{RunningGateway, SERVICES, settled_frames, setup};
use serde_json::json;
use sha2::Digest;
use std::time::Duration;

/// Waits (up to `secs`) until the page's `id` element reads as `want` says.
async fn wait_for(browser: &Browser, id: &str, secs: u64, want: impl Fn(&str) -> bool) -> String {
    let mut seen = String::new();
    let held = eventually(Duration::from_secs(secs), async || {
        seen = browser.read(id).await;
        want(&seen)
    })
    .await;
    let error = browser.read("error").await;
    assert!(
        held,
        "#{id} is {seen:?} after {secs} s (page error: {error:?})"
    );
    seen
}

/// Waits until the page has drawn exactly the `stored` frames, the last one being `stored - 1`.
async fn page_draws_every_stored_frame(browser: &Browser, stored: i64) {
    wait_for(browser, "frame-count", 30, |n| n == stored.to_string()).await;
    let last = browser.read("last-frame-index").await;
    assert_eq!(last, (stored - 1).to_string());
}

/// Saves a screenshot of the page as `name` and checks what a user sees in the spectrogram's
/// data region (the columns holding drawn frames, below the label): many colours and a wide
/// brightness spread. An empty canvas against one uniform colour would pass a whole-canvas
/// check; a silent stream draws one uniform colour.
async fn screenshot_with_a_spectrogram(browser: &Browser, name: &str) {
    let saved = browser.save_screenshot(name).await;
    eprintln!("screenshot: {}", saved.display());
    let spectrogram = browser.screenshot(Some("#spectrogram")).await;
    std::fs::write(
        artifacts_dir().join(format!("spectrogram-{name}")),
        &spectrogram,
    )
    .unwrap();
    let drawn = browser
        .script(
            "const c = document.getElementById('spectrogram');
            return [Number(c.dataset.drawnFrom), c.width, c.height];",
            json!([]),
        )
        .await;
    let [from, width, height] = [0, 1, 2].map(|i| drawn[i].as_f64().unwrap_or(f64::NAN));
    assert!(from < width - 50.0, "at least 50 columns drawn: {drawn}");
    // Below the label (16 canvas pixels), in the drawn columns.
    let region = Region {
        left: from / width,
        right: 1.0,
        top: 16.0 / height,
        bottom: 1.0,
    };
    let (colours, spread) = pixel_spread(&spectrogram, region);
    eprintln!("{name}: the drawn spectrogram holds {colours} colours, luminance std {spread:.1}");
    assert!(
        colours > 200 && spread > 25.0,
        "the drawn spectrogram looks flat (silence?): {colours} colours, luminance std {spread:.1}"
    );
}

/// Per stream frames of what MongoDB holds: how many, how many louder than -50 dBFS, how many
/// voiced (an `f0`).
async fn stored_loudness_and_pitch(
    collection: &mongodb::Collection<mongodb::bson::Document>,
) -> (usize, usize, usize) {
    let (mut frames, mut loud, mut voiced) = (0, 0, 0);
    for document in all_documents(collection).await {
        for frame in specflow::gateway::features::frames_of(&document).expect("frames") {
            frames += 1;
            let loudness = frame.get("loudness_dbfs").and_then(|v| v.as_f64());
            if loudness.is_some_and(|db| db > -50.0) {
                loud += 1;
            }
            if frame
                .get("f0")
                .and_then(|v| v.as_f64())
                .is_some_and(|f| f > 0.0)
            {
                voiced += 1;
            }
        }
    }
    (frames, loud, voiced)
}

/// The stored frames are not silence (speech: loud on a fair share of frames, voiced on some),
/// and the page drew a pitch point for every voiced frame.
async fn the_stream_is_speech_and_the_page_shows_its_pitch(
    browser: &Browser,
    collection: &mongodb::Collection<mongodb::bson::Document>,
) {
    let (frames, loud, voiced) = stored_loudness_and_pitch(collection).await;
    eprintln!("stored: {frames} frames, {loud} above -50 dBFS, {voiced} voiced");
    assert!(
        loud * 3 > frames,
        "the stored stream is (near) silent: {loud} of {frames} frames above -50 dBFS"
    );
    assert!(
        voiced * 10 > frames,
        "too few voiced frames for speech: {voiced} of {frames}"
    );
    let shown = browser.read("voiced-count").await;
    assert_eq!(
        shown,
        voiced.to_string(),
        "the page's voiced frames (its pitch line) against MongoDB's"
    );
}

/// The microphone mode on the page at `path`: Chromium's fake device plays `speech_16k.wav`
/// (its device runs at 44.1 kHz) into an `AudioContext` at `context_rate` (the browser
/// resamples to 16 kHz, or the worklet does), for about five seconds, then Stop.
async fn microphone_mode(path: &str, context_rate: fn(f64) -> bool, screenshot: &str) {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-page-mic").await;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let browser = Browser::start(Some(&reference_signal("speech_16k.wav"))).await;
    browser.goto(&gateway.url(path)).await;
    browser.click("#mic-start").await;
    wait_for(&browser, "frame-count", 60, |n| {
        n.parse::<i64>().unwrap_or(0) > 0
    })
    .await;
    let stream = browser.read("stream-shown").await;
    assert!(stream.starts_with("mic-"), "{stream}");
    let rate = browser
        .script("return mic.context.sampleRate;", json!([]))
        .await;
    assert!(
        rate.as_f64().is_some_and(context_rate),
        "the capture's AudioContext runs at {rate} Hz"
    );
    // Five seconds of the (looping) recording, then Stop: audio.eos.
    tokio::time::sleep(Duration::from_secs(5)).await;
    browser.click("#mic-stop").await;
    wait_for(&browser, "state", 30, |s| s.contains("stopped")).await;
    assert!(
        !browser.shown("error").await,
        "{}",
        browser.read("error").await
    );
    let collection = collection(&names).await;
    let stored = settled_frames(&collection).await;
    assert!(stored > 300, "about 5 s at 10 ms a frame: {stored}");
    page_draws_every_stored_frame(&browser, stored).await;
    let delay = browser.read("delay-ms").await;
    assert!(delay.ends_with(" ms"), "the delay is shown: {delay:?}");
    let delay_ms: i64 = browser
        .attribute("delay-ms", "ms")
        .await
        .parse()
        .unwrap_or(-1);
    assert!(
        (0..10_000).contains(&delay_ms),
        "a live microphone is behind the clock: {delay:?}"
    );
    the_stream_is_speech_and_the_page_shows_its_pitch(&browser, &collection).await;
    screenshot_with_a_spectrogram(&browser, screenshot).await;
    browser.quit().await;
    gateway.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn microphone_mode_streams_the_capture_and_draws_every_stored_frame() {
    microphone_mode("/", |rate| rate == 16_000.0, "microphone.png").await;
}

/// The path a browser takes when it cannot resample a device into a 16 kHz context (Firefox):
/// a context at the device's rate, and the worklet resamples.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn microphone_mode_resamples_in_the_worklet_from_the_device_rate() {
    microphone_mode(
        "/?capture=native",
        |rate| rate > 16_000.0,
        "microphone-native-rate.png",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_mode_follows_a_produced_stream_live_and_from_its_start() {
    let _shared = SERVICES.read().await;
    let (names, settings) = setup("gateway-page-watch").await;
    let worker = spawn_worker(settings.clone());
    let gateway = RunningGateway::start(&settings).await;
    let browser = Browser::start(None).await;
    browser.goto(&gateway.url("/")).await;
    let prefix = format!("{}-", unique("watched"));
    let stream = format!("{prefix}0");
    browser.type_into("#stream-id", &stream).await;
    browser.click("#watch").await;
    wait_for(&browser, "state", 30, |s| s == "live").await;
    assert!(browser.shown("error").await, "an unknown stream is said so");

    produce_speech(
        specflow_test_support::specflow_binary!(),
        &settings,
        &["--streams", "1", "--stream-prefix", &prefix],
    );
    let collection = collection(&names).await;
    let stored = settled_frames(&collection).await;
    page_draws_every_stored_frame(&browser, stored).await;
    assert!(
        !browser.shown("error").await,
        "the notice goes with the first frames"
    );
    the_stream_is_speech_and_the_page_shows_its_pitch(&browser, &collection).await;
    // `specflow produce` sends faster than real time: capture times ahead of the clock are not
    // shown as a negative delay.
    let delay = browser.read("delay-ms").await;
    let delay_ms: i64 = browser
        .attribute("delay-ms", "ms")
        .await
        .parse()
        .expect("a delay in data-ms");
    eprintln!("watch: delay {delay:?} ({delay_ms} ms)");
    if delay_ms < 0 {
        assert_eq!(delay, "ahead of real time");
    } else {
        assert_eq!(delay, format!("{delay_ms} ms"));
    }
    screenshot_with_a_spectrogram(&browser, "watch.png").await;

    // From the stored start: history from MongoDB, then the output topic (which holds the same
    // records again): every frame once.
    browser
        .script(
            "document.getElementById('from').value = 'start';",
            json!([]),
        )
        .await;
    browser.click("#watch").await;
    wait_for(&browser, "state", 30, |s| s.contains("history")).await;
    page_draws_every_stored_frame(&browser, stored).await;
    the_stream_is_speech_and_the_page_shows_its_pitch(&browser, &collection).await;
    screenshot_with_a_spectrogram(&browser, "watch-from-start.png").await;
    browser.quit().await;
    gateway.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_asks_for_a_token_and_says_what_failed() {
    let _shared = SERVICES.read().await;
    let (_names, mut settings) = setup("gateway-page-errors").await;
    settings.gateway.tokens = vec![hex::encode(sha2::Sha256::digest(b"s3cret"))];
    let gateway = RunningGateway::start(&settings).await;
    let browser = Browser::start(None).await;
    browser.goto(&gateway.url("/")).await;
    assert!(
        eventually(Duration::from_secs(10), async || browser
            .shown("token-form")
            .await)
        .await,
        "the page asks for the token"
    );
    browser.type_into("#token", "wrong").await;
    browser.click("#token-save").await;
    wait_for(&browser, "error", 10, |e| e.contains("401")).await;
    assert!(browser.shown("token-form").await);
    browser.save_screenshot("token-refused.png").await;
    browser.type_into("#token", "s3cret").await;
    browser.click("#token-save").await;
    assert!(
        eventually(Duration::from_secs(10), async || !browser
            .shown("error")
            .await)
        .await
    );
    // An unknown stream: a notice, not a blank canvas.
    browser.type_into("#stream-id", &unique("nobody")).await;
    browser.click("#watch").await;
    wait_for(&browser, "error", 20, |e| e.contains("unknown")).await;
    browser.save_screenshot("unknown-stream.png").await;
    // The token is kept for the tab.
    browser.goto(&gateway.url("/")).await;
    assert!(
        eventually(Duration::from_secs(10), async || browser
            .attribute("recent-streams", "loaded")
            .await
            == "true")
        .await,
        "the reloaded page lists the streams with the kept token"
    );
    assert!(
        !browser.shown("token-form").await,
        "the tab keeps the token"
    );
    gateway.stop().await;

    // A broker that does not answer.
    settings.gateway.tokens.clear();
    settings.kafka.brokers = "127.0.0.1:1".into();
    let unreachable = RunningGateway::start(&settings).await;
    browser.goto(&unreachable.url("/")).await;
    wait_for(&browser, "error", 30, |e| {
        e.contains("Kafka is unreachable")
    })
    .await;
    browser.type_into("#stream-id", "anyone").await;
    browser.click("#watch").await;
    wait_for(&browser, "state", 30, |s| s == "error").await;
    let message = browser.read("error").await;
    assert!(message.contains("Kafka is unreachable"), "{message}");
    browser.save_screenshot("kafka-unreachable.png").await;
    browser.quit().await;
    unreachable.stop().await;
}
