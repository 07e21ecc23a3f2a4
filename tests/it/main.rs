//! kiln's integration tests, one binary with a module per area (one link of burn instead of
//! one per file). They run the real `kiln` binary on real data; `cargo test --release`, since
//! they train real models. Pick an area with a filter: `scripts/test -- serve::`.

mod common;

mod backend;
mod cli;
mod distributed;
mod docs;
mod drift;
mod explain;
mod export;
mod hostile;
mod images;
mod predict;
mod promises;
mod reference;
mod registry;
mod select;
mod sequence;
mod serve;
