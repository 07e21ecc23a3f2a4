//! Will a model fit? An estimate made from the config alone, before anything is allocated, so
//! that a size no machine can hold is a config error rather than an aborted process.

/// Bytes per parameter while training: the f32 weights, their gradients, two optimizer moments,
/// the best weights kept for `train.restore_best`, and the snapshot a checkpoint copies to
/// bytes (Adam's worst case; SGD needs less).
const BYTES_PER_PARAM: u64 = 4 * 6;
/// Bytes per activation float: the value and its gradient in the backward pass.
const BYTES_PER_ACTIVATION: u64 = 4 * 2;

/// A model (and batch) too large for this machine's memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{keys} describes a model of {params} parameters, which needs about {} of memory to train ({}); this machine has {} available: use smaller layers{}",
    human(*.need), needed_for(*.batch), human(*.have),
    if *.batch > 0 { " or a smaller `train.batch_size`" } else { "" }
)]
pub struct TooLarge {
    /// The config keys that size the model, with their values (`` `model.hidden` = [4000] ``).
    pub keys: String,
    pub params: u64,
    pub batch: usize,
    pub need: u64,
    pub have: u64,
}

/// What the estimate counts, for [`TooLarge`]'s message.
fn needed_for(batch: usize) -> String {
    let mut what = "weights, gradients, optimizer moments, the best weights".to_string();
    if batch > 0 {
        what.push_str(&format!(
            " and the inputs and activations of a batch of {batch}"
        ));
    }
    what
}

/// Refuses a training that needs more memory than is available (`None`: unknown, allowed).
pub fn check_fits(
    keys: String,
    params: u64,
    activations_per_example: u64,
    batch: usize,
    available: Option<u64>,
) -> Result<(), TooLarge> {
    let need = training_bytes(params, activations_per_example, batch);
    match available {
        Some(have) if need > have => Err(TooLarge {
            keys,
            params,
            batch,
            need,
            have,
        }),
        _ => Ok(()),
    }
}

/// The `[model]` keys that size a model, with their values, for [`TooLarge`].
pub fn size_keys(section: &kiln_models::ModelSection) -> String {
    section
        .kind
        .size_keys()
        .iter()
        .map(|k| match *k {
            "model.hidden" => format!("`model.hidden` = {:?}", section.hidden),
            "model.conv" => format!(
                "`model.conv` (channels {:?})",
                section.conv.iter().map(|c| c.channels).collect::<Vec<_>>()
            ),
            other => format!("`{other}`"),
        })
        .collect::<Vec<_>>()
        .join(" with ")
}

/// Memory a training of this size needs, in bytes (saturating).
pub fn training_bytes(params: u64, activations_per_example: u64, batch: usize) -> u64 {
    params.saturating_mul(BYTES_PER_PARAM).saturating_add(
        activations_per_example
            .saturating_mul(batch as u64)
            .saturating_mul(BYTES_PER_ACTIVATION),
    )
}

/// Memory this machine can give a process now (Linux: `MemAvailable`); `None` where it cannot
/// be read, and then nothing is refused.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_available(&text)
}

fn parse_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// `1.2 GB`, `3.4 TB`: a size for messages.
pub fn human(bytes: u64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_saturate_and_read_meminfo() {
        assert_eq!(training_bytes(10, 5, 2), 10 * 24 + 5 * 2 * 8);
        assert_eq!(training_bytes(u64::MAX / 2, 1, 1), u64::MAX);
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(parse_available("MemTotal: 1 kB\n"), None);
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(1_500_000_000), "1.5 GB");
        assert_eq!(human(7_200_000_000_000), "7.2 TB");
        let e = check_fits(
            "`model.hidden` = [4000000000]".into(),
            4_000_000_000,
            1,
            64,
            Some(1 << 30),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("`model.hidden` = [4000000000] describes a model of 4000000000 parameters, which needs about 96.0 GB"), "{msg}");
        assert!(msg.contains("this machine has 1.1 GB available"), "{msg}");
        assert!(
            msg.contains("a batch of 64") && msg.ends_with("`train.batch_size`"),
            "{msg}"
        );
        let without_data = check_fits("`model.hidden` = [9]".into(), u64::MAX, 0, 0, Some(1))
            .unwrap_err()
            .to_string();
        assert!(
            without_data.contains("(weights, gradients, optimizer moments, the best weights)"),
            "{without_data}"
        );
        assert!(
            without_data.ends_with("use smaller layers"),
            "{without_data}"
        );
        assert!(check_fits(String::new(), u64::MAX, 1, 1, None).is_ok());
        assert!(check_fits(String::new(), 1000, 10, 64, Some(1 << 30)).is_ok());
    }
}
