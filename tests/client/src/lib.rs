//! Tests live in `tests/`; see `tests/common/mod.rs` for how they connect.
