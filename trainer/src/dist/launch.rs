//! Who am I in the job: rank, world size and local rank, read from the launcher's variables.
//!
//! Each launcher says it its own way; kiln reads them in this order, the nearest launcher first:
//!
//! | launcher | rank | world | local rank | local size |
//! |---|---|---|---|---|
//! | Open MPI's `mpirun` | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OMPI_COMM_WORLD_LOCAL_SIZE` |
//! | MPICH / Intel MPI (Hydra), PMI | `PMI_RANK` | `PMI_SIZE` | `MPI_LOCALRANKID` | `MPI_LOCALNRANKS` |
//! | torchrun-style | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `LOCAL_WORLD_SIZE` |
//! | Slurm, inside an `srun` step | `SLURM_PROCID` | `SLURM_NTASKS` | `SLURM_LOCALID` | - |
//!
//! Slurm's variables are trusted only inside a step (`SLURM_STEP_ID` set): a batch script's
//! own shell has `SLURM_PROCID=0` and `SLURM_NTASKS=16` too, and is not one of 16 ranks.

use std::collections::BTreeMap;

/// Which launcher started this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    OpenMpi,
    Pmi,
    /// torchrun-style variables; `MASTER_ADDR:MASTER_PORT` is where rank 0 listens.
    Torchrun {
        addr: Option<String>,
        port: Option<u16>,
    },
    Slurm,
}

impl Launcher {
    /// Launched through MPI (its ranks can call `MPI_Init`).
    pub fn is_mpi(&self) -> bool {
        matches!(self, Self::OpenMpi | Self::Pmi | Self::Slurm)
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::OpenMpi => "Open MPI (mpirun)",
            Self::Pmi => "an MPI launcher (PMI)",
            Self::Torchrun { .. } => "torchrun-style variables",
            Self::Slurm => "a Slurm step (srun)",
        }
    }
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// Ranks on this machine, when the launcher says.
    pub local_world: Option<usize>,
    pub launcher: Launcher,
}

impl Topology {
    /// Reads the process's environment; `None` when no launcher started it.
    pub fn from_env() -> Result<Option<Self>, String> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_vars(&|k| vars.get(k).cloned())
    }

    /// [`Topology::from_env`] over any lookup (tests give a map).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let num = |key: &str| -> Result<Option<usize>, String> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    format!("the launcher variable {key}={v:?} is not a non-negative integer")
                }),
            }
        };
        let need = |key: &str| -> Result<usize, String> {
            num(key)?.ok_or_else(|| format!("the launcher set some of its variables but not {key}"))
        };
        let (launcher, rank, world, local_rank, local_world) =
            if num("OMPI_COMM_WORLD_SIZE")?.is_some() {
                (
                    Launcher::OpenMpi,
                    need("OMPI_COMM_WORLD_RANK")?,
                    need("OMPI_COMM_WORLD_SIZE")?,
                    num("OMPI_COMM_WORLD_LOCAL_RANK")?,
                    num("OMPI_COMM_WORLD_LOCAL_SIZE")?,
                )
            } else if num("PMI_SIZE")?.is_some() {
                (
                    Launcher::Pmi,
                    need("PMI_RANK")?,
                    need("PMI_SIZE")?,
                    num("MPI_LOCALRANKID")?,
                    num("MPI_LOCALNRANKS")?,
                )
            } else if num("WORLD_SIZE")?.is_some() {
                let port = match get("MASTER_PORT") {
                    None => None,
                    Some(p) => Some(p.trim().parse::<u16>().map_err(|_| {
                        format!("MASTER_PORT={p:?} is not a port number (1-65535)")
                    })?),
                };
                (
                    Launcher::Torchrun {
                        addr: get("MASTER_ADDR").filter(|a| !a.is_empty()),
                        port,
                    },
                    need("RANK")?,
                    need("WORLD_SIZE")?,
                    num("LOCAL_RANK")?,
                    num("LOCAL_WORLD_SIZE")?,
                )
            } else if get("SLURM_STEP_ID").is_some() && num("SLURM_NTASKS")?.is_some() {
                (
                    Launcher::Slurm,
                    need("SLURM_PROCID")?,
                    need("SLURM_NTASKS")?,
                    num("SLURM_LOCALID")?,
                    None,
                )
            } else {
                return Ok(None);
            };
        if world == 0 || rank >= world {
            return Err(format!(
                "{} says rank {rank} of {world}: the rank must be below the world size",
                launcher.describe()
            ));
        }
        if let (Some(l), Some(n)) = (local_rank, local_world)
            && l >= n
        {
            return Err(format!(
                "{} says local rank {l} of {n} on this machine",
                launcher.describe()
            ));
        }
        Ok(Some(Self {
            rank,
            world,
            local_rank: local_rank.unwrap_or(0),
            local_world,
            launcher,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(vars: &[(&str, &str)]) -> Result<Option<Topology>, String> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Topology::from_vars(&|k| map.get(k).cloned())
    }

    #[test]
    fn reads_each_launcher() {
        assert_eq!(topo(&[]).unwrap(), None);
        let t = topo(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "8"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.local_world),
            (3, 16, 3, Some(8))
        );
        assert_eq!(t.launcher, Launcher::OpenMpi);
        let t = topo(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")])
            .unwrap()
            .unwrap();
        assert_eq!((t.rank, t.world, t.launcher), (1, 2, Launcher::Pmi));
        let t = topo(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((t.rank, t.local_rank), (5, 1));
        assert_eq!(
            t.launcher,
            Launcher::Torchrun {
                addr: Some("10.0.0.1".into()),
                port: Some(29500)
            }
        );
    }

    #[test]
    fn slurm_counts_only_inside_a_step() {
        let batch_shell = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "0"),
        ];
        assert_eq!(topo(&batch_shell).unwrap(), None);
        let mut step = batch_shell.to_vec();
        step.push(("SLURM_STEP_ID", "0"));
        step[0] = ("SLURM_PROCID", "9");
        let t = topo(&step).unwrap().unwrap();
        assert_eq!((t.rank, t.world, t.launcher), (9, 16, Launcher::Slurm));
        // The nearest launcher wins: mpirun inside an allocation.
        step.push(("OMPI_COMM_WORLD_RANK", "1"));
        step.push(("OMPI_COMM_WORLD_SIZE", "2"));
        assert_eq!(topo(&step).unwrap().unwrap().launcher, Launcher::OpenMpi);
    }

    #[test]
    fn bad_variables_are_named() {
        let e = topo(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "x")]).unwrap_err();
        assert!(e.contains("OMPI_COMM_WORLD_RANK=\"x\""), "{e}");
        let e = topo(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("rank 2 of 2"), "{e}");
        let e = topo(&[("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("not RANK"), "{e}");
        let e = topo(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")]).unwrap_err();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}
