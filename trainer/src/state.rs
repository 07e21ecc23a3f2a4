//! What a run carries across a checkpoint, in one struct with one codec.
//!
//! [`TrainState`] is the model, the optimizer, the best weights so far and the loop's position.
//! [`TrainState::encode`] turns it into named files (`model.safetensors`, `best.safetensors`,
//! `optim.bpk`, `state.json`) and [`TrainState::decode`] reads them back. The same files make a
//! checkpoint on disk (a registry entry, see `checkpoint`) and the start a data-parallel job's
//! rank 0 broadcasts to the others ([`pack`], [`unpack`]), so a field added here travels both
//! ways with no other change.
//!
//! Randomness needs no saved generator state: the data order of an epoch is a pure function of
//! (`seed`, epoch) and the dropout masks of a step of (`seed`, step, micro-batch), so the
//! position fixes every random draw still to come.

use std::collections::BTreeMap;

use burn::module::Module as _;
use burn::optim::ModuleOptimizer;
use burn::store::RecordError;
use burn::tensor::Device;
use kiln_models::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::weights::{self, WeightsError};

/// The loop's position: enough to continue exactly where it stopped (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub epoch: usize,
    /// Next batch of `epoch` to run: the loader resumes there, no batch is replayed.
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    pub best: Option<f64>,
    pub best_step: Option<usize>,
    /// The monitored metric at the latest validation (what retention ranks checkpoints by).
    #[serde(default)]
    pub last_valid: Option<f64>,
    pub validations_without_improvement: usize,
    pub samples_seen: u64,
    #[serde(default)]
    pub seed: u64,
    /// burn's ids of the model's parameters in visit order; they key the optimizer's state.
    #[serde(default)]
    pub param_ids: Vec<u64>,
    /// Dynamic loss scaling of an f16 run.
    #[serde(default)]
    pub loss_scale: Option<crate::amp::LossScale>,
    /// Ranks of the data-parallel job that saved this state (`None`: a checkpoint older than
    /// this field, taken as one process). A run resumes on as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<usize>,
}

/// Everything a run carries from one step to the next.
pub struct TrainState {
    /// Held by value so an optimizer step can take it and the backend may update the weights
    /// in place (a clone would keep a second reference alive): see [`TrainState::map_model`].
    model: Option<Model>,
    pub optimizer: ModuleOptimizer,
    /// The best weights by `train.monitor` so far: a snapshot of their own (a clone would share
    /// batch norm's running statistics with the model that goes on training).
    pub best: Option<Model>,
    pub pos: LoopState,
}

/// A state that does not encode or decode; `at` says which (a checkpoint folder, or rank 0's
/// broadcast).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{at}: {file} is missing")]
    Missing { at: String, file: &'static str },
    #[error("{at}: {file}: {source}")]
    Json {
        at: String,
        file: &'static str,
        source: serde_json::Error,
    },
    #[error("{at}: {file}: {source}")]
    Weights {
        at: String,
        file: &'static str,
        source: WeightsError,
    },
    #[error("{at}: {file}: {source}")]
    Optimizer {
        at: String,
        file: &'static str,
        source: RecordError,
    },
    #[error("{at}: truncated after {read} bytes")]
    Truncated { at: String, read: usize },
}

impl TrainState {
    /// A fresh start: step 0, nothing best yet.
    pub fn new(model: Model, optimizer: ModuleOptimizer) -> Self {
        Self {
            model: Some(model),
            optimizer,
            best: None,
            pos: LoopState::default(),
        }
    }

    pub fn model(&self) -> &Model {
        self.model
            .as_ref()
            .expect("the model is only taken out inside map_model")
    }

    /// Replaces the model by `f(model)`, which takes it by value (an optimizer step, a
    /// buffer update).
    pub fn map_model(&mut self, f: impl FnOnce(Model) -> Model) {
        let model = self
            .model
            .take()
            .expect("the model is only taken out inside map_model");
        self.model = Some(f(model));
    }

    /// Applies one optimizer step with learning rate `lr`.
    pub fn step(&mut self, lr: f64, grads: burn::optim::GradientsParams) {
        let model = self
            .model
            .take()
            .expect("the model is only taken out inside map_model");
        self.model = Some(self.optimizer.step(lr, model, grads));
    }

    /// The state as named files. `best.safetensors` is written only when the best weights are
    /// not the model's own (the best step is not this one).
    pub fn encode(&self, at: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let weights_err = |file, source| StateError::Weights {
            at: at.to_string(),
            file,
            source,
        };
        // burn keeps batch norm's newest running statistics aside (per thread) until the module
        // is synchronised, and writing reads the synchronised value: `valid()` synchronises
        // them, so the file holds the statistics the next step will use.
        drop(self.model().valid());
        let mut pos = self.pos.clone();
        pos.param_ids = weights::param_ids(self.model());
        let mut files = vec![(
            layout::WEIGHTS.to_string(),
            weights::to_bytes(self.model()).map_err(|e| weights_err(layout::WEIGHTS, e))?,
        )];
        if let Some(best) = self
            .best
            .as_ref()
            .filter(|_| pos.best_step != Some(pos.step))
        {
            files.push((
                layout::BEST_WEIGHTS.to_string(),
                weights::to_bytes(best).map_err(|e| weights_err(layout::BEST_WEIGHTS, e))?,
            ));
        }
        let optim = self
            .optimizer
            .into_bytes()
            .map_err(|source| StateError::Optimizer {
                at: at.to_string(),
                file: layout::OPTIM,
                source,
            })?;
        files.push((layout::OPTIM.to_string(), optim.to_vec()));
        files.push((
            layout::STATE.to_string(),
            serde_json::to_vec_pretty(&pos).expect("loop state is JSON"),
        ));
        Ok(files)
    }

    /// Reads [`TrainState::encode`]'s files back into a model of architecture `mconf` on
    /// `device`, and the optimizer `optimizer` (freshly built from the config).
    pub fn decode(
        files: &BTreeMap<String, Vec<u8>>,
        at: &str,
        mconf: &ModelConfig,
        device: &Device,
        optimizer: ModuleOptimizer,
    ) -> Result<Self, StateError> {
        let file = |name: &'static str| {
            files.get(name).ok_or_else(|| StateError::Missing {
                at: at.to_string(),
                file: name,
            })
        };
        let weights_err = |file, source| StateError::Weights {
            at: at.to_string(),
            file,
            source,
        };
        let pos: LoopState =
            serde_json::from_slice(file(layout::STATE)?).map_err(|source| StateError::Json {
                at: at.to_string(),
                file: layout::STATE,
                source,
            })?;
        let model = weights::from_bytes(mconf.init(device), file(layout::WEIGHTS)?.clone())
            .map_err(|e| weights_err(layout::WEIGHTS, e))?;
        let model = weights::set_param_ids(model, &pos.param_ids)
            .map_err(|e| weights_err(layout::STATE, e))?;
        let optimizer = optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(
                file(layout::OPTIM)?.clone(),
            ))
            .map_err(|source| StateError::Optimizer {
                at: at.to_string(),
                file: layout::OPTIM,
                source,
            })?;
        let best = match (pos.best_step, files.get(layout::BEST_WEIGHTS)) {
            (Some(s), _) if s == pos.step => Some(model.valid()),
            (Some(_), Some(bytes)) => Some(
                weights::from_bytes(mconf.init(device), bytes.clone())
                    .map_err(|e| weights_err(layout::BEST_WEIGHTS, e))?,
            ),
            _ => None,
        };
        Ok(Self {
            model: Some(model),
            optimizer,
            best,
            pos,
        })
    }
}

/// Named files in one buffer (length-prefixed names and contents), for a broadcast.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        for part in [name.as_bytes(), bytes] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The other side of [`pack`].
pub fn unpack(packed: &[u8], at: &str) -> Result<BTreeMap<String, Vec<u8>>, StateError> {
    let mut files = BTreeMap::new();
    let mut rest = packed;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StateError> {
        let short = || StateError::Truncated {
            at: at.to_string(),
            read: packed.len() - rest.len(),
        };
        let n = rest
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(short)?;
        let part = rest.get(8..8 + n).ok_or_else(short)?.to_vec();
        *rest = &rest[8 + n..];
        Ok(part)
    };
    while !rest.is_empty() {
        let name = take(&mut rest)?;
        let bytes = take(&mut rest)?;
        files.insert(String::from_utf8_lossy(&name).into_owned(), bytes);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Tensor, TensorData};
    use kiln_models::{Activation, Input, MlpConfig, Norm};

    fn mconf() -> ModelConfig {
        ModelConfig::Mlp(MlpConfig {
            d_input: 3,
            hidden: vec![4],
            d_output: 2,
            activation: Activation::Relu,
            dropout: 0.0,
            norm: Norm::Batch,
        })
    }

    fn forward(model: &Model, device: &Device) -> Vec<f32> {
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5], [2, 3]),
            device,
        );
        model
            .forward(Input::Rows(x))
            .per_example()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// A state after two Adam steps, with best weights from the first.
    fn trained(device: &Device) -> TrainState {
        let mut s = TrainState::new(mconf().init(device), AdamConfig::new().init());
        for step in 0..2 {
            let x = Tensor::<2>::ones([2, 3], device);
            let loss = s.model().forward(Input::Rows(x)).per_example().sum();
            let grads = GradientsParams::from_grads(loss.backward(), s.model());
            s.step(1e-2, grads);
            if step == 0 {
                s.best = Some(s.model().valid());
                s.pos.best_step = Some(1);
            }
            s.pos.step += 1;
        }
        s
    }

    #[test]
    fn a_state_round_trips_through_files_and_one_buffer() {
        let base = Device::flex();
        let device = base.clone().autodiff();
        let s = trained(&device);
        let files = s.encode("test").unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                layout::WEIGHTS,
                layout::BEST_WEIGHTS,
                layout::OPTIM,
                layout::STATE
            ]
        );
        let map = unpack(&pack(&files), "test").unwrap();
        assert_eq!(map.len(), 4);
        let back =
            TrainState::decode(&map, "test", &mconf(), &device, AdamConfig::new().init()).unwrap();
        assert_eq!(back.pos.step, 2);
        assert_eq!(back.pos.param_ids, weights::param_ids(s.model()));
        assert_eq!(
            forward(&back.model().valid(), &base),
            forward(&s.model().valid(), &base)
        );
        let best = back.best.as_ref().expect("best weights travel");
        assert_eq!(
            forward(&best.valid(), &base),
            forward(s.best.as_ref().unwrap(), &base)
        );
        // The optimizer's moments came along: the next step is the same on both.
        let step = |mut s: TrainState| {
            let loss = s
                .model()
                .forward(Input::Rows(Tensor::ones([2, 3], &device)));
            let grads = GradientsParams::from_grads(loss.per_example().sum().backward(), s.model());
            s.step(1e-2, grads);
            forward(&s.model().valid(), &base)
        };
        assert_eq!(step(back), step(s));
    }

    #[test]
    fn a_fresh_state_and_damaged_buffers() {
        let device = Device::flex().autodiff();
        let fresh = TrainState::new(mconf().init(&device), AdamConfig::new().init());
        let files = fresh.encode("fresh").unwrap();
        let map = unpack(&pack(&files), "fresh").unwrap();
        let back =
            TrainState::decode(&map, "fresh", &mconf(), &device, AdamConfig::new().init()).unwrap();
        assert!(back.best.is_none());
        let packed = pack(&files);
        let cut = unpack(&packed[..packed.len() - 3], "rank 0").unwrap_err();
        assert!(cut.to_string().starts_with("rank 0: truncated"), "{cut}");
        let mut partial = map.clone();
        partial.remove(layout::OPTIM);
        let missing = TrainState::decode(
            &partial,
            "ckpt",
            &mconf(),
            &device,
            AdamConfig::new().init(),
        )
        .err()
        .unwrap();
        assert_eq!(missing.to_string(), "ckpt: optim.bpk is missing");
    }
}
