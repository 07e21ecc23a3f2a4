//! The start of a data-parallel job: the ranks agree on what they train (the handshake, the
//! first collective) and every rank starts from rank 0's state, sent with the codec of a
//! checkpoint.

use burn::tensor::Device;
use kiln_models::ModelConfig;

use super::Options;
use super::session::step_seed;
use crate::backend::Chosen;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::dist::Group;
use crate::error::{ResumeError, TrainError};
use crate::layout;
use crate::registry::manifest::DataFile;
use crate::registry::store;
use crate::state::{self, TrainState};

/// The first collective: every rank says what it will train (or why it cannot start) and the
/// ranks must agree. Returns the agreement and the data files' hashes (recorded in rank 0's
/// manifests, so the files are hashed once).
pub(super) fn handshake(
    g: &Group,
    cfg: &RunConfig,
    opts: &Options,
    chosen: &Result<Chosen, TrainError>,
) -> Result<(crate::dist::AgreeReport, Option<Vec<DataFile>>), TrainError> {
    let mut files = None;
    let mine = match chosen {
        Err(e) => Err(e.to_string()),
        Ok(chosen) => checkpoint::data_files(cfg)
            .and_then(|f| {
                let h = hello(cfg, opts, g.world(), chosen.backend, &f);
                files = Some(f);
                h
            })
            .map_err(|e| e.to_string()),
    };
    let agreed = g.agree(mine).map_err(TrainError::Distributed)?;
    Ok((agreed, files))
}

/// What this rank tells the others before step 0 (see [`Group::agree`]).
fn hello(
    cfg: &RunConfig,
    opts: &Options,
    world: usize,
    backend: &str,
    data_files: &[DataFile],
) -> Result<crate::dist::Hello, TrainError> {
    let mut resolved = cfg.resolved_json();
    // Each rank has its own device (cuda:LOCAL_RANK), threads and registry folder.
    if let Some(o) = resolved.as_object_mut() {
        o.remove("runtime");
    }
    if let Some(b) = resolved.get_mut("backend").and_then(|b| b.as_object_mut()) {
        b.remove("device");
    }
    let mut config = crate::tracking::flatten(&resolved);
    config.insert("(--smoke)".into(), opts.smoke.into());
    config.insert("(--init-from)".into(), opts.init_from.clone().into());
    // One engine for all: NCCL only when every rank is on CUDA.
    config.insert("(backend)".into(), backend.into());
    if let Some(dir) = &opts.resume {
        // Each rank reads the resumed run's preprocessing from its own copy of the registry.
        let p = dir.join(layout::PREPROCESS);
        let (sha, _) = store::hash_file(&p).map_err(|source| TrainError::Io {
            path: p.display().to_string(),
            source,
        })?;
        config.insert("(resumed preprocess.json)".into(), sha.into());
    }
    let data = data_files
        .iter()
        .map(|f| (f.role.clone(), f.sha256.clone()))
        .collect();
    Ok(crate::dist::Hello {
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        world,
        config,
        data,
        resume: opts
            .resume
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    })
}

/// Every rank starts from rank 0's state: weights (and, resuming, optimizer moments, position
/// and best weights), so the replicas are identical whatever the backend's initialisation. The
/// first byte says whether rank 0 refused to start (then the reason follows).
pub(super) fn share_start(
    g: &Group,
    cfg: &RunConfig,
    state: TrainState,
    refused: Option<ResumeError>,
    mconf: &ModelConfig,
    device: &Device,
) -> Result<TrainState, TrainError> {
    const AT: &str = "rank 0's starting state";
    let packed = if let Some(why) = &refused {
        [&[0u8][..], why.to_string().as_bytes()].concat()
    } else if g.is_writer() {
        // burn draws a parameter's initial values when it is first used; alone, that is the
        // first forward pass, after the step's seed is set. Draw them from that seed here too,
        // so a data-parallel run starts from a single process's weights.
        device.seed(step_seed(cfg.seed, state.pos.step, 0));
        let mut packed = vec![1u8];
        packed.extend(state::pack(&state.encode(AT)?));
        packed
    } else {
        Vec::new()
    };
    let packed = g.broadcast(packed, &|| {
        "the broadcast of rank 0's starting weights".into()
    });
    if packed.first() != Some(&1) {
        return Err(TrainError::Distributed(
            String::from_utf8_lossy(packed.get(1..).unwrap_or_default()).into_owned(),
        ));
    }
    if g.is_writer() {
        return Ok(state);
    }
    let files = state::unpack(&packed[1..], AT)?;
    Ok(TrainState::decode(
        &files,
        AT,
        mconf,
        device,
        crate::optim::optimizer(cfg),
    )?)
}
