//! Mixed precision, which burn 0.22 does not provide (its issue #5696): f32 master weights,
//! the forward and backward pass in f16 or bf16, the loss and the optimizer in f32, and for f16
//! dynamic loss scaling.
//!
//! Each step runs the model through a half-precision view of the master weights (every float
//! parameter cast, in the autodiff graph, so the gradient flows back through the cast to the
//! f32 master), casts the outputs back to f32 for the loss, and scales the loss before the
//! backward pass so that small f16 gradients do not flush to zero. The optimizer sees the
//! unscaled f32 gradients. A step whose gradients overflowed is skipped and the scale halved;
//! after `GROWTH_INTERVAL` good steps it doubles (PyTorch's GradScaler defaults).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};
use kiln_models::{Input, Model, Output};
use serde::{Deserialize, Serialize};

pub const INITIAL_SCALE: f64 = 65536.0;
pub const GROWTH_INTERVAL: usize = 2000;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
/// Overflowing steps in a row at the lowest scale after which training stops with an error
/// (rather than skipping every step quietly).
pub const STALL_STEPS: usize = 100;

/// The compute precision of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// The half type of the forward and backward pass; `None` for plain f32.
    pub fn compute(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(FloatDType::F16),
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// f16 has 5 exponent bits and needs loss scaling; bf16 has f32's range and does not.
    pub fn scales_loss(self) -> bool {
        self == Self::F16
    }
}

/// Dynamic loss scaling state; saved in checkpoints so a resumed run continues exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: usize,
    /// Steps skipped because the gradients overflowed.
    pub skipped: u64,
    /// Overflowing steps in a row.
    #[serde(default)]
    pub streak: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            good_steps: 0,
            skipped: 0,
            streak: 0,
        }
    }
}

impl LossScale {
    /// Records whether this step's gradients were finite; returns whether to apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.streak = 0;
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * BACKOFF_FACTOR).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
            self.streak += 1;
        }
        finite
    }

    /// Overflowing for `STALL_STEPS` steps in a row with the scale at its floor: the gradients
    /// are not finite in f16 at all.
    pub fn stalled(&self) -> bool {
        self.scale <= 1.0 && self.streak >= STALL_STEPS
    }
}

struct CastTo(FloatDType);

impl ModuleMapper for CastTo {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// The model's forward pass in `dtype`, from its f32 master weights: outputs come back as f32,
/// gradients flow back through the casts to the master weights.
pub fn forward(model: &Model, x: Input, dtype: FloatDType) -> Output {
    let half = model.clone().map(&mut CastTo(dtype));
    half.forward(x.cast(dtype)).cast(FloatDType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_good_steps() {
        let mut s = LossScale::default();
        assert!(!s.update(false));
        assert_eq!(s.scale, INITIAL_SCALE / 2.0);
        assert_eq!(s.skipped, 1);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, INITIAL_SCALE / 2.0);
        assert!(s.update(true));
        assert_eq!(s.scale, INITIAL_SCALE);
        assert_eq!(s.good_steps, 0);
        let mut tiny = LossScale {
            scale: 1.0,
            ..Default::default()
        };
        tiny.update(false);
        assert_eq!(tiny.scale, 1.0, "the scale never drops below 1");
        for _ in 1..STALL_STEPS {
            assert!(!tiny.stalled());
            tiny.update(false);
        }
        assert!(tiny.stalled());
        tiny.update(true);
        assert!(!tiny.stalled());
    }
}
