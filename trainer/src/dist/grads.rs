//! A model's gradients as one flat host buffer, for one all-reduce per step.
//!
//! Layout: every float parameter's gradient in visit order (zeros where this rank has none),
//! then one presence count per parameter, then any `extra` values the caller appends. After the
//! sum, a parameter gets a gradient if any rank had one, so a rank whose share of a batch was
//! empty changes nothing.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

/// Where each parameter sits in the flat buffer.
#[derive(Debug, Clone)]
pub struct Layout {
    params: Vec<(ParamId, usize, usize)>,
    /// Total gradient values (before the presence counts).
    values: usize,
}

impl Layout {
    /// Index of the first extra value.
    pub fn extra_start(&self) -> usize {
        self.values + self.params.len()
    }
}

struct Gather<'a> {
    grads: &'a GradientsParams,
    present: Vec<Tensor<1>>,
    pieces: Vec<(usize, Option<usize>)>,
    params: Vec<(ParamId, usize, usize)>,
    values: usize,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.val().shape().num_elements();
        self.params.push((param.id, self.values, n));
        let slot = self.grads.get::<D>(param.id).map(|g| {
            self.present.push(g.reshape([n]));
            self.present.len() - 1
        });
        self.pieces.push((n, slot));
        self.values += n;
    }
}

/// The flat buffer of `grads` (one device-to-host copy) with `extra` appended.
pub fn flatten<M: Module>(model: &M, grads: &GradientsParams, extra: &[f32]) -> (Vec<f32>, Layout) {
    let mut g = Gather {
        grads,
        present: Vec::new(),
        pieces: Vec::new(),
        params: Vec::new(),
        values: 0,
    };
    model.visit(&mut g);
    let host: Vec<f32> = if g.present.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(std::mem::take(&mut g.present), 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("gradients read back as f32")
    };
    let mut flat = Vec::with_capacity(g.values + g.pieces.len() + extra.len());
    let mut at = 0;
    for &(n, slot) in &g.pieces {
        match slot {
            Some(_) => {
                flat.extend_from_slice(&host[at..at + n]);
                at += n;
            }
            None => flat.resize(flat.len() + n, 0.0),
        }
    }
    flat.extend(
        g.pieces
            .iter()
            .map(|(_, s)| if s.is_some() { 1.0 } else { 0.0 }),
    );
    flat.extend_from_slice(extra);
    (
        flat,
        Layout {
            params: g.params,
            values: g.values,
        },
    )
}

struct Scatter<'a> {
    flat: &'a Tensor<1>,
    present: &'a [f32],
    layout: &'a Layout,
    next: usize,
    grads: GradientsParams,
}

impl ModuleVisitor for Scatter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (id, offset, n) = self.layout.params[self.next];
        let present = self.present[self.next] > 0.0;
        self.next += 1;
        debug_assert_eq!(id, param.id);
        if present {
            let shape = param.val().shape();
            let g = self.flat.clone().narrow(0, offset, n).reshape(shape);
            self.grads.register::<D>(id, g);
        }
    }
}

/// Gradients from a summed flat buffer, multiplied by `scale`, uploaded once to `device`.
pub fn unflatten<M: Module>(
    model: &M,
    flat: &[f32],
    layout: &Layout,
    device: &Device,
) -> GradientsParams {
    let values = &flat[..layout.values];
    let tensor = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
    let mut s = Scatter {
        flat: &tensor,
        present: &flat[layout.values..layout.extra_start()],
        layout,
        next: 0,
        grads: GradientsParams::new(),
    };
    model.visit(&mut s);
    s.grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;

    #[test]
    fn a_round_trip_keeps_every_gradient() {
        let device = Device::flex().autodiff();
        let layer = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::from_data([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]], &device);
        let grads = GradientsParams::from_grads(layer.forward(x).sum().backward(), &layer);
        let (flat, layout) = flatten(&layer, &grads, &[7.0]);
        assert_eq!(flat.len(), 6 + 2 + 2 + 1);
        assert_eq!(flat[layout.extra_start()], 7.0);
        assert_eq!(&flat[8..10], &[1.0, 1.0]);
        let back = unflatten(&layer, &flat, &layout, &Device::flex());
        let w = |g: &GradientsParams| {
            g.get::<2>(layer.weight.id)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(w(&back), w(&grads));
        // A rank without gradients contributes zeros and no presence.
        let (empty, _) = flatten(&layer, &GradientsParams::new(), &[]);
        assert!(empty.iter().all(|v| *v == 0.0));
        assert!(unflatten(&layer, &empty, &layout, &Device::flex()).is_empty());
    }
}
