//! The training loop through the library: optimizers, schedules, accumulation, determinism.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_trainer::config::{self, Override};
use kiln_trainer::metrics::Metrics;
use kiln_trainer::train::{self, Options};

fn digits() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    format!(
        "name = \"t\"\nseed = 3\n[data]\npath = {:?}\n[model]\nhidden = [32]\n[train]\nepochs = 5\nbatch_size = 32\n[optim]\nlr = 3e-3\n",
        root.join("data/sklearn/digits.csv.gz")
            .display()
            .to_string()
    )
}

/// burn's CPU backend draws random numbers (initial weights, dropout masks) from one
/// process-wide generator, so two trainings running at once in one process disturb each other.
/// `kiln` runs one training per process; these tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Trains the digits config with `sets` applied; returns the run's record.
fn run_with(sets: &[&str]) -> kiln_trainer::run::RunInfo {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    let (file, _) = config::parse("digits.toml", &digits(), &overrides).unwrap();
    let cfg = config::validate(file, "digits.toml", "t").unwrap();
    let registry = tempfile::tempdir().unwrap();
    let opts = Options {
        registry: registry.path().into(),
        smoke: false,
        quiet: true,
        config_path: "digits.toml".into(),
        resume: None,
        stop: Default::default(),
        init_from: None,
        group: None,
    };
    train::train(&cfg, &opts).unwrap().info
}

/// Trains the digits config with `sets` applied; returns the final metrics per split.
fn train_with(sets: &[&str]) -> BTreeMap<String, Metrics> {
    run_with(sets).metrics
}

fn test_metric(m: &BTreeMap<String, Metrics>, name: &str) -> f64 {
    m["test"].get(name).unwrap()
}

#[test]
fn every_optimizer_and_schedule_learns() {
    for sets in [
        &["optim.name=sgd", "optim.lr=0.05"][..],
        &["optim.name=sgd", "optim.lr=0.05", "optim.nesterov=true"],
        &[
            "optim.name=adam",
            "optim.lr=3e-3",
            "schedule.kind=step",
            "schedule.step_size=60",
            "schedule.gamma=0.5",
        ],
        &[
            "optim.name=adamw",
            "schedule.kind=cosine",
            "schedule.warmup_steps=10",
        ],
        &[
            "train.loss=cross_entropy",
            "train.label_smoothing=0.1",
            "train.clip_grad_norm=1.0",
        ],
        &["model.norm=batch", "model.dropout=0.2"],
        &["model.norm=layer", "model.activation=gelu"],
    ] {
        let m = train_with(sets);
        let acc = test_metric(&m, "accuracy");
        assert!(
            acc > 0.85,
            "{sets:?} reached only {acc} test accuracy after 5 epochs"
        );
    }
}

#[test]
fn a_cnn_trains_on_digit_images() {
    let m = train_with(&[
        "model.kind=cnn",
        "data.image_shape=[1, 8, 8]",
        "model.conv=[{channels = 8, kernel = 3, pool = 2, batch_norm = true}]",
        "train.epochs=4",
    ]);
    assert!(test_metric(&m, "accuracy") > 0.85, "{:?}", m["test"]);
}

#[test]
fn gradient_accumulation_matches_one_larger_batch() {
    let big = train_with(&[
        "train.batch_size=32",
        "train.grad_accum=1",
        "train.restore_best=false",
    ]);
    let accumulated = train_with(&[
        "train.batch_size=16",
        "train.grad_accum=2",
        "train.restore_best=false",
    ]);
    let (a, b) = (test_metric(&big, "loss"), test_metric(&accumulated, "loss"));
    assert!(
        (a - b).abs() < 1e-4 * a.abs().max(1.0),
        "batch 32: {a}, 2 x 16 accumulated: {b}"
    );
}

#[test]
fn a_fixed_seed_repeats_exactly_with_two_threads_and_two_workers() {
    let sets = [
        "runtime.threads=2",
        "runtime.workers=2",
        "model.dropout=0.1",
    ];
    assert_eq!(train_with(&sets), train_with(&sets));
    let other_seed = train_with(&[
        "runtime.threads=2",
        "runtime.workers=2",
        "model.dropout=0.1",
        "seed=4",
    ]);
    assert_ne!(train_with(&sets), other_seed);
}

#[test]
fn early_stopping_stops_before_the_last_epoch() {
    let info = run_with(&[
        "train.epochs=200",
        "train.early_stopping={patience = 2, min_delta = 0.5}",
    ]);
    assert!(
        info.epochs_done < 10,
        "a min_delta of 0.5 in loss stops within a few epochs: {}",
        info.epochs_done
    );
}
