//! Which device kiln computes on, chosen at run time: `auto`, `cpu`, `wgpu[:N]`, `cuda[:N]`.
//!
//! One binary holds every backend it was built with (cargo features `wgpu`, `cuda`); burn 0.22
//! dispatches on the `Device` value. Nothing here opens a GPU without asking first: with `cuda`
//! compiled in, creating a CUDA device on a machine without the driver panics inside cudarc, so
//! devices are enumerated (which checks for the library) before one is chosen.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA, then a hardware WGPU adapter, then the CPU.
    Auto,
    Cpu,
    Wgpu(Option<usize>),
    Cuda(Option<usize>),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("device {s:?} is not one of auto, cpu, wgpu, wgpu:N, cuda, cuda:N");
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => {
                let i: usize = i
                    .parse()
                    .ok()
                    .filter(|_| i.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(bad)?;
                (k, Some(i))
            }
            None => (s, None),
        };
        match (kind, index) {
            ("auto", None) => Ok(Self::Auto),
            ("cpu", None) => Ok(Self::Cpu),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("cuda", i) => Ok(Self::Cuda(i)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Wgpu(None) => f.write_str("wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

/// A device kiln can use, as `kiln devices` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// What `--device` takes to pick it: `cpu`, `wgpu:0`, `cuda:1`.
    pub id: String,
    /// `cpu`, `wgpu` or `cuda`.
    pub kind: &'static str,
    pub name: String,
    /// A real GPU (false for the CPU and for software rasterizers such as lavapipe).
    pub hardware: bool,
    /// Float types the device computes in (storage, conversion and arithmetic).
    pub dtypes: Vec<&'static str>,
    #[serde(skip)]
    pub device: Device,
}

/// The device a run computes on, and how kiln names it in logs and manifests.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub device: Device,
    /// `cpu`, `wgpu:0`, `cuda:0`.
    pub id: String,
    /// burn's backend: `flex`, `wgpu`, `cuda`.
    pub backend: &'static str,
    /// The device's own name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
}

impl Chosen {
    pub fn describe(&self) -> String {
        format!("{} ({}, burn {})", self.id, self.name, self.backend)
    }
}

fn float_dtypes(device: &Device) -> Vec<&'static str> {
    [
        ("f32", DType::F32),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
    ]
    .into_iter()
    .filter(|(_, t)| device.supports_dtype(*t))
    .map(|(n, _)| n)
    .collect()
}

fn cpu_info() -> DeviceInfo {
    let device = Device::flex();
    DeviceInfo {
        id: "cpu".into(),
        kind: "cpu",
        name: format!(
            "{} threads",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        hardware: false,
        dtypes: float_dtypes(&device),
        device,
    }
}

/// Runs a probe that opens a device; a device that exists but cannot be opened (a driver
/// mismatch, exclusive mode, no memory) panics inside the backend: that becomes an error, and
/// the panic message is kept out of the user's terminal.
fn probe<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("the backend panicked");
        format!("{what} could not be opened: {why}")
    })
}

/// Opens one device to read its name, kind and float types.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn gpu_info(kind: &'static str, i: usize, device: Device) -> Result<DeviceInfo, String> {
    let id = format!("{kind}:{i}");
    let (identity, dtypes) = probe(&id, || (device.identity(), float_dtypes(&device)))?;
    Ok(DeviceInfo {
        name: identity
            .as_ref()
            .map_or_else(|| "unnamed device".into(), |d| d.name.clone()),
        hardware: identity.as_ref().is_some_and(|d| d.physical.is_some()),
        dtypes,
        id,
        kind,
        device,
    })
}

/// The devices of one GPU backend, not yet opened; empty without its feature or its driver
/// (for CUDA the enumeration loads the driver library instead of letting cudarc panic).
fn gpu_handles(kind: &str) -> Vec<Device> {
    let found = probe(kind, || match kind {
        #[cfg(feature = "cuda")]
        "cuda" => Device::enumerate(burn::tensor::DeviceType::Cuda).into_vec(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::enumerate(burn::tensor::DeviceType::Wgpu).into_vec(),
        _ => Vec::new(),
    });
    found.unwrap_or_default()
}

/// Opens every device of a GPU backend; those that fail to open are left out.
fn gpu_infos(kind: &'static str) -> Vec<DeviceInfo> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        gpu_handles(kind)
            .into_iter()
            .enumerate()
            .filter_map(|(i, d)| gpu_info(kind, i, d).ok())
            .collect()
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = (kind, gpu_handles);
        Vec::new()
    }
}

/// WGPU adapters (Vulkan, Metal, DirectX 12), in enumeration order, each opened.
pub fn wgpu_devices() -> Vec<DeviceInfo> {
    gpu_infos("wgpu")
}

/// CUDA devices, each opened.
pub fn cuda_devices() -> Vec<DeviceInfo> {
    gpu_infos("cuda")
}

/// Every device this build can use on this machine: CUDA, WGPU, then the CPU.
pub fn list() -> Vec<DeviceInfo> {
    let mut all = cuda_devices();
    all.extend(wgpu_devices());
    all.push(cpu_info());
    all
}

/// The backends compiled into this binary.
pub fn compiled() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error(
        "--device {0}: this kiln was built without the `{0}` feature; rebuild with `cargo install --path . --features {0}`{1}"
    )]
    NotCompiled(&'static str, &'static str),
    #[error("--device {spec}: {why}")]
    Unavailable { spec: String, why: String },
    #[error("precision {precision} is not supported on {device}: {why}")]
    Precision {
        precision: String,
        device: String,
        why: String,
    },
}

/// Opens only the device asked for (`kind:index`), after enumerating its backend.
fn pick(
    spec: DeviceSpec,
    kind: &'static str,
    index: Option<usize>,
) -> Result<DeviceInfo, BackendError> {
    let handles = gpu_handles(kind);
    let i = index.unwrap_or(0);
    let count = handles.len();
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(device) = handles.into_iter().nth(i) {
        return gpu_info(kind, i, device).map_err(|why| BackendError::Unavailable {
            spec: spec.to_string(),
            why,
        });
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    drop(handles);
    Err(BackendError::Unavailable {
        spec: spec.to_string(),
        why: match (kind, count) {
            (_, 0) => none_found(kind).into(),
            (_, n) => format!(
                "there is no {kind}:{i}; this machine has {n} {kind} device{} ({kind}:0{}); see `kiln devices`",
                if n == 1 { "" } else { "s" },
                if n > 1 {
                    format!("..{kind}:{}", n - 1)
                } else {
                    String::new()
                }
            ),
        },
    })
}

/// Why a compiled-in GPU backend (`cuda`, `wgpu`) found no device here.
pub fn none_found(kind: &str) -> &'static str {
    if kind == "cuda" {
        "no CUDA device: the NVIDIA driver (libcuda.so) is not installed or sees no GPU (`nvidia-smi` should list one)"
    } else {
        "no WGPU adapter: no Vulkan, Metal or DirectX 12 driver found (on Linux, install your GPU's Vulkan driver; Debian's mesa-vulkan-drivers gives a CPU one, lavapipe)"
    }
}

/// Resolves a device request to a device, probing before opening anything.
pub fn choose(spec: DeviceSpec) -> Result<Chosen, BackendError> {
    let info = match spec {
        DeviceSpec::Cpu => cpu_info(),
        DeviceSpec::Wgpu(i) => {
            if !cfg!(feature = "wgpu") {
                return Err(BackendError::NotCompiled("wgpu", ""));
            }
            pick(spec, "wgpu", i)?
        }
        DeviceSpec::Cuda(i) => {
            if !cfg!(feature = "cuda") {
                return Err(BackendError::NotCompiled(
                    "cuda",
                    " (the build downloads an LLVM bundle once: it needs internet access, see docs/src/gpus-and-clusters.md)",
                ));
            }
            pick(spec, "cuda", i)?
        }
        // A real GPU first; a software rasterizer (lavapipe) is slower than kiln's CPU backend,
        // so `auto` never picks one (ask for it with `--device wgpu`).
        DeviceSpec::Auto => cuda_devices()
            .into_iter()
            .next()
            .or_else(|| wgpu_devices().into_iter().find(|d| d.hardware))
            .unwrap_or_else(cpu_info),
    };
    Ok(Chosen {
        backend: match info.kind {
            "cpu" => "flex",
            k => k,
        },
        id: info.id,
        name: info.name,
        device: info.device,
    })
}

/// The device of the rank with local rank `local` on its machine: `cuda` (or `auto` on a machine
/// with CUDA GPUs) becomes `cuda:LOCAL_RANK`, one GPU per rank; an explicit index is kept.
pub fn for_local_rank(spec: DeviceSpec, local: usize) -> DeviceSpec {
    match spec {
        DeviceSpec::Cuda(None) => DeviceSpec::Cuda(Some(local)),
        DeviceSpec::Auto if !cuda_devices().is_empty() => DeviceSpec::Cuda(Some(local)),
        other => other,
    }
}

/// Checks that `device` computes in `precision`.
pub fn check_precision(
    chosen: &Chosen,
    precision: crate::amp::Precision,
) -> Result<(), BackendError> {
    use crate::amp::Precision;
    let (dtype, precision) = match precision {
        Precision::F32 => (DType::F32, "f32"),
        Precision::F16 => (DType::F16, "f16"),
        Precision::Bf16 => (DType::BF16, "bf16"),
    };
    if chosen.device.supports_dtype(dtype) {
        return Ok(());
    }
    let why = if precision == "bf16" && chosen.backend == "wgpu" {
        "Vulkan and WebGPU can store bf16 but have no bf16 arithmetic (burn documents that computing in it gives garbage); use f16 or f32".to_string()
    } else {
        format!(
            "the device computes in {}",
            float_dtypes(&chosen.device).join(", ")
        )
    };
    Err(BackendError::Precision {
        precision: precision.to_string(),
        device: chosen.id.clone(),
        why,
    })
}

/// Sets the CPU backend's thread count once per process (0: one per core).
pub fn init_threads(threads: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut b = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("kiln-compute-{i}"));
        if threads > 0 {
            b = b.num_threads(threads);
        }
        // Fails only when a pool already exists (a library user built one): keep theirs.
        let _ = b.build_global();
    });
}

/// The CPU device (burn's `flex` backend): where saved models are evaluated, exported and
/// served.
pub fn cpu() -> Device {
    Device::flex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        for (s, want) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("wgpu", DeviceSpec::Wgpu(None)),
            ("wgpu:1", DeviceSpec::Wgpu(Some(1))),
            ("cuda", DeviceSpec::Cuda(None)),
            ("cuda:0", DeviceSpec::Cuda(Some(0))),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), want);
            assert_eq!(want.to_string(), s);
        }
        for bad in [
            "", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cpu:0", "auto:1", "CUDA",
        ] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("auto, cpu, wgpu"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cpu_is_always_there() {
        let all = list();
        let cpu = all.last().unwrap();
        assert_eq!(cpu.id, "cpu");
        assert!(cpu.dtypes.contains(&"f32"));
        let chosen = choose(DeviceSpec::Cpu).unwrap();
        assert_eq!(chosen.backend, "flex");
        assert!(check_precision(&chosen, crate::amp::Precision::F32).is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_says_how_to_get_it() {
        let e = choose(DeviceSpec::Cuda(None)).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("internet"),
            "{e}"
        );
    }
}
