//! The training loop through the library: optimizers, schedules, accumulation, determinism.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_trainer::config::{self, Override};
use kiln_trainer::metrics::Metrics;
use kiln_trainer::train::{self, Options};

fn digits() -> String {
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("..");
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

/// Trains the digits config with `sets` applied; returns the run's folder and record, and the
/// registry that holds them (deleted when dropped).
fn train_digits(sets: &[&str]) -> (train::Outcome, tempfile::TempDir) {
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
        member: None,
    };
    (train::train(&cfg, &opts).unwrap(), registry)
}

/// Trains the digits config with `sets` applied; returns the run's record.
fn run_with(sets: &[&str]) -> kiln_trainer::run::RunInfo {
    train_digits(sets).0.info
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

/// The final weights of a training of the digits config with `sets` applied, by tensor name,
/// and the size of its training split.
fn final_weights_with(sets: &[&str]) -> (BTreeMap<String, Vec<f32>>, usize) {
    let (outcome, _registry) = train_digits(sets);
    let bytes = std::fs::read(outcome.run_dir.join("final/model.safetensors")).unwrap();
    let weights = kiln_trainer::export::graph::read_weights(&bytes)
        .unwrap()
        .into_iter()
        .map(|(name, (_, values))| (name, values))
        .collect();
    let n = match &outcome.info.metrics["train"] {
        Metrics::Classification(m) => m.count,
        Metrics::Regression(m) => m.count,
        Metrics::LanguageModel(_) => unreachable!("a table's run"),
    };
    (weights, n)
}

fn max_abs_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// The book, config reference, `train.grad_accum`: forward/backward passes per optimizer step,
/// gradients averaged, so `grad_accum` micro-batches of `batch_size` train as one batch of
/// `batch_size x grad_accum`. Plain SGD without momentum (its update is the gradient times
/// the rate; AdamW's is unchanged when every gradient is scaled by a constant, which would
/// hide a wrong average), and a training split that is not a multiple of the large batch: the
/// last step of each epoch has fewer micro-batches, the last of them short, and the average
/// must weight each micro-batch by its examples, as the large batch does. The final weights
/// are compared, not metrics.
#[test]
fn gradient_accumulation_matches_one_larger_batch() {
    let sgd = [
        "optim.name=sgd",
        "optim.momentum=0.0",
        "optim.lr=0.05",
        "train.restore_best=false",
    ];
    for (micro, accum) in [(16usize, 4usize), (24, 3)] {
        let big = micro * accum;
        let with = |batch: usize, grad_accum: usize| {
            let mut sets: Vec<String> = sgd.iter().map(|s| s.to_string()).collect();
            sets.push(format!("train.batch_size={batch}"));
            sets.push(format!("train.grad_accum={grad_accum}"));
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            final_weights_with(&sets)
        };
        let (one, n) = with(big, 1);
        // The last step of an epoch takes `n % big` examples: more than one micro-batch, the
        // last of them short.
        let last = n % big;
        assert!(
            last > micro && !last.is_multiple_of(micro),
            "the training split has {n} examples: the last step's {last} do not make a short micro-batch after a full one with batch {micro} x {accum}; choose other sizes"
        );
        let (accumulated, _) = with(micro, accum);
        let diff = max_abs_diff(&one, &accumulated);
        assert!(
            diff < 1e-5,
            "batch {big} against {accum} x {micro} accumulated (the last step: {last} examples in micro-batches of {micro}): final weights differ by up to {diff:e}"
        );
    }
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
