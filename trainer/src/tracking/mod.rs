//! Run tracking: every logged point goes to `metrics.jsonl` (for scripts) and to TensorBoard
//! event files (for people), through one [`Tracker`].

pub mod tfevents;

use crate::layout;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::run::{self, Status};
use tfevents::{EventWriter, HParamsPluginData, ProtoValue, SessionEndInfo, SessionStartInfo};

/// One logged point: scalars of one split at one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `train`, `valid`, `test` or `final`.
    pub split: &'static str,
    pub step: u64,
    pub epoch: usize,
    pub values: Vec<(String, f64)>,
}

/// A destination for logged points: the extension point for other trackers.
pub trait Sink {
    fn record(&mut self, point: &Point) -> io::Result<()>;
    /// The run's hyperparameters, once, when it starts.
    fn started(
        &mut self,
        _hparams: &BTreeMap<String, serde_json::Value>,
        _group: &str,
    ) -> io::Result<()> {
        Ok(())
    }
    fn ended(&mut self, _status: Status) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
}

/// `metrics.jsonl`: one JSON object per point, `{"split", "step", "epoch", <name>: value...}`.
pub struct JsonLines {
    file: File,
}

impl JsonLines {
    /// Opens for appending; when resuming from `resume_step`, first drops the points an
    /// interrupted session logged after that step, so the file holds each step once.
    pub fn open(path: &Path, resume_step: Option<u64>) -> io::Result<Self> {
        if let (Some(step), true) = (resume_step, path.exists()) {
            let text = std::fs::read_to_string(path)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::atomic::write(path, kept.as_bytes())?;
        }
        Ok(Self {
            file: OpenOptions::new().create(true).append(true).open(path)?,
        })
    }
}

impl Sink for JsonLines {
    fn record(&mut self, p: &Point) -> io::Result<()> {
        let mut v = serde_json::json!({"split": p.split, "step": p.step, "epoch": p.epoch});
        for (k, x) in &p.values {
            v[k.as_str()] = (*x).into();
        }
        // One write of the whole line: a process killed mid-point leaves no torn line for a
        // reader (a dashboard tailing the file, the resume) to trip on.
        self.file.write_all(format!("{v}\n").as_bytes())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// TensorBoard: scalars as `<split>/<name>`, the config as HParams.
pub struct TensorBoard {
    events: EventWriter,
}

impl TensorBoard {
    /// A new event file in the run folder; a resumed session marks its first step so that
    /// TensorBoard drops what the interrupted one logged after the checkpoint.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> io::Result<Self> {
        let mut events = EventWriter::create(run_dir)?;
        if let Some(step) = resume_step {
            events.session_start(step + 1)?;
        }
        Ok(Self { events })
    }
}

impl Sink for TensorBoard {
    fn record(&mut self, p: &Point) -> io::Result<()> {
        let values: Vec<(String, f64)> = p
            .values
            .iter()
            .map(|(k, v)| (format!("{}/{k}", p.split), *v))
            .collect();
        self.events.scalars(p.step, &values)
    }

    fn started(
        &mut self,
        hparams: &BTreeMap<String, serde_json::Value>,
        group: &str,
    ) -> io::Result<()> {
        let hparams = hparams
            .iter()
            .filter_map(|(k, v)| {
                let pv = match v {
                    serde_json::Value::Number(n) => ProtoValue {
                        number_value: n.as_f64(),
                        ..Default::default()
                    },
                    serde_json::Value::Bool(b) => ProtoValue {
                        bool_value: Some(*b),
                        ..Default::default()
                    },
                    serde_json::Value::String(s) => ProtoValue {
                        string_value: Some(s.clone()),
                        ..Default::default()
                    },
                    serde_json::Value::Null => return None,
                    other => ProtoValue {
                        string_value: Some(other.to_string()),
                        ..Default::default()
                    },
                };
                Some((k.clone(), pv))
            })
            .collect();
        let start = SessionStartInfo {
            hparams,
            group_name: group.into(),
            start_time_secs: tfevents::now(),
        };
        self.events.hparams(
            "_hparams_/session_start_info",
            HParamsPluginData {
                session_start_info: Some(start),
                ..Default::default()
            },
        )
    }

    fn ended(&mut self, status: Status) -> io::Result<()> {
        let status = match status {
            Status::Completed => 1,
            Status::Failed => 2,
            Status::Running | Status::Interrupted => return Ok(()),
        };
        let end = SessionEndInfo {
            status,
            end_time_secs: tfevents::now(),
        };
        self.events.hparams(
            "_hparams_/session_end_info",
            HParamsPluginData {
                session_end_info: Some(end),
                ..Default::default()
            },
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.events.flush()
    }
}

/// All sinks of a run.
pub struct Tracker {
    sinks: Vec<Box<dyn Sink>>,
    dir: std::path::PathBuf,
}

impl Tracker {
    /// Opens the run's sinks; `resume_step` is the checkpoint's step when resuming.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self, run::RunError> {
        let io = run::io(run_dir);
        let jsonl = JsonLines::open(&run_dir.join(layout::METRICS_LOG), resume_step);
        let tb = TensorBoard::open(run_dir, resume_step);
        match (jsonl, tb) {
            (Ok(j), Ok(t)) => Ok(Self {
                sinks: vec![Box::new(j), Box::new(t)],
                dir: run_dir.into(),
            }),
            (Err(e), _) | (_, Err(e)) => Err(io(e)),
        }
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut dyn Sink) -> io::Result<()>,
    ) -> Result<(), run::RunError> {
        for s in &mut self.sinks {
            f(s.as_mut()).map_err(run::io(&self.dir))?;
        }
        Ok(())
    }

    pub fn record(&mut self, point: Point) -> Result<(), run::RunError> {
        self.each(|s| s.record(&point))?;
        self.each(|s| s.flush())
    }

    pub fn started(
        &mut self,
        hparams: &BTreeMap<String, serde_json::Value>,
        group: &str,
    ) -> Result<(), run::RunError> {
        self.each(|s| s.started(hparams, group))?;
        self.each(|s| s.flush())
    }

    pub fn ended(&mut self, status: Status) -> Result<(), run::RunError> {
        self.each(|s| s.ended(status))?;
        self.each(|s| s.flush())
    }
}

/// A config as flat `a.b.c -> value` pairs (arrays as JSON text): TensorBoard's HParams.
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, x) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            serde_json::Value::Array(_) => {
                out.insert(prefix.into(), serde_json::Value::String(v.to_string()));
            }
            other => {
                out.insert(prefix.into(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Resident memory of this process in MiB (Linux; `None` elsewhere).
pub fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_makes_dotted_keys() {
        let v =
            serde_json::json!({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 4, "name": "x"});
        let f = flatten(&v);
        assert_eq!(f["optim.lr"], serde_json::json!(0.1));
        assert_eq!(f["optim.betas"], serde_json::json!("[0.9,0.99]"));
        assert_eq!(f["seed"], serde_json::json!(4));
    }

    #[test]
    fn resuming_drops_points_logged_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut j = JsonLines::open(&path, None).unwrap();
        for step in [10, 20, 30] {
            j.record(&Point {
                split: "train",
                step,
                epoch: 0,
                values: vec![("loss".into(), 1.0)],
            })
            .unwrap();
        }
        drop(j);
        let mut j = JsonLines::open(&path, Some(20)).unwrap();
        j.record(&Point {
            split: "train",
            step: 30,
            epoch: 0,
            values: vec![("loss".into(), 0.5)],
        })
        .unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [10, 20, 30]);
    }
}
