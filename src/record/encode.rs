//! The worker's record encoders: one walk over a [`FeatureRecord`] writes its JSON (output
//! topic) or its BSON (MongoDB) straight into a byte buffer.
//!
//! The serde views in the parent module define the record; these writers produce the same bytes
//! (the tests compare them byte for byte) without serde's per-value calls: a key is copied with
//! its quotes and separators at once, BSON array keys are written without `fmt`, and float
//! vectors go out in one loop.

use super::{DocumentLayout, FeatureRecord, SCHEMA_VERSION};
use crate::dsp::FeatureName;
use crate::dsp::batch::as_i64;
use mongodb::bson::spec::ElementType;

/// Where a value goes: a named field of an object, or the `i`-th element of an array.
#[derive(Debug, Clone, Copy)]
pub(super) enum Key<'a> {
    /// An object field.
    Name(&'a str),
    /// An array element.
    Index(usize),
}

/// A document writer: the values and nesting a record is made of. [`Out::end`] closes the
/// innermost open object or array.
pub(super) trait Out {
    /// Opens the top-level object.
    fn begin_document(&mut self);
    /// Opens an object at `key`.
    fn begin_object(&mut self, key: Key<'_>);
    /// Opens an array at `key`.
    fn begin_array(&mut self, key: Key<'_>);
    /// Closes the innermost open object or array.
    fn end(&mut self);
    /// A 32-bit integer.
    fn i32(&mut self, key: Key<'_>, value: i32);
    /// A 64-bit integer.
    fn i64(&mut self, key: Key<'_>, value: i64);
    /// A float (JSON: its shortest representation as f32; BSON: widened to a double).
    fn f32(&mut self, key: Key<'_>, value: f32);
    /// A double.
    fn f64(&mut self, key: Key<'_>, value: f64);
    /// A string.
    fn str(&mut self, key: Key<'_>, value: &str);
    /// A boolean.
    fn bool(&mut self, key: Key<'_>, value: bool);
    /// Null.
    fn null(&mut self, key: Key<'_>);
    /// An array of floats at `key`.
    fn f32_array(&mut self, key: Key<'_>, values: &[f32]);
}

/// Deepest nesting a record has (document, frames, frame, vector) with room to spare.
const MAX_DEPTH: usize = 8;

/// JSON exactly as `serde_json::to_writer` writes it: compact, floats formatted by `zmij` (the
/// formatter serde_json uses), non-finite floats as null.
pub(super) struct JsonOut {
    /// The bytes written so far.
    pub(super) buf: Vec<u8>,
    /// The closing bracket of each open object or array, innermost last.
    closers: [u8; MAX_DEPTH],
    depth: usize,
}

impl JsonOut {
    /// A writer appending to `buf`.
    pub(super) fn new(buf: Vec<u8>) -> Self {
        Self {
            buf,
            closers: [0; MAX_DEPTH],
            depth: 0,
        }
    }

    /// A comma unless this is the first entry of its object or array, then `"key":` for a field.
    #[inline(always)]
    fn key(&mut self, key: Key<'_>) {
        if !matches!(self.buf.last(), Some(b'{' | b'[') | None) {
            self.buf.push(b',');
        }
        if let Key::Name(name) = key {
            debug_assert!(
                !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
                "keys need no escaping: {name}"
            );
            self.buf.push(b'"');
            push_short(&mut self.buf, name.as_bytes());
            self.buf.extend_from_slice(b"\":");
        }
    }

    fn open(&mut self, key: Option<Key<'_>>, opener: u8, closer: u8) {
        if let Some(key) = key {
            self.key(key);
        }
        assert!(
            self.depth < MAX_DEPTH,
            "records nest at most {MAX_DEPTH} deep"
        );
        self.closers[self.depth] = closer;
        self.depth += 1;
        self.buf.push(opener);
    }

    #[inline(always)]
    fn integer(&mut self, key: Key<'_>, value: impl itoa::Integer) {
        self.key(key);
        push_short(&mut self.buf, itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    fn float(&mut self, value: impl zmij::Float + FiniteCheck) {
        if value.finite() {
            push_short(
                &mut self.buf,
                zmij::Buffer::new().format_finite(value).as_bytes(),
            );
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }
}

/// Appends `bytes` (a formatted number or a key) with fixed-size moves instead of a `memcpy`
/// call each: 32 bytes are appended, `bytes` is written over them by two overlapping loads and
/// stores of its width class, and the tail is cut off. Longer than 32 bytes: a plain copy.
#[inline(always)]
fn push_short(buf: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n > 32 {
        buf.extend_from_slice(bytes);
        return;
    }
    let len = buf.len();
    buf.resize(len + 32, 0);
    let block = &mut buf[len..len + 32];
    if n >= 16 {
        block[..16].copy_from_slice(&bytes[..16]);
        block[n - 16..n].copy_from_slice(&bytes[n - 16..]);
    } else if n >= 8 {
        block[..8].copy_from_slice(&bytes[..8]);
        block[n - 8..n].copy_from_slice(&bytes[n - 8..]);
    } else if n >= 4 {
        block[..4].copy_from_slice(&bytes[..4]);
        block[n - 4..n].copy_from_slice(&bytes[n - 4..]);
    } else {
        for (to, &from) in block.iter_mut().zip(bytes) {
            *to = from;
        }
    }
    buf.truncate(len + n);
}

/// `is_finite` for the two float widths.
trait FiniteCheck: Copy {
    fn finite(self) -> bool;
}

impl FiniteCheck for f32 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl FiniteCheck for f64 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Out for JsonOut {
    fn begin_document(&mut self) {
        self.open(None, b'{', b'}');
    }

    fn begin_object(&mut self, key: Key<'_>) {
        self.open(Some(key), b'{', b'}');
    }

    fn begin_array(&mut self, key: Key<'_>) {
        self.open(Some(key), b'[', b']');
    }

    fn end(&mut self) {
        self.depth -= 1;
        self.buf.push(self.closers[self.depth]);
    }

    fn i32(&mut self, key: Key<'_>, value: i32) {
        self.integer(key, value);
    }

    fn i64(&mut self, key: Key<'_>, value: i64) {
        self.integer(key, value);
    }

    #[inline(always)]
    fn f32(&mut self, key: Key<'_>, value: f32) {
        self.key(key);
        self.float(value);
    }

    fn f64(&mut self, key: Key<'_>, value: f64) {
        self.key(key);
        self.float(value);
    }

    fn str(&mut self, key: Key<'_>, value: &str) {
        self.key(key);
        serde_json::to_writer(&mut self.buf, value).expect("a string serialises into a Vec");
    }

    fn bool(&mut self, key: Key<'_>, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn null(&mut self, key: Key<'_>) {
        self.key(key);
        self.buf.extend_from_slice(b"null");
    }

    fn f32_array(&mut self, key: Key<'_>, values: &[f32]) {
        self.key(key);
        // A float takes at most 16 bytes with its comma.
        self.buf.reserve(2 + values.len() * 16);
        self.buf.push(b'[');
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.float(v);
        }
        self.buf.push(b']');
    }
}

/// BSON exactly as the `bson` crate's raw serializer writes it (u32 as Int64, f32 widened to a
/// double, `None` as null), straight into one buffer; lengths are filled in when a document
/// closes.
pub(super) struct BsonOut {
    /// The bytes written so far.
    pub(super) buf: Vec<u8>,
    /// Where each open document's length goes, innermost last.
    starts: [usize; MAX_DEPTH],
    depth: usize,
}

impl BsonOut {
    /// A writer appending to `buf` (empty).
    pub(super) fn new(buf: Vec<u8>) -> Self {
        Self {
            buf,
            starts: [0; MAX_DEPTH],
            depth: 0,
        }
    }

    /// The element's type byte and key (a C string; array keys are the decimal index).
    #[inline(always)]
    fn element(&mut self, kind: ElementType, key: Key<'_>) {
        self.buf.push(kind as u8);
        match key {
            Key::Name(name) => {
                debug_assert!(!name.contains('\0'), "BSON keys hold no NUL: {name}");
                push_short(&mut self.buf, name.as_bytes());
            }
            Key::Index(i) if i < 10 => self.buf.push(b'0' + i as u8),
            Key::Index(i) if i < 100 => self
                .buf
                .extend_from_slice(&[b'0' + (i / 10) as u8, b'0' + (i % 10) as u8]),
            Key::Index(i) => self
                .buf
                .extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        }
        self.buf.push(0);
    }

    /// Appends `document` (complete BSON bytes, the `columns` field) as the embedded document
    /// `key`.
    pub(super) fn document(&mut self, key: &str, document: &[u8]) {
        self.element(ElementType::EmbeddedDocument, Key::Name(key));
        self.buf.extend_from_slice(document);
    }

    fn open(&mut self) {
        assert!(
            self.depth < MAX_DEPTH,
            "records nest at most {MAX_DEPTH} deep"
        );
        self.starts[self.depth] = self.buf.len();
        self.depth += 1;
        self.buf.extend_from_slice(&[0; 4]);
    }
}

impl Out for BsonOut {
    fn begin_document(&mut self) {
        self.open();
    }

    fn begin_object(&mut self, key: Key<'_>) {
        self.element(ElementType::EmbeddedDocument, key);
        self.open();
    }

    fn begin_array(&mut self, key: Key<'_>) {
        self.element(ElementType::Array, key);
        self.open();
    }

    fn end(&mut self) {
        self.buf.push(0);
        self.depth -= 1;
        let start = self.starts[self.depth];
        let len = i32::try_from(self.buf.len() - start).expect("a record is far below 2 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn i32(&mut self, key: Key<'_>, value: i32) {
        self.element(ElementType::Int32, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    fn i64(&mut self, key: Key<'_>, value: i64) {
        self.element(ElementType::Int64, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    #[inline(always)]
    fn f32(&mut self, key: Key<'_>, value: f32) {
        self.f64(key, f64::from(value));
    }

    #[inline(always)]
    fn f64(&mut self, key: Key<'_>, value: f64) {
        self.element(ElementType::Double, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    fn str(&mut self, key: Key<'_>, value: &str) {
        self.element(ElementType::String, key);
        let len = i32::try_from(value.len() + 1).expect("a string is far below 2 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
    }

    fn bool(&mut self, key: Key<'_>, value: bool) {
        self.element(ElementType::Boolean, key);
        self.buf.push(u8::from(value));
    }

    fn null(&mut self, key: Key<'_>) {
        self.element(ElementType::Null, key);
    }

    fn f32_array(&mut self, key: Key<'_>, values: &[f32]) {
        self.begin_array(key);
        // Type, key of up to 3 digits and NUL, 8 bytes: at most 13 bytes per value.
        self.buf.reserve(values.len() * 13 + 1);
        for (i, &v) in values.iter().enumerate() {
            self.f64(Key::Index(i), f64::from(v));
        }
        self.end();
    }
}

impl FeatureRecord<'_> {
    /// Writes the record's fields (not the enclosing document) to `out`, in the order of the
    /// serde view: for MongoDB (`mongo` is the layout) `_id` first and no `frames` in the
    /// `columns` layout, for the output topic `schema` then `id`.
    pub(super) fn write_fields<O: Out>(&self, out: &mut O, mongo: Option<DocumentLayout>) {
        use Key::Name;
        let batch = self.batch;
        if mongo.is_some() {
            out.str(Name("_id"), &self.id());
            out.i64(Name("schema"), i64::from(SCHEMA_VERSION));
        } else {
            out.i64(Name("schema"), i64::from(SCHEMA_VERSION));
            out.str(Name("id"), &self.id());
        }
        out.str(Name("stream_id"), self.stream_id);
        out.i64(Name("sample_rate"), i64::from(self.sample_rate));
        out.i64(Name("frame_length"), self.frame_length as i64);
        out.i64(Name("hop_length"), self.hop_length as i64);
        out.i64(Name("first_frame"), self.first_frame() as i64);
        out.i64(Name("last_frame"), self.last_frame() as i64);
        out.i64(Name("frame_count"), batch.len() as i64);
        out.i64(Name("start_ms"), self.timestamp_of(batch.start_sample(0)));
        out.i64(Name("end_ms"), self.end_ms());
        if mongo != Some(DocumentLayout::Columns) {
            self.write_frames(out);
        }
        out.begin_object(Name("summary"));
        let summaries = batch.summaries();
        for &name in batch.selected().iter().filter(|f| f.is_scalar()) {
            match summaries.get(name) {
                Some(summary) => {
                    out.begin_object(Name(name.as_str()));
                    out.f64(Name("mean"), summary.mean);
                    out.f64(Name("std"), summary.std);
                    out.f64(Name("min"), summary.min);
                    out.f64(Name("max"), summary.max);
                    out.end();
                }
                None => out.null(Name(name.as_str())),
            }
        }
        out.end();
        let source = self.source;
        out.begin_object(Name("source"));
        out.str(Name("topic"), &source.topic);
        out.i32(Name("partition"), source.partition);
        out.i64(Name("offset"), source.offset);
        match source.timestamp_ms {
            Some(ms) => out.i64(Name("timestamp_ms"), ms),
            None => out.null(Name("timestamp_ms")),
        }
        out.end();
    }

    /// The `frames` array: per frame `index`, `start_sample`, every selected feature (`f0`
    /// null when unvoiced, then `voiced`, then with pYIN `voiced_prob`), `timestamp_ms`.
    fn write_frames<O: Out>(&self, out: &mut O) {
        use Key::{Index, Name};
        let batch = self.batch;
        out.begin_array(Name("frames"));
        for i in 0..batch.len() {
            out.begin_object(Index(i));
            out.i64(Name("index"), as_i64(batch.index(i)));
            out.i64(Name("start_sample"), as_i64(batch.start_sample(i)));
            for &name in batch.selected() {
                if name == FeatureName::F0 {
                    match batch.scalar(name, i) {
                        Some(f0) => out.f32(Name("f0"), f0),
                        None => out.null(Name("f0")),
                    }
                    out.bool(Name("voiced"), batch.voiced_column()[i]);
                    if let Some(probability) = batch.voiced_prob(i) {
                        out.f32(Name("voiced_prob"), probability);
                    }
                } else if let Some(values) = batch.scalar_column(name) {
                    out.f32(Name(name.as_str()), values[i]);
                } else if let Some(values) = batch.vector(name, i) {
                    out.f32_array(Name(name.as_str()), values);
                }
            }
            out.i64(
                Name("timestamp_ms"),
                self.timestamp_of(batch.start_sample(i)),
            );
            out.end();
        }
        out.end();
    }
}

#[cfg(test)]
mod tests {
    use super::push_short;

    #[test]
    fn push_short_appends_exactly_the_bytes_at_every_length() {
        let source: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
        for n in 0..=source.len() {
            let mut buf = b"prefix".to_vec();
            push_short(&mut buf, &source[..n]);
            assert_eq!(&buf[..6], b"prefix");
            assert_eq!(&buf[6..], &source[..n], "length {n}");
        }
    }
}
