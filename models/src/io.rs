//! What a model reads and what it gives: the seam between data and models.
//!
//! The data side keeps examples flat on the host; a model declares the [`InputShape`] it reads,
//! and the batch is shaped for it on upload ([`Input`]). A new kind of example (token ids with a
//! padding mask, say) is a new variant here and in the data's batch type, not a change to the
//! training loop, which only hands an `Input` to [`crate::Model::forward`] and its [`Output`] to
//! the task's loss.

use burn::tensor::{FloatDType, Int, Tensor};
use serde::{Deserialize, Serialize};

/// The shape of one example as a model reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputShape {
    /// A row of `features` numbers: a batch is `[batch, features]`.
    Rows { features: usize },
    /// An image: a batch is `[batch, channels, height, width]`.
    Images {
        channels: usize,
        height: usize,
        width: usize,
    },
    /// Token ids from a vocabulary of `vocab`, at most `len` per example: a batch is
    /// `[batch, positions]` of ids, with a padding mask when examples differ in length.
    Tokens { vocab: usize, len: usize },
}

impl InputShape {
    /// Numbers per example.
    pub fn numel(&self) -> usize {
        match *self {
            InputShape::Rows { features } => features,
            InputShape::Images {
                channels,
                height,
                width,
            } => channels.saturating_mul(height).saturating_mul(width),
            InputShape::Tokens { len, .. } => len,
        }
    }
}

/// A batch on the device, in the layout of the model's [`InputShape`].
#[derive(Debug, Clone)]
pub enum Input {
    /// `[batch, features]`.
    Rows(Tensor<2>),
    /// `[batch, channels, height, width]`.
    Images(Tensor<4>),
    /// Token ids `[batch, positions]`; shorter texts of a batch are padded with id 0, which
    /// the models that read padded text leave out.
    Tokens(Tensor<2, Int>),
}

impl Input {
    /// The same input in another float type (mixed precision).
    pub fn cast(self, dtype: FloatDType) -> Self {
        match self {
            Input::Rows(x) => Input::Rows(x.cast(dtype)),
            Input::Images(x) => Input::Images(x.cast(dtype)),
            tokens @ Input::Tokens(_) => tokens,
        }
    }

    /// As rows `[batch, features]`: images are flattened (row-major, a view of the same data).
    /// Setup pairs token ids only with models that read tokens.
    pub fn into_rows(self) -> Tensor<2> {
        match self {
            Input::Rows(x) => x,
            Input::Images(x) => x.flatten(1, 3),
            Input::Tokens(_) => unreachable!("setup gives token ids only to token models"),
        }
    }

    /// Token ids `[batch, positions]`.
    pub fn into_tokens(self) -> Tensor<2, Int> {
        match self {
            Input::Tokens(ids) => ids,
            _ => unreachable!("setup gives rows and images only to models that read them"),
        }
    }

    /// As images `[batch, channels, height, width]`; rows are taken as images of `shape`.
    pub fn into_images(self, [c, h, w]: [usize; 3]) -> Tensor<4> {
        match self {
            Input::Images(x) => x,
            Input::Rows(x) => {
                let [batch, _] = x.dims();
                x.reshape([batch, c, h, w])
            }
            Input::Tokens(_) => unreachable!("setup gives token ids only to token models"),
        }
    }
}

/// What a model gives for a batch.
#[derive(Debug, Clone)]
pub enum Output {
    /// One vector per example, `[batch, outputs]`: logits of a classifier, values of a
    /// regressor.
    PerExample(Tensor<2>),
    /// One vector per position, `[batch, positions, outputs]`: a language model's next-token
    /// logits.
    PerPosition(Tensor<3>),
}

impl Output {
    /// The same output in another float type (mixed precision).
    pub fn cast(self, dtype: FloatDType) -> Self {
        match self {
            Output::PerExample(x) => Output::PerExample(x.cast(dtype)),
            Output::PerPosition(x) => Output::PerPosition(x.cast(dtype)),
        }
    }

    /// `[batch, outputs]`, for the tasks that score one vector per example.
    pub fn per_example(self) -> Tensor<2> {
        match self {
            Output::PerExample(x) => x,
            Output::PerPosition(_) => unreachable!("tasks are paired with their model's outputs"),
        }
    }

    /// `[batch, positions, outputs]`, for the tasks that score every position.
    pub fn per_position(self) -> Tensor<3> {
        match self {
            Output::PerPosition(x) => x,
            Output::PerExample(_) => unreachable!("tasks are paired with their model's outputs"),
        }
    }
}
