//! A model's gradients as one flat host buffer, for one all-reduce per step.
//!
//! Layout: every trainable parameter's gradient in visit order (zeros where this rank has
//! none), one presence count per trainable parameter, the model's buffers (batch norm's running
//! statistics, which have no gradient), then any `extra` values the caller appends. After the
//! sum, a parameter gets a gradient if any rank had one, so a rank whose share of a batch was
//! empty changes nothing, and every buffer becomes the mean over ranks (the running statistics
//! of the global batch, as near as per-rank batches allow), so the replicas stay identical.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

/// Where each parameter sits in the flat buffer.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Trainable parameters: id, offset, length.
    params: Vec<(ParamId, usize, usize)>,
    /// Buffers: id, offset (from the start of the flat buffer), length.
    buffers: Vec<(ParamId, usize, usize)>,
    /// Total gradient values (before the presence counts).
    values: usize,
    /// Where the extras start.
    extra: usize,
}

impl Layout {
    /// Index of the first extra value.
    pub fn extra_start(&self) -> usize {
        self.extra
    }

    /// Whether the model has buffers to average after the sum ([`average_buffers`]).
    pub fn has_buffers(&self) -> bool {
        !self.buffers.is_empty()
    }
}

/// Whether a visited float is a buffer (batch norm's running statistics): no gradient, ever.
fn is_buffer<const D: usize>(param: &Param<Tensor<D>>) -> bool {
    !param.val().is_require_grad()
}

struct Buffers(bool);

impl ModuleVisitor for Buffers {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0 |= is_buffer(param);
    }
}

/// Whether `model` has buffers (batch norm's running statistics).
pub fn has_buffers<M: Module>(model: &M) -> bool {
    let mut b = Buffers(false);
    model.visit(&mut b);
    b.0
}

struct Gather<'a> {
    grads: &'a GradientsParams,
    present: Vec<Tensor<1>>,
    pieces: Vec<(usize, Option<usize>)>,
    params: Vec<(ParamId, usize, usize)>,
    values: usize,
    buffers: Vec<(ParamId, Tensor<1>)>,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.val().shape().num_elements();
        if is_buffer(param) {
            self.buffers.push((param.id, param.val().reshape([n])));
            return;
        }
        self.params.push((param.id, self.values, n));
        let slot = self.grads.get::<D>(param.id).map(|g| {
            self.present.push(g.reshape([n]));
            self.present.len() - 1
        });
        self.pieces.push((n, slot));
        self.values += n;
    }
}

fn to_host(tensors: Vec<Tensor<1>>) -> Vec<f32> {
    if tensors.is_empty() {
        return Vec::new();
    }
    let device = tensors[0].device();
    // Gradients and buffers may sit on different (autodiff or inner) devices: one device for
    // the concatenation.
    let tensors = tensors.into_iter().map(|t| t.to_device(&device)).collect();
    Tensor::cat(tensors, 0)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("gradients read back as f32")
}

/// The flat buffer of `grads` and the model's buffers (one device-to-host copy each) with
/// `extra` appended.
pub fn flatten<M: Module>(model: &M, grads: &GradientsParams, extra: &[f32]) -> (Vec<f32>, Layout) {
    let mut g = Gather {
        grads,
        present: Vec::new(),
        pieces: Vec::new(),
        params: Vec::new(),
        values: 0,
        buffers: Vec::new(),
    };
    model.visit(&mut g);
    // One read from the device: the gradients present, then the buffers.
    let (ids, buffer_tensors): (Vec<ParamId>, Vec<Tensor<1>>) = g.buffers.into_iter().unzip();
    let lens: Vec<usize> = buffer_tensors.iter().map(|t| t.dims()[0]).collect();
    let mut tensors = std::mem::take(&mut g.present);
    tensors.extend(buffer_tensors);
    let host = to_host(tensors);
    let mut flat = Vec::with_capacity(host.len() + g.values + g.pieces.len() + extra.len());
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
    let mut buffers = Vec::with_capacity(ids.len());
    for (id, n) in ids.into_iter().zip(lens) {
        buffers.push((id, flat.len(), n));
        flat.extend_from_slice(&host[at..at + n]);
        at += n;
    }
    let extra_at = flat.len();
    flat.extend_from_slice(extra);
    (
        flat,
        Layout {
            params: g.params,
            buffers,
            values: g.values,
            extra: extra_at,
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
        if is_buffer(param) {
            return;
        }
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

/// Gradients from a summed flat buffer, uploaded once to `device`.
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
        present: &flat[layout.values..layout.values + layout.params.len()],
        layout,
        next: 0,
        grads: GradientsParams::new(),
    };
    model.visit(&mut s);
    s.grads
}

struct SetBuffers<'a> {
    flat: &'a [f32],
    layout: &'a Layout,
    next: usize,
    world: f32,
}

impl ModuleMapper for SetBuffers<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !is_buffer(&param) {
            return param;
        }
        let (id, offset, n) = self.layout.buffers[self.next];
        self.next += 1;
        debug_assert_eq!(id, param.id);
        let mean: Vec<f32> = self.flat[offset..offset + n]
            .iter()
            .map(|v| v / self.world)
            .collect();
        param.map(|t| {
            let (shape, device) = (t.shape(), t.device());
            Tensor::<1>::from_data(TensorData::new(mean, [n]), &device).reshape(shape)
        })
    }
}

/// Sets the model's buffers to their mean over `world` ranks, from a summed flat buffer.
pub fn average_buffers<M: Module>(model: M, flat: &[f32], layout: &Layout, world: usize) -> M {
    model.map(&mut SetBuffers {
        flat,
        layout,
        next: 0,
        world: world as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNormConfig, LinearConfig};
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
        assert!(!layout.has_buffers());
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

    #[test]
    fn batch_norm_statistics_are_averaged_over_ranks() {
        let device = Device::flex().autodiff();
        let bn = BatchNormConfig::new(2).init(&device);
        // Training mode: the forward pass moves the running mean towards the batch mean.
        let x = Tensor::<2>::from_data([[1.0, 2.0], [3.0, 6.0]], &device);
        let grads = GradientsParams::from_grads(bn.forward(x).sum().backward(), &bn);
        let (mut flat, layout) = flatten(&bn, &grads, &[]);
        assert!(layout.has_buffers());
        let mean_before = bn
            .running_mean
            .value()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // As if a second rank had the same statistics plus 1.0 on every running value.
        let (off, n) = (layout.buffers[0].1, layout.buffers[0].2);
        for v in &mut flat[off..off + n] {
            *v = 2.0 * *v + 1.0;
        }
        let bn = average_buffers(bn, &flat, &layout, 2);
        let mean_after = bn
            .running_mean
            .value()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in mean_before.iter().zip(&mean_after) {
            assert!((b - (a + 0.5)).abs() < 1e-6, "{a} -> {b}");
        }
        assert!(!bn.running_mean.value().is_require_grad());
    }
}
