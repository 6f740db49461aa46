//! Headless Chromium driven over plain WebDriver (W3C, JSON over HTTP with the reqwest client
//! the tests already use): Debian's `chromium` and `chromium-driver` (scripts/setup.sh). A
//! [`Browser`] starts its own chromedriver on a free port and kills it when dropped.

use serde_json::{Value, json};
use specflow_test_support::testing::eventually;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the browser tests leave their screenshots: `target/test-artifacts/gateway_page/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts/gateway_page");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// A chromedriver process, killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One Chromium session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Driver,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn chromium_binary() -> &'static str {
    // Debian's /usr/bin/chromium is a wrapper script; the browser itself is here.
    if Path::new("/usr/lib/chromium/chromium").exists() {
        "/usr/lib/chromium/chromium"
    } else {
        "/usr/bin/chromium"
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; with `fake_microphone`, the browser's
    /// microphone plays that WAV (16-bit PCM) in a loop, and the permission is granted. The path
    /// is made canonical first: Chromium's fake device gives silence for one with `..` in it.
    pub async fn start(fake_microphone: Option<&Path>) -> Self {
        let port = free_port();
        let log = artifacts_dir().join(format!("chromedriver-{port}.log"));
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium-driver; scripts/setup.sh)");
        let driver = Driver(child);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(20), async || {
            let Ok(response) = http.get(format!("{base}/status")).send().await else {
                return false;
            };
            let status = response.json::<Value>().await.unwrap_or_default();
            status["value"]["ready"] == true
        })
        .await;
        assert!(ready, "chromedriver not ready in 20 s");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1200,1000".to_owned(),
            "--autoplay-policy=no-user-gesture-required".to_owned(),
        ];
        if let Some(wav) = fake_microphone {
            // Chromium's fake device plays silence, without a word, from a path that does not
            // resolve as given: one with `..` (what `reference_signal` returns) is refused.
            let wav = std::fs::canonicalize(wav)
                .unwrap_or_else(|e| panic!("the fake microphone's {}: {e}", wav.display()));
            args.push("--use-fake-device-for-media-stream".into());
            args.push("--use-fake-ui-for-media-stream".into());
            args.push(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_binary(), "args": args},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session answer");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"));
        Self {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver request")
            .json()
            .await
            .expect("webdriver answer");
        if answer["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.call(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    async fn element(&self, css: &str) -> String {
        let body = json!({ "using": "css selector", "value": css });
        let found = self
            .call(reqwest::Method::POST, "/element", Some(body))
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_owned()
    }

    /// A real click (a user gesture, which audio needs) on the element `css`.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clears the input `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// `document.getElementById(id)`'s `value` (outputs), or its text.
    pub async fn read(&self, id: &str) -> String {
        let script = "const e = document.getElementById(arguments[0]);
            return e.value !== undefined && e.tagName !== 'DIV' ? e.value : e.textContent;";
        self.script(script, json!([id]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element `id`'s `data-{name}` attribute (empty when missing).
    pub async fn attribute(&self, id: &str, name: &str) -> String {
        self.script(
            "return document.getElementById(arguments[0]).dataset[arguments[1]] || '';",
            json!([id, name]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Whether the element `id` is shown.
    pub async fn shown(&self, id: &str) -> bool {
        self.script(
            "return !document.getElementById(arguments[0]).hidden;",
            json!([id]),
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// A PNG of the page (`css` = None) or of one element.
    pub async fn screenshot(&self, css: Option<&str>) -> Vec<u8> {
        let path = match css {
            None => "/screenshot".to_owned(),
            Some(css) => format!("/element/{}/screenshot", self.element(css).await),
        };
        let encoded = self.call(reqwest::Method::GET, &path, None).await;
        decode_base64(encoded.as_str().expect("base64 screenshot"))
    }

    /// Saves a PNG of the page as `name` among the artifacts; returns its path.
    pub async fn save_screenshot(&self, name: &str) -> PathBuf {
        let path = artifacts_dir().join(name);
        std::fs::write(&path, self.screenshot(None).await).expect("write screenshot");
        path
    }

    /// Ends the session (chromedriver is killed on drop).
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// Standard base64 (what WebDriver screenshots are).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let mut bits = 0u32;
        for &c in group {
            bits = bits << 6 | value(c);
        }
        bits <<= 6 * (4 - group.len() as u32);
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// A part of an image, as fractions of its width and height.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

/// How a PNG's pixels vary within `region`: the number of distinct colours and the standard
/// deviation of the luminance (0–255).
pub fn pixel_spread(png_bytes: &[u8], region: Region) -> (usize, f64) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    let channels = frame.color_type.samples();
    let (width, height) = (frame.width as usize, frame.height as usize);
    let at = |fraction: f64, size: usize| ((fraction * size as f64).round() as usize).min(size);
    let (x0, x1) = (at(region.left, width), at(region.right, width));
    let (y0, y1) = (at(region.top, height), at(region.bottom, height));
    let mut colours = std::collections::HashSet::new();
    let (mut sum, mut squares, mut n) = (0f64, 0f64, 0f64);
    for y in y0..y1 {
        let row = &pixels[y * frame.line_size..][..width * channels];
        for p in row.chunks_exact(channels).take(x1).skip(x0) {
            colours.insert(p[..3.min(channels)].to_vec());
            let y = f64::from(p[0]) * 0.299
                + f64::from(p[1.min(channels - 1)]) * 0.587
                + f64::from(p[2.min(channels - 1)]) * 0.114;
            sum += y;
            squares += y * y;
            n += 1.0;
        }
    }
    assert!(n > 0.0, "an empty region: {region:?} of {width}×{height}");
    let mean = sum / n;
    (colours.len(), (squares / n - mean * mean).max(0.0).sqrt())
}
