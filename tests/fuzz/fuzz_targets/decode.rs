//! Fuzzes the wire-format decoder: any key, payload and headers must give Ok or a typed error.
//! Run: `cargo +nightly fuzz run decode --fuzz-dir tests/fuzz`
#![no_main]

use libfuzzer_sys::fuzz_target;
use specflow::audio::{decode, InputConfig};

const HEADERS: [&str; 7] = [
    "audio.format",
    "audio.sample_rate",
    "audio.channels",
    "audio.start_sample",
    "audio.timestamp_ms",
    "audio.eos",
    "other",
];

fuzz_target!(|data: &[u8]| {
    // Layout: [key_len][key][n_headers]{[name][len][value]}*[payload...]
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let key_len = take(1).first().copied().unwrap_or(0) as usize;
    let key = if key_len == 255 { None } else { Some(take(key_len)) };
    let count = take(1).first().copied().unwrap_or(0) % 8;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = HEADERS[take(1).first().copied().unwrap_or(0) as usize % HEADERS.len()];
        let len = take(1).first().copied().unwrap_or(0) as usize % 24;
        headers.push((name, Some(take(len))));
    }
    let payload = rest;
    let input = InputConfig { max_message_bytes: 1 << 16, ..InputConfig::default() };
    let mut samples = Vec::new();
    if let Ok(meta) = decode(&input, key, Some(payload), headers, None, &mut samples) {
        assert_eq!(samples.len(), meta.frames);
        assert!(samples.iter().all(|s| s.is_finite()));
    }
});
