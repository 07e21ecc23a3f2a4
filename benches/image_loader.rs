//! The image-folder loader alone: PNG files decoded, augmented, normalised and batched per
//! second by kiln's loader threads, as `kiln train` drives them (one epoch of the training
//! split of a config, in its shuffled order). `benches/image_loader.py` runs this and
//! PyTorch's `DataLoader` over torchvision's `ImageFolder` with the same transforms, alternating,
//! and prints the ratio the book quotes.
//!
//!   cargo bench --bench image_loader -- CONFIG [--workers W] [--images N] [--prefetch P]
//!
//! Prints one JSON object: {"impl": "kiln", "workers", "images", "seconds", "images_per_second"}.

use std::sync::Arc;
use std::time::Instant;

use kiln_trainer::config;
use kiln_trainer::data::{self, Loader, Pass, Source, loader::epoch_order};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let cfg_path = args
        .first()
        .cloned()
        .unwrap_or("configs/mnist_png_resnet.toml".into());
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let (workers, limit, prefetch) = (
        flag("--workers", 1),
        flag("--images", 20_000),
        flag("--prefetch", 4),
    );
    let (file, _) = config::load(cfg_path.as_ref(), &[]).expect("the config loads");
    let cfg = config::validate(file, &cfg_path, "bench").expect("the config is valid");
    let prepared = data::prepare(&cfg.data, None).expect("the data reads");
    let train: Arc<dyn Source> = Arc::new(prepared.train);
    let order: Vec<usize> = epoch_order(train.len(), cfg.seed, 0, true)
        .into_iter()
        .take(limit)
        .collect();
    let n = order.len();
    let started = Instant::now();
    let pass = Some(Pass {
        seed: cfg.seed,
        epoch: 0,
    });
    let loader = Loader::new(
        train,
        order,
        cfg.train.batch_size,
        0,
        workers,
        prefetch,
        pass,
    );
    let mut seen = 0;
    let mut checksum = 0.0f64;
    for batch in loader {
        let batch = batch.expect("every file decodes");
        if let data::Features::Dense { x, .. } = &batch.x {
            checksum += x[0] as f64;
        }
        seen += batch.len;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(seen, n);
    println!(
        "{}",
        serde_json::json!({
            "impl": "kiln",
            "workers": workers,
            "images": n,
            "seconds": seconds,
            "images_per_second": n as f64 / seconds,
            "checksum": checksum,
        })
    );
}
