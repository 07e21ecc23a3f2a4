//! Model weights as safetensors bytes, readable by any tool that reads safetensors (PyTorch,
//! NumPy, Hugging Face). Tensor names are the module paths without enum variants
//! (`layers.0.weight`), as PyTorch would name them.
//!
//! A safetensors file has no notion of burn's parameter ids, which key the optimizer's state;
//! a checkpoint stores the ids in visit order beside the weights, and [`set_param_ids`] gives
//! them back to a loaded model so the optimizer's moments find their parameters again.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::store::{ApplyError, ModuleSnapshot, SafetensorsStore, SafetensorsStoreError};
use burn::tensor::Tensor;
use kiln_models::Model;

/// Why weights could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{0}")]
    Store(#[from] SafetensorsStoreError),
    /// The file's tensors are not the model's: every difference, the first shown.
    #[error("{}{}; is it the same architecture?", problems[0], match problems.len() { 1 => String::new(), n => format!(" (and {} more differences)", n - 1) })]
    Mismatch { problems: Vec<String> },
    #[error("the checkpoint lists {listed} parameters, the model has {have}")]
    ParamIds { listed: usize, have: usize },
}

fn store(bytes: Option<Vec<u8>>) -> SafetensorsStore {
    SafetensorsStore::from_bytes(bytes)
        .skip_enum_variants(true)
        // One metadata key: burn's defaults sit in a HashMap whose order changes from process
        // to process, and the same weights must give the same file (and sha256).
        .clear_metadata()
        .metadata("producer", "kiln")
}

/// The model's weights as a safetensors file.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, WeightsError> {
    let mut s = store(None);
    model.save_into(&mut s)?;
    Ok(s.get_bytes()?)
}

/// Loads safetensors bytes into `model` (which gives the architecture). Every parameter must
/// be present with its shape, and nothing else may be in the file.
pub fn from_bytes(mut model: Model, bytes: Vec<u8>) -> Result<Model, WeightsError> {
    // Collect every problem instead of failing at the first, to say them all at once.
    let mut s = store(Some(bytes)).validate(false);
    let r = model.load_from(&mut s)?;
    let mut problems: Vec<String> = r
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{path} is {:?} in the file, {:?} in the model",
                found.as_slice(),
                expected.as_slice()
            ),
            other => format!("{other:?}"),
        })
        .collect();
    problems.extend(r.missing.iter().map(|(p, _)| format!("{p} is missing")));
    problems.extend(r.unused.iter().map(|p| format!("{p} is not in the model")));
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(WeightsError::Mismatch { problems })
    }
}

struct Ids(Vec<u64>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id.val());
    }
}

/// The ids of the model's float parameters, in visit order.
pub fn param_ids(model: &Model) -> Vec<u64> {
    let mut v = Ids(Vec::new());
    model.visit(&mut v);
    v.0
}

struct SetIds<'a> {
    ids: &'a [u64],
    next: usize,
}

impl ModuleMapper for SetIds<'_> {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(self.next) {
            param.id = ParamId::from(id);
        }
        self.next += 1;
        param
    }
}

/// Gives the model's float parameters these ids, in visit order.
pub fn set_param_ids(model: Model, ids: &[u64]) -> Result<Model, WeightsError> {
    let have = param_ids(&model).len();
    if have != ids.len() {
        return Err(WeightsError::ParamIds {
            listed: ids.len(),
            have,
        });
    }
    Ok(model.map(&mut SetIds { ids, next: 0 }))
}
