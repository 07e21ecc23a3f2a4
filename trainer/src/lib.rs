//! kiln's trainer: config, data, the training loop, metrics, runs.
//!
//! ```no_run
//! use std::path::Path;
//! use kiln_trainer::{config, train};
//!
//! let (file, _) = config::load(Path::new("configs/digits_mlp.toml"), &[]).unwrap();
//! let cfg = config::validate(file, "configs/digits_mlp.toml", "digits-mlp").unwrap();
//! let opts = train::Options {
//!     registry: "kiln-registry".into(), smoke: true, quiet: true,
//!     config_path: "configs/digits_mlp.toml".into(), resume: None, stop: Default::default(), init_from: None, group: None, member: None,
//! };
//! let outcome = train::train(&cfg, &opts).unwrap();
//! println!("{}", outcome.info.id);
//! ```

pub mod amp;
pub mod atomic;
pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod drift;
pub mod error;
pub mod eval;
pub mod explain;
pub mod export;
pub mod generate;
pub mod html;
pub mod layout;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod registry;
pub mod report;
pub mod run;
pub mod select;
pub mod serve;
pub mod shown;
pub mod state;
pub mod suggest;
pub mod task;
pub mod tracking;
pub mod train;
pub mod usage;
pub mod weights;

pub use error::TrainError;
use gemm as _; // see the workspace Cargo.toml: enables AVX-512 matrix kernels
