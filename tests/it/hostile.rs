//! Input that makes no sense or means harm: flags and config values past their valid range,
//! more folds than rows, sizes past memory, names holding newlines and terminal escapes. Each
//! is refused with one `error:` line and its exit code (2 for what the user wrote, 1 for a
//! fault in the data), never a panic, an abort or a run left behind.

use std::process::Output;

use crate::common::*;

/// Checks that `o` failed with `code`, said one `error:` line naming `needle`, and did not
/// panic; returns the line.
fn one_line(o: &Output, code: i32, needle: &str, what: &str) -> String {
    assert_eq!(o.status.code(), Some(code), "{what}: {}", stderr(o));
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "{what}: {}", stderr(o));
    assert!(lines[0].contains(needle), "{what}: {}", lines[0]);
    assert!(!stderr(o).contains("panicked"), "{what}: {}", stderr(o));
    lines.into_iter().next().unwrap()
}

#[test]
fn flags_past_their_range_are_one_line_and_exit_2_at_each_boundary() {
    let sb = Sandbox::new();
    let digits = root().join("data/sklearn/digits.csv.gz");
    let digits = digits.to_str().unwrap();
    let huge = u64::MAX.to_string();
    // (the command, the flag the error names); the model need not exist: flags are checked
    // before anything loads.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["explain", "m", "--steps", "0"], "--steps"),
        (vec!["explain", "m", "--steps", "4097"], "--steps"),
        (vec!["explain", "m", "--budget", "1"], "--budget"),
        (vec!["explain", "m", "--budget", "1048577"], "--budget"),
        (vec!["explain", "m", "--max-samples", "0"], "--max-samples"),
        (vec!["explain", "m", "--max-samples", "1"], "--max-samples"),
        (vec!["explain", "m", "--repeats", "0"], "--repeats"),
        (vec!["explain", "m", "--repeats", "1001"], "--repeats"),
        (vec!["explain", "m", "--background", "0"], "--background"),
        (
            vec!["generate", "m", "--max-new-tokens", "0"],
            "--max-new-tokens",
        ),
        (
            vec!["generate", "m", "--max-new-tokens", "1000001"],
            "--max-new-tokens",
        ),
        (
            vec!["generate", "m", "--max-new-tokens", &huge],
            "--max-new-tokens",
        ),
        (vec!["serve", "m", "--queue", "1000001"], "--queue"),
        (vec!["serve", "m", "--threads", "1025"], "--threads"),
        (
            vec!["serve", "m", "--drift-window", "1000001"],
            "--drift-window",
        ),
        (
            vec!["drift", "m", "--input", digits, "--psi", "inf"],
            "--psi",
        ),
        (vec!["drift", "m", "--input", digits, "--psi", "0"], "--psi"),
        (
            vec!["export", "m", "-o", "m.onnx", "--batch", "65537"],
            "--batch",
        ),
        (
            vec!["export", "m", "-o", "m.onnx", "--batch", "0"],
            "--batch",
        ),
        (
            vec![
                "sweep",
                "configs/sweeps/digits_mlp.toml",
                "--parallel",
                "1025",
            ],
            "--parallel",
        ),
        (
            vec![
                "sweep",
                "configs/sweeps/digits_mlp.toml",
                "--threads",
                "1025",
            ],
            "--threads",
        ),
        (
            vec!["cv", "configs/digits_mlp.toml", "--folds", "1"],
            "--folds",
        ),
        (
            vec!["cv", "configs/digits_mlp.toml", "--folds", "1001"],
            "--folds",
        ),
        (
            vec![
                "train",
                "configs/digits_mlp.toml",
                "--devices",
                "cuda:0,1,0",
            ],
            "twice",
        ),
    ];
    for (args, flag) in cases {
        let o = sb.kiln(&args);
        one_line(&o, 2, flag, &args.join(" "));
    }
    // The boundaries themselves are accepted: these get as far as the missing model.
    for args in [
        vec![
            "explain",
            "m",
            "--steps",
            "4096",
            "--budget",
            "1048576",
            "--max-samples",
            "2",
        ],
        vec!["generate", "m", "--max-new-tokens", "1000000"],
        vec!["export", "m", "-o", "m.onnx", "--batch", "65536"],
    ] {
        let o = sb.kiln(&args);
        one_line(&o, 2, "\"m\"", &args.join(" "));
    }
    assert!(no_runs(&sb));
}

#[test]
fn config_values_past_their_range_are_refused_before_any_work() {
    let sb = Sandbox::new();
    for (config, set, key) in [
        (
            "configs/digits_mlp.toml",
            "distributed.timeout_s=604801",
            "distributed.timeout_s",
        ),
        (
            "configs/shakespeare_genre.toml",
            "data.vocab_size=1048577",
            "data.vocab_size",
        ),
        (
            "configs/shakespeare_genre.toml",
            "data.vocab_size=2",
            "data.vocab_size",
        ),
        (
            "configs/mnist_png_resnet.toml",
            "data.image_size=[100000, 100000]",
            "data.image_size",
        ),
        // Under the pixel limit, past any machine's memory: the model and the batches the
        // loader holds are counted before a file is read.
        (
            "configs/mnist_png_resnet.toml",
            "data.image_size=[9000, 9000]",
            "data.image_size",
        ),
    ] {
        let o = sb.kiln(&["train", config, "--quiet", "--set", set]);
        one_line(&o, 2, key, set);
    }
    // The boundary: a week is accepted (smoke-trained here).
    let o = sb.kiln(&[
        "train",
        "configs/digits_mlp.toml",
        "--smoke",
        "--quiet",
        "--set",
        "distributed.timeout_s=604800",
    ]);
    assert_exit(&o, 0);
}

/// 8 rows of the digits file, a config training on them with no test split.
fn eight_rows(sb: &Sandbox) -> std::path::PathBuf {
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(root().join("data/sklearn/digits.csv.gz")).unwrap(),
        )
        .read_to_string(&mut s)
        .unwrap();
        s
    };
    let rows: Vec<&str> = text.lines().take(8).collect();
    let data = sb.write("eight.csv", &(rows.join("\n") + "\n"));
    sb.write(
        "eight.toml",
        &format!(
            "name = \"eight\"\nseed = 1\n[data]\npath = \"{}\"\n[data.split]\ntest = 0.0\n\
             [model]\nhidden = [8]\n[train]\nepochs = 1\nbatch_size = 4\n",
            data.display()
        ),
    )
}

#[test]
fn cross_validation_takes_at_most_one_fold_per_row() {
    let sb = Sandbox::new();
    let cfg = eight_rows(&sb);
    let cfg = cfg.to_str().unwrap();
    let o = sb.kiln(&["cv", cfg, "--folds", "9", "--quiet"]);
    one_line(&o, 2, "9 folds of 8 rows", "9 folds of 8 rows");
    assert!(no_runs(&sb), "a fold trained before the refusal");
    // One fold per row: every fold validates on one row.
    let o = sb.kiln(&["cv", cfg, "--folds", "8", "--quiet", "--json"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    let record: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(record["folds"], 8, "{record}");
    assert_eq!(record["runs"].as_array().map(Vec::len), Some(8), "{record}");
}

#[test]
fn names_holding_newlines_and_escapes_print_as_one_escaped_line() {
    let sb = Sandbox::new();
    // A data file whose name holds a newline, with a ragged row: a data error (exit 1).
    let csv = sb.path().join("broken\nrows.csv");
    std::fs::write(&csv, "a count line\n1,2,0\n3,4\n5,6,1\n").unwrap();
    let o = sb.kiln(&[
        "train",
        "configs/breast_cancer.toml",
        "--quiet",
        "--set",
        &format!("data.path={:?}", csv.to_str().unwrap()),
    ]);
    let line = one_line(
        &o,
        1,
        "broken\\nrows.csv",
        "a ragged file named over two lines",
    );
    assert!(line.contains("expected"), "{line}");
    // A config that is not there, its name holding a terminal escape and a newline.
    let o = sb.kiln(&["train", "no\u{1b}[31m\nsuch.toml"]);
    let line = one_line(&o, 2, "no\\u{1b}[31m\\nsuch.toml", "a missing config");
    assert!(!stderr(&o).contains('\u{1b}'), "{line}");
    // A registry reference the same way.
    let o = sb.kiln(&["predict", "ad\nult", "data/sklearn/digits.csv.gz"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(no_runs(&sb));
}
