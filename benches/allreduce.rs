//! All-reduce bandwidth: kiln's gradient path against a bare `MPI_Allreduce` of the same size,
//! in one run, interleaved. Run it under a launcher:
//!
//! ```sh
//! cargo bench --features mpi --bench allreduce --no-run
//! mpirun -np 2 target/release/deps/allreduce-<hash> [--rounds 20]
//! ```
//!
//! Three paths per size: `bare` (rsmpi's `all_reduce_into` on a host buffer), `kiln` (the
//! group's `all_reduce_sum`, which also arms the watchdog and sums in place) and, for a real
//! model's gradients, `kiln step` (flatten the gradients on the device, read them back, sum,
//! upload, split: what a training step pays).

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use kiln_models::{Activation, MlpConfig, ModelConfig, Norm};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let group = kiln_trainer::dist::Group::join()
        .expect("a launcher's variables")
        .expect("run under mpirun with at least 2 ranks");
    let world = SimpleCommunicator::world();
    let me = world.rank();
    let report = |what: &str, bytes: usize, secs: f64| {
        if me == 0 {
            println!(
                "{what:<44} {:>8.2} MB {:>9.3} ms {:>8.2} GB/s",
                bytes as f64 / 1e6,
                secs * 1e3,
                bytes as f64 / secs / 1e9
            );
        }
    };
    if me == 0 {
        println!(
            "{} ranks, median of {rounds} rounds (algorithm bandwidth: buffer bytes / time)",
            world.size()
        );
    }
    for floats in [1usize << 16, 1 << 20, 1 << 22, 1 << 24] {
        let bytes = floats * 4;
        let (mut bare, mut kiln) = (Vec::new(), Vec::new());
        let mut buf = vec![1.0f32; floats];
        let mut out = vec![0.0f32; floats];
        for _ in 0..rounds {
            world.barrier();
            let t = Instant::now();
            world.all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
            bare.push(t.elapsed().as_secs_f64());
            world.barrier();
            let t = Instant::now();
            group.all_reduce_sum(&mut buf, &|| "the benchmark".into());
            kiln.push(t.elapsed().as_secs_f64());
            buf.fill(1.0);
        }
        report(
            &format!("bare MPI_Allreduce, {floats} f32"),
            bytes,
            median(bare),
        );
        report(
            &format!("kiln all_reduce_sum, {floats} f32"),
            bytes,
            median(kiln),
        );
    }

    // A real model's gradients: the MNIST MLP (784-256-128-10, 235k parameters).
    let device = Device::flex().autodiff();
    let model = ModelConfig::Mlp(MlpConfig {
        d_input: 784,
        hidden: vec![256, 128],
        d_output: 10,
        activation: Activation::Relu,
        dropout: 0.0,
        norm: Norm::None,
    })
    .init(&device);
    let x = Tensor::<2>::ones([128, 784], &device);
    let out = model.forward(kiln_models::Input::Rows(x)).per_example();
    let grads = GradientsParams::from_grads(out.sum().backward(), &model);
    let params = model.num_params();
    let mut step = Vec::new();
    for _ in 0..rounds {
        world.barrier();
        let t = Instant::now();
        let (mut flat, layout) = kiln_trainer::dist::grads::flatten(&model, &grads, &[0.0]);
        group.all_reduce_sum(&mut flat, &|| "the benchmark".into());
        let back = kiln_trainer::dist::grads::unflatten(&model, &flat, &layout, &Device::flex());
        step.push(t.elapsed().as_secs_f64());
        drop(back);
    }
    let mut buf = vec![1.0f32; params];
    let mut out = vec![0.0f32; params];
    let mut bare = Vec::new();
    for _ in 0..rounds {
        world.barrier();
        let t = Instant::now();
        world.all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
        bare.push(t.elapsed().as_secs_f64());
        buf.fill(1.0);
    }
    report(
        &format!("bare MPI_Allreduce, MNIST MLP size ({params})"),
        params * 4,
        median(bare),
    );
    report(
        "kiln step: flatten + all-reduce + unflatten",
        params * 4,
        median(step),
    );
}
