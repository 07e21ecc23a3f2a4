//! What the loop and evaluation read: batches of examples and their targets, and the
//! [`Source`] that assembles them.
//!
//! A batch says what it holds. Examples stay flat on the host ([`Features`]) and are shaped on
//! upload as the model's [`InputShape`] says (rows `[batch, features]`, images
//! `[batch, channels, height, width]`); targets are per example ([`Targets`]). A new kind of
//! data (token ids with a padding mask and next-token targets, a folder of image files decoded
//! on the fly) is a new `Source` and, where its examples are not flat numbers, a new variant
//! here: the training loop, evaluation and the metrics only go through these types.

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_models::{Input, InputShape};

/// The examples of a batch, host side.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// `len` examples of `width` numbers each, row-major: table rows, or image pixels in
    /// channel-height-width order.
    Dense { x: Vec<f32>, width: usize },
    /// `len` token ids per example, row-major.
    Tokens { ids: Vec<u32>, len: usize },
}

/// Targets: class indices or (possibly standardised) values, one per example; or the next
/// token of each of an example's `len` positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Classes(Vec<u32>),
    Values(Vec<f32>),
    Tokens { ids: Vec<u32>, len: usize },
}

impl Targets {
    /// Examples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(v) => v.len(),
            Targets::Values(v) => v.len(),
            Targets::Tokens { ids, len } => ids.len() / len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets of examples `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Classes(v) => Targets::Classes(idx.iter().map(|&i| v[i]).collect()),
            Targets::Values(v) => Targets::Values(idx.iter().map(|&i| v[i]).collect()),
            Targets::Tokens { ids, len } => Targets::Tokens {
                ids: idx
                    .iter()
                    .flat_map(|&i| ids[i * len..(i + 1) * len].iter().copied())
                    .collect(),
                len: *len,
            },
        }
    }
}

/// One batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub x: Features,
    pub y: Targets,
    /// Examples in the batch (0 for a rank's empty share of a short last batch).
    pub len: usize,
}

/// A batch with its examples on the device.
pub struct Uploaded {
    /// Shaped as the model reads them; `None` for an empty batch.
    pub input: Option<Input>,
    pub y: Targets,
    pub len: usize,
}

impl Batch {
    /// Moves the examples to `device`, shaped as the model reads them (`shape`).
    pub fn upload(self, shape: InputShape, device: &Device) -> Uploaded {
        let input = (self.len > 0).then(|| Self::shaped(self.x, self.len, shape, device));
        Uploaded {
            input,
            y: self.y,
            len: self.len,
        }
    }

    fn shaped(x: Features, len: usize, shape: InputShape, device: &Device) -> Input {
        let (data, width) = match x {
            Features::Dense { x, width } => (x, width),
            Features::Tokens { ids, len: t } => {
                let ids: Vec<i32> = ids.into_iter().map(|i| i as i32).collect();
                return Input::Tokens(Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [len, t]),
                    device,
                ));
            }
        };
        debug_assert_eq!(width, shape.numel(), "setup pairs the data with the model");
        match shape {
            InputShape::Rows { .. } => Input::Rows(Tensor::<2>::from_data(
                TensorData::new(data, [len, width]),
                device,
            )),
            InputShape::Images {
                channels,
                height,
                width,
            } => Input::Images(Tensor::<4>::from_data(
                TensorData::new(data, [len, channels, height, width]),
                device,
            )),
            InputShape::Tokens { .. } => unreachable!("setup gives token models token data"),
        }
    }
}

/// Which pass over the training data a batch belongs to: random augmentation is a pure function
/// of (seed, epoch, example index), so resumed and data-parallel runs read the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub seed: u64,
    pub epoch: usize,
}

/// Where examples come from: a split held in memory, or files decoded as batches ask for them
/// (a folder of images). The loader's worker threads call [`Source::fetch`] with the example
/// indices of each batch, in an order that is a pure function of the seed and the position in
/// training.
pub trait Source: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples `idx` (in that order) as one batch. `pass` is given for training batches
    /// only: a source with random augmentation applies it then. Reading a file can fail; a
    /// split held in memory cannot.
    fn fetch(&self, idx: &[usize], pass: Option<Pass>) -> Result<Batch, super::DataError>;
}
