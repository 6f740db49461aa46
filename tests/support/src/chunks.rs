//! Input messages: chunks of s16 PCM with the `audio.*` headers
//! ([`specflow::audio::headers::ChunkHeaders`]), and deterministic test audio.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use specflow::audio::SampleFormat;
use specflow::audio::headers::ChunkHeaders;

/// Capture time of sample 0 of every test stream, in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_700_000_000_000;

/// One message to send.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// Message key (the stream id), if any.
    pub key: Option<Vec<u8>>,
    /// PCM payload.
    pub payload: Vec<u8>,
    /// Headers as (name, value).
    pub headers: Vec<(String, String)>,
}

impl Chunk {
    /// A chunk of stream `key` with `payload` and the headers `headers` encodes.
    pub fn new(key: &str, payload: Vec<u8>, headers: &ChunkHeaders) -> Self {
        Self {
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers: headers
                .to_pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// Whether the chunk carries `audio.eos=1`.
    pub fn is_eos(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == specflow::audio::headers::EOS && v == "1")
    }

    /// The Kafka record of this chunk for `topic` (any partition).
    pub fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &self.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&self.payload)
            .headers(headers);
        match &self.key {
            Some(key) => record.key(key.as_slice()),
            None => record,
        }
    }
}

/// Little-endian bytes of s16 samples.
pub fn s16le_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Cuts interleaved s16 PCM of one stream into chunks of random sizes (1 to `max_frames`
/// frames, from `seed`) with every header; the last one carries `audio.eos`.
pub fn chunk_stream(
    key: &str,
    pcm: &[i16],
    channels: u16,
    sample_rate: u32,
    seed: u64,
    max_frames: usize,
) -> Vec<Chunk> {
    let mut rng = StdRng::seed_from_u64(seed);
    let width = usize::from(channels);
    let frames = pcm.len() / width;
    let mut chunks = Vec::new();
    let mut start = 0usize;
    while start < frames {
        let len = rng.random_range(1..=max_frames).min(frames - start);
        let headers = ChunkHeaders::pcm(SampleFormat::S16le, sample_rate, channels, start as u64)
            .with_timestamp_ms(EPOCH_MS + start as i64 * 1000 / i64::from(sample_rate))
            .with_eos(start + len == frames);
        let payload = s16le_bytes(&pcm[start * width..(start + len) * width]);
        chunks.push(Chunk::new(key, payload, &headers));
        start += len;
    }
    chunks
}

/// Fixed-size chunks of `chunk` samples of one mono 16 kHz stream with deterministic
/// headers; the last one carries `audio.eos`.
pub fn fixed_chunks(key: &str, pcm: &[i16], chunk: usize) -> Vec<Chunk> {
    pcm.chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let start = i * chunk;
            let headers = ChunkHeaders::pcm(SampleFormat::S16le, 16_000, 1, start as u64)
                .with_timestamp_ms(EPOCH_MS + start as i64 / 16)
                .with_eos(start + part.len() == pcm.len());
            Chunk::new(key, s16le_bytes(part), &headers)
        })
        .collect()
}

/// Deterministic 16 kHz test audio for stream `seed`: a tone whose pitch depends on the seed,
/// plus a little noise, with a short silence in the middle.
pub fn synthetic_pcm(seed: u64, seconds: f64) -> Vec<i16> {
    let n = (seconds * 16_000.0) as usize;
    let hz = 110.0 + 37.0 * seed as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let noise = rng.random_range(-0.025..0.025);
            let silent = i > n / 2 && i < n / 2 + 3000;
            let tone = if silent {
                0.0
            } else {
                0.4 * (2.0 * std::f64::consts::PI * hz * i as f64 / 16_000.0).sin()
            };
            ((tone + noise) * 32_767.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_chunks_cover_the_stream_and_end_it() {
        let pcm = synthetic_pcm(1, 0.25);
        let chunks = fixed_chunks("mic-1", &pcm, 1_600);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.iter().map(|c| c.payload.len()).sum::<usize>(), 8_000);
        assert!(chunks.last().unwrap().is_eos());
        assert!(!chunks[0].is_eos());
        let start: Vec<_> = chunks[1]
            .headers
            .iter()
            .filter(|(k, _)| k == "audio.start_sample" || k == "audio.timestamp_ms")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(start, ["1600", "1700000000100"]);
    }

    #[test]
    fn chunk_stream_cuts_whole_frames() {
        let pcm: Vec<i16> = (0..2_000).collect();
        let chunks = chunk_stream("s", &pcm, 2, 8_000, 7, 100);
        let bytes: usize = chunks.iter().map(|c| c.payload.len()).sum();
        assert_eq!(bytes, 4_000);
        assert!(chunks.iter().all(|c| c.payload.len() % 4 == 0));
        assert_eq!(chunks.iter().filter(|c| c.is_eos()).count(), 1);
    }
}
