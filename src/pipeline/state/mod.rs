//! Stream state and its checkpoint: everything the pipeline keeps per stream between messages,
//! and how it survives a change of owner.
//!
//! - [`streams`]: a partition's stream table (alignment on `audio.start_sample`, gaps, end of
//!   stream, idle eviction, the live-stream cap), the shared extractor plans and workspaces;
//! - [`checkpoint`]: the checkpoint record and its value format;
//! - [`checkpoint_topic`]: the compacted checkpoint topic: creation, checks, restore and writes;
//! - [`config`]: `[streams]` and `[checkpoint]`.

pub mod checkpoint;
pub mod checkpoint_topic;
pub mod config;
pub mod streams;
