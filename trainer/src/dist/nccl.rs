//! The NCCL engine, for ranks on CUDA GPUs (cudarc's bindings, loaded at run time).
//!
//! Buffers are staged: the flat gradient comes to the host from burn (one read per step, as
//! for MPI), is copied to a device buffer that NCCL all-reduces, and comes back. NCCL then moves
//! the bytes over NVLink, PCIe or InfiniBand as it would for PyTorch.
//!
//! The communicator id is made by rank 0 and reaches the others by MPI broadcast (under mpirun
//! or srun) or through the rendezvous at `MASTER_ADDR:MASTER_PORT` (torchrun-style
//! variables, see [`super::rendezvous`]).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::Engine;

pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
    floats: Option<CudaSlice<f32>>,
}

/// A failed NCCL or CUDA call mid-run: the other ranks' watchdogs end them.
fn fail(what: &str, e: impl std::fmt::Debug) -> ! {
    eprintln!("error: NCCL: {what} failed: {e:?}");
    std::process::exit(1)
}

fn libraries() -> Result<(), String> {
    // SAFETY: these only try to load the shared libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(
            "NCCL needs the NVIDIA driver (libcuda.so), which is not installed here".into(),
        );
    }
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(
            "NCCL's library (libnccl.so.2) is not on the library path: install NCCL (Debian/Ubuntu \
             libnccl2, or pip's nvidia-nccl-cu12) and add its folder to LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(())
}

/// A new communicator id (rank 0 makes it, the others receive it).
pub fn new_id() -> Result<[u8; 128], String> {
    libraries()?;
    let id = Id::new().map_err(|e| format!("ncclGetUniqueId failed: {e:?}"))?;
    Ok(id.internal().map(|c| c as u8))
}

impl Nccl {
    /// Joins the communicator `id` as `rank` of `world`, on CUDA device `ordinal`.
    pub fn open(ordinal: usize, rank: usize, world: usize, id: [u8; 128]) -> Result<Self, String> {
        libraries()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("CUDA device {ordinal} cannot be opened: {e:?}"))?;
        let stream = ctx.default_stream();
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(Arc::clone(&stream), rank, world, id)
            .map_err(|e| format!("ncclCommInitRank (rank {rank} of {world}) failed: {e:?}"))?;
        Ok(Self {
            comm,
            stream,
            floats: None,
        })
    }

    fn bytes(&self, host: &[u8]) -> CudaSlice<u8> {
        self.stream
            .clone_htod(host)
            .unwrap_or_else(|e| fail("a copy to the GPU", e))
    }

    fn back(&self, dev: &CudaSlice<u8>, host: &mut [u8]) {
        self.stream
            .memcpy_dtoh(dev, host)
            .unwrap_or_else(|e| fail("a copy from the GPU", e));
        self.stream
            .synchronize()
            .unwrap_or_else(|e| fail("a stream synchronisation", e));
    }
}

impl Engine for Nccl {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, buf: &mut Vec<f32>) {
        if self.floats.as_ref().is_none_or(|d| d.len() != buf.len()) {
            self.floats = Some(
                self.stream
                    .alloc_zeros::<f32>(buf.len())
                    .unwrap_or_else(|e| fail("a GPU allocation", e)),
            );
        }
        let dev = self.floats.as_mut().expect("allocated above");
        self.stream
            .memcpy_htod(&buf[..], dev)
            .unwrap_or_else(|e| fail("a copy to the GPU", e));
        self.comm
            .all_reduce_in_place(dev, &ReduceOp::Sum)
            .unwrap_or_else(|e| fail("ncclAllReduce", e));
        self.stream
            .memcpy_dtoh(dev, &mut buf[..])
            .unwrap_or_else(|e| fail("a copy from the GPU", e));
        self.stream
            .synchronize()
            .unwrap_or_else(|e| fail("a stream synchronisation", e));
    }

    fn broadcast_fixed(&mut self, buf: &mut [u8]) {
        let mut dev = self.bytes(buf);
        self.comm
            .broadcast_in_place(&mut dev, 0)
            .unwrap_or_else(|e| fail("ncclBroadcast", e));
        self.back(&dev, buf);
    }

    fn all_gather_fixed(&mut self, mine: &[u8]) -> Vec<u8> {
        let send = self.bytes(mine);
        let mut out = vec![0u8; mine.len() * self.comm.world_size()];
        let mut recv = self.bytes(&out);
        self.comm
            .all_gather(&send, &mut recv)
            .unwrap_or_else(|e| fail("ncclAllGather", e));
        self.back(&recv, &mut out);
        out
    }

    fn abort(&mut self, code: i32) -> ! {
        // Without a launcher that kills the job, the others' watchdogs end them.
        std::process::exit(code)
    }
}

/// cudarc looks for `libnccl.so` and names versioned after CUDA, but NCCL installs
/// `libnccl.so.2` (Debian/Ubuntu's libnccl2, pip's nvidia-nccl-cu12). When only that is
/// found, kiln links `libnccl.so` to it in its cache folder and restarts itself once with that
/// folder on `LD_LIBRARY_PATH` (the loader reads the path only at start). Returns only when
/// nothing needs doing (or nothing was found: the error comes when NCCL is opened).
#[cfg(target_os = "linux")]
pub fn make_nccl_findable() {
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    const DONE: &str = "KILN_NCCL_LINKED";
    // SAFETY: only tries to load the library.
    if std::env::var_os(DONE).is_some() || unsafe { cudarc::nccl::sys::is_culib_present() } {
        return;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/local/cuda/lib64",
        "/usr/local/nccl/lib",
    ] {
        dirs.push(d.into());
    }
    // pip's wheel, in the active virtual environment.
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        let lib = PathBuf::from(venv).join("lib");
        for py in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
            dirs.push(py.path().join("site-packages/nvidia/nccl/lib"));
        }
    }
    let Some(found) = dirs
        .iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.is_file())
    else {
        return;
    };
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kiln/nccl");
    let link = cache.join("libnccl.so");
    let _ = std::fs::create_dir_all(&cache);
    if std::fs::read_link(&link).ok().as_ref() != Some(&found) {
        let _ = std::fs::remove_file(&link);
        if std::os::unix::fs::symlink(&found, &link).is_err() {
            return;
        }
    }
    let mut path = std::ffi::OsString::from(cache.as_os_str());
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .env(DONE, "1")
        .exec();
    eprintln!("warning: could not restart with NCCL's library on the path: {err}");
}

#[cfg(not(target_os = "linux"))]
pub fn make_nccl_findable() {}
