//! What a person sees while training: a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total_steps: usize,
    epochs: usize,
}

/// One logged point of training.
pub struct StepReport {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub samples_per_second: f64,
    pub eta: Duration,
}

impl Progress {
    /// A bar when stderr is a terminal and not `quiet`; plain lines otherwise.
    pub fn new(total_steps: usize, epochs: usize, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps as u64),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            quiet,
            total_steps,
            epochs,
        }
    }

    /// Moves the bar to optimizer step `step` (cheap; every step).
    pub fn tick(&self, step: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
        }
    }

    pub fn step(&self, r: &StepReport) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_prefix(format!("epoch {}/{}", r.epoch + 1, self.epochs));
                bar.set_message(format!(
                    "loss {:.4} | {:.0} samples/s",
                    r.loss, r.samples_per_second
                ));
            }
            None if !self.quiet => eprintln!(
                "epoch {}/{} step {}/{} loss {:.4} lr {:.2e} {:.0} samples/s eta {}",
                r.epoch + 1,
                self.epochs,
                r.step,
                self.total_steps,
                r.loss,
                r.lr,
                r.samples_per_second,
                humantime::format_duration(Duration::from_secs(r.eta.as_secs()))
            ),
            None => {}
        }
    }

    /// A line above the bar (validation results, notices).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
