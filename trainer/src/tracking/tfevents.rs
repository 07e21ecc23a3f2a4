//! TensorBoard event files, written directly.
//!
//! Why not `tensorboard-rs` (0.5.9), the crate the design card names: it serialises through
//! protobuf 2.28, which carries RUSTSEC-2024-0437, pulls `image` 0.23, looks unmaintained, and its
//! `add_hparams` (and text, images, histograms) are `unimplemented!()`, so the HParams tab, which
//! this module exists for, would panic. The format is small: TFRecord framing (length, masked
//! CRC-32C, payload, masked CRC-32C) around a handful of protobuf messages, declared below with
//! `prost` derives (no code generation, no `protoc`). Field numbers follow TensorBoard's
//! `tensorboard/compat/proto/{event,summary,tensor,tensor_shape}.proto` and
//! `tensorboard/plugins/hparams/plugin_data.proto`; Python's `EventAccumulator` reads the files
//! back in CI.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// 1 = START: TensorBoard drops earlier events at or after this step (a resumed run).
    #[prost(int32, tag = "1")]
    pub status: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    /// 1 = scalar, 2 = tensor.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// 1 = DT_FLOAT.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `tensorboard.hparams.HParamsPluginData`, with the two parts kiln writes.
#[derive(Clone, PartialEq, Message)]
pub struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(message, optional, tag = "3")]
    pub session_start_info: Option<SessionStartInfo>,
    #[prost(message, optional, tag = "4")]
    pub session_end_info: Option<SessionEndInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: std::collections::BTreeMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    pub group_name: String,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionEndInfo {
    /// 1 = success, 2 = failure.
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// `google.protobuf.Value`, the kinds kiln uses.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoValue {
    #[prost(double, optional, tag = "2")]
    pub number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub bool_value: Option<bool>,
}

/// The masked CRC-32C of TFRecord framing.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// Creates a new event file in `dir` (one per training session; TensorBoard reads all the
    /// files of a folder in name order).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        let name = format!(
            "{}{:010}.{}.{}.kiln",
            crate::layout::EVENTS_PREFIX,
            now() as u64,
            host.trim(),
            std::process::id()
        );
        let path = dir.join(name);
        let mut w = Self {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        w.write(&Event {
            wall_time: now(),
            file_version: Some("brain.Event:2".into()),
            ..Default::default()
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Scalars at one step, as `simple_value`s (TensorBoard's Scalars tab).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> std::io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                ..Default::default()
            })
            .collect();
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary { value }),
            ..Default::default()
        })
    }

    /// Marks where a resumed session starts: TensorBoard drops what an earlier session logged at
    /// or after `step`, so a step is never shown twice.
    pub fn session_start(&mut self, step: u64) -> std::io::Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            session_log: Some(SessionLog { status: 1 }),
            ..Default::default()
        })
    }

    /// One HParams plugin summary (`_hparams_/session_start_info` or `_end_info`).
    pub fn hparams(&mut self, tag: &str, data: HParamsPluginData) -> std::io::Result<()> {
        let value = SummaryValue {
            tag: tag.into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "hparams".into(),
                    content: data.encode_to_vec(),
                }),
                data_class: 2,
            }),
            // The plugin's "null tensor": float, shape [0].
            tensor: Some(TensorProto {
                dtype: 1,
                tensor_shape: Some(TensorShape {
                    dim: vec![Dim { size: 0 }],
                }),
            }),
            ..Default::default()
        };
        self.write(&Event {
            wall_time: now(),
            summary: Some(Summary { value: vec![value] }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorboards_test_vector() {
        // tensorboard/data/server/masked_crc.rs: b"\x1a\x11CRC test, one two" -> 0x5794d08a.
        let mut data = vec![0x1a, 0x11];
        data.extend_from_slice(b"CRC test, one two");
        assert_eq!(masked_crc(&data), 0x5794_d08a);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn null_tensor_encodes_like_tensorboards() {
        // tensorboard/plugins/hparams/metadata.py NULL_TENSOR serialises to 08 01 12 02 12 00.
        let t = TensorProto {
            dtype: 1,
            tensor_shape: Some(TensorShape {
                dim: vec![Dim { size: 0 }],
            }),
        };
        assert_eq!(t.encode_to_vec(), [0x08, 0x01, 0x12, 0x02, 0x12, 0x00]);
    }

    #[test]
    fn a_map_entry_of_a_bool_encodes_like_protobuf() {
        // {"b": true} as SessionStartInfo.hparams: 0a 07 0a 01 62 12 02 20 01.
        let mut hparams = std::collections::BTreeMap::new();
        hparams.insert(
            "b".to_string(),
            ProtoValue {
                bool_value: Some(true),
                ..Default::default()
            },
        );
        let s = SessionStartInfo {
            hparams,
            ..Default::default()
        };
        assert_eq!(
            s.encode_to_vec(),
            [0x0a, 0x07, 0x0a, 0x01, 0x62, 0x12, 0x02, 0x20, 0x01]
        );
    }
}
