//! Where audio comes from.

pub mod kafka;
