//! Folders of image files, end to end: MNIST written out as PNG files by the repository's own
//! builder script, real JPEG photographs (scikit-learn's two samples), broken files, exact
//! resume with augmentation, two ranks under MPI, and the exported ResNet in onnxruntime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The first `limit` images of each MNIST split as `OUT/{train,test}/<digit>/*.png`, written by
/// `scripts/build_mnist_png.py`.
fn mnist_png(sb: &Sandbox, limit: usize) -> PathBuf {
    let out = sb.path().join("mnist_png");
    let o = Command::new("python3")
        .arg(root().join("scripts/build_mnist_png.py"))
        .args(["--limit", &limit.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("python3 runs the builder");
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// A config training `model` (TOML lines of `[model]`) on the folder `root` for `epochs`, with
/// `extra` (whole tables) appended.
fn config(sb: &Sandbox, root: &Path, model: &str, epochs: usize, extra: &str) -> PathBuf {
    let text = format!(
        r#"
name = "digits-png"
seed = 3
[data]
format = "image_folder"
path = "{train}"
test_path = "{test}"
image_size = [28, 28]
[data.split]
valid = 0.1
[model]
{model}
[train]
batch_size = 32
log_every = 5
epochs = {epochs}
[optim]
name = "adamw"
lr = 3e-3
{extra}
"#,
        train = root.join("train").display(),
        test = root.join("test").display(),
    );
    sb.write("png.toml", &text)
}

const CNN: &str =
    "kind = \"cnn\"\nhidden = [32]\n[[model.conv]]\nchannels = 8\n[[model.conv]]\nchannels = 16";
const AUGMENT: &str =
    "[data.augment]\nrandom_crop = { padding = 2 }\nrotation_degrees = 10\nhorizontal_flip = 0.2\n";

fn weights_sha(run: &serde_json::Value) -> String {
    sha256_file(&PathBuf::from(run["run_dir"].as_str().unwrap()).join("final/model.safetensors"))
}

#[test]
fn a_png_folder_trains_a_cnn_and_predict_reads_a_folder_of_files() {
    let sb = Sandbox::new();
    let pngs = mnist_png(&sb, 1500);
    let cfg = config(&sb, &pngs, CNN, 3, "");
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--json"]);
    assert_exit(&o, 0);
    let run = json(&o);
    let acc = run["metrics"]["test"]["accuracy"].as_f64().unwrap();
    eprintln!("1,350 PNG files, 3 epochs: test accuracy {acc}");
    assert!(acc > 0.85, "test accuracy {acc}");
    // Classes are the folders, in name order; the preprocessing says how files are read.
    let dir = PathBuf::from(run["run_dir"].as_str().unwrap());
    let pre = read_json(&dir.join("preprocess.json"));
    assert_eq!(pre["images"]["size"], serde_json::json!([28, 28]));
    assert_eq!(pre["images"]["channels"], 1);
    let mean = pre["images"]["mean"][0].as_f64().unwrap();
    // MNIST's pixel mean is about 0.13 of full scale.
    assert!((0.1..0.16).contains(&mean), "mean {mean}");
    assert_eq!(
        pre["target"]["names"],
        serde_json::json!(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    );
    // `kiln predict` on a folder: a row per file, with its path, in path order.
    let folder = pngs.join("test/7");
    let out = sb.path().join("preds.csv");
    let o = sb.kiln(&[
        "predict",
        "digits-png",
        "--input",
        folder.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("path,prediction,p_0,"));
    let rows: Vec<&str> = lines.collect();
    let files = std::fs::read_dir(&folder).unwrap().count();
    assert_eq!(rows.len(), files);
    let sevens = rows
        .iter()
        .filter(|r| r.split(',').nth(1) == Some("7"))
        .count();
    assert!(sevens * 2 > rows.len(), "{sevens} of {} sevens", rows.len());
    assert!(rows[0].starts_with(folder.to_str().unwrap()), "{}", rows[0]);
    // A CSV listing files (relative to its folder) predicts them too.
    let list = folder.join("list.csv");
    let names: Vec<String> = rows
        .iter()
        .take(3)
        .map(|r| {
            let p = PathBuf::from(r.split(',').next().unwrap());
            p.file_name().unwrap().to_str().unwrap().to_string()
        })
        .collect();
    std::fs::write(&list, format!("path\n{}\n", names.join("\n"))).unwrap();
    let o = sb.kiln(&[
        "predict",
        "digits-png",
        "--input",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let listed = std::fs::read_to_string(&out).unwrap();
    // The same files and classes (probabilities to float rounding: another batch size).
    let fields = |r: &str| -> (String, String, Vec<f64>) {
        let f: Vec<&str> = r.split(',').collect();
        (
            f[0].into(),
            f[1].into(),
            f[2..].iter().map(|v| v.parse().unwrap()).collect(),
        )
    };
    let listed: Vec<_> = listed.lines().skip(1).map(fields).collect();
    assert_eq!(listed.len(), 3);
    for (a, b) in listed.iter().zip(rows.iter().map(|r| fields(r))) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert!(
            a.2.iter().zip(&b.2).all(|(p, q)| (p - q).abs() < 1e-5),
            "{a:?} vs {b:?}"
        );
    }
    std::fs::remove_file(&list).unwrap();
    // Evaluating the same model on the same folder gives the training run's test metrics,
    // also after a file was rewritten with the same bytes (a new modification time, as a copy
    // on another machine has); a changed folder is refused.
    let same = std::fs::read_dir(pngs.join("test/4"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&same, std::fs::read(&same).unwrap()).unwrap();
    let earlier = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&same)
        .unwrap()
        .set_modified(earlier)
        .unwrap();
    let o = sb.kiln(&["eval", "digits-png", "--split", "test", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(
        json(&o)["metrics"]["accuracy"],
        run["metrics"]["test"]["accuracy"]
    );
    std::fs::remove_file(
        std::fs::read_dir(pngs.join("test/3"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let o = sb.kiln(&["eval", "digits-png", "--split", "test"]);
    assert_ne!(o.status.code(), Some(0));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(
        lines[0].contains("changed since") && lines[0].contains("1 removed (test/3/"),
        "{}",
        lines[0]
    );
    // The index read is saved with the run and its model version: a line per file.
    let version = sb.registry().join("models/digits-png/v1");
    for dir in [&dir, &version] {
        let index = std::fs::read_to_string(dir.join("image_index.tsv")).unwrap();
        assert!(index.starts_with("split\tpath\tbytes\tmodified\tlabel\tsample\n"));
        assert_eq!(index.lines().count(), 1 + 1500 + 1500, "{}", dir.display());
    }
}

/// One clear error line, naming the file or folder, for each kind of broken data; nothing is
/// written to the registry.
#[test]
fn broken_files_and_folders_get_one_clear_error_each() {
    let sb = Sandbox::new();
    let pngs = mnist_png(&sb, 200);
    let train = pngs.join("train");
    let cfg = config(&sb, &pngs, CNN, 1, "");
    let c = cfg.to_str().unwrap();
    let fails_naming = |what: &str, needle: &str| {
        let o = sb.kiln(&["train", c, "--smoke"]);
        assert_ne!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{what}: {}", stderr(&o));
        assert!(lines[0].contains(needle), "{what}: {}", lines[0]);
        assert!(!stderr(&o).contains("panicked"), "{what}: {}", stderr(&o));
        assert!(no_runs(&sb), "{what}: a run was started");
    };
    // A text file named .jpg.
    let fake = train.join("4/notes.jpg");
    std::fs::write(&fake, "these are not pixels\n").unwrap();
    fails_naming("a text file named .jpg", "notes.jpg: not an image");
    // Skipping such files trains, and the run record counts them: the text file, and a PNG
    // whose header reads but whose pixels do not (skip mode decodes every file).
    let first = std::fs::read_dir(train.join("2"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let whole = std::fs::read(&first).unwrap();
    let cut = train.join("2/cut.png");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let skip = sb.write(
        "skip.toml",
        &std::fs::read_to_string(&cfg).unwrap().replace(
            "image_size = [28, 28]",
            "image_size = [28, 28]\nbad_images = \"skip\"",
        ),
    );
    let o = sb.kiln(&["train", skip.to_str().unwrap(), "--smoke", "--json"]);
    assert_exit(&o, 0);
    let dir = PathBuf::from(json(&o)["run_dir"].as_str().unwrap());
    let info = read_json(&dir.join("run.json"));
    assert_eq!(
        info["skipped_files"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );
    std::fs::remove_dir_all(sb.registry()).unwrap();
    std::fs::remove_file(&fake).unwrap();
    std::fs::remove_file(&cut).unwrap();
    // A test file cut short stops the run before training: no run is left.
    let held_out = std::fs::read_dir(pngs.join("test/1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kept = std::fs::read(&held_out).unwrap();
    std::fs::write(&held_out, &kept[..kept.len() / 2]).unwrap();
    fails_naming("a test file cut short", "cannot decode the image");
    std::fs::write(&held_out, &kept).unwrap();
    // A PNG cut short: its header reads, its pixels do not.
    let victim = std::fs::read_dir(train.join("2"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let o = sb.kiln(&["train", c, "--set", "train.epochs=1", "--quiet"]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(
        lines[0].contains(&name) && lines[0].contains("cannot decode"),
        "{}",
        lines[0]
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_exit(&sb.kiln(&["registry", "verify"]), 0);
    std::fs::write(&victim, &bytes).unwrap();
    // An empty class folder.
    std::fs::create_dir(train.join("x")).unwrap();
    fails_naming(
        "an empty class folder",
        "class folder \"x\" holds no image files",
    );
    std::fs::remove_dir(train.join("x")).unwrap();
    // One class only.
    let single = sb.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::rename(train.join("5"), single.join("5")).unwrap();
    let one = sb.write(
        "one.toml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(train.to_str().unwrap(), single.to_str().unwrap()),
    );
    let o = sb.kiln(&["train", one.to_str().unwrap(), "--smoke"]);
    assert_ne!(o.status.code(), Some(0));
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stderr(&o));
    assert!(lines[0].contains("at least 2 classes"), "{}", lines[0]);
}

/// `kiln train` killed (SIGKILL) after a checkpoint, then resumed, ends with the weights of an
/// uninterrupted run: the augmentation of every example is a function of (seed, epoch, index).
#[test]
fn resume_after_sigkill_is_bit_identical_with_augmentation() {
    let sb = Sandbox::new();
    let pngs = mnist_png(&sb, 400);
    let cfg = config(
        &sb,
        &pngs,
        "kind = \"resnet\"\nwidths = [4, 8]\ndepths = [1, 1]",
        4,
        &format!("{AUGMENT}[runtime]\nthreads = 1\nworkers = 2\n"),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "log_every = 5",
        "log_every = 5\ncheckpoint_every = 3\nkeep_last = 2",
    );
    let cfg = sb.write("png.toml", &text);
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["train", c, "--json", "--quiet"]);
    assert_exit(&o, 0);
    let full = json(&o);
    let want = weights_sha(&full);

    let other = Sandbox::new();
    let mut child = other.command(&["train", c, "--quiet"]).spawn().unwrap();
    let run_dir = wait_for_checkpoint(&other, &mut child, None);
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let o = other.kiln(&["train", "--resume", &id, "--json", "--quiet"]);
    assert_exit(&o, 0);
    let resumed = json(&o);
    assert_eq!(resumed["steps"], full["steps"]);
    assert_eq!(
        weights_sha(&resumed),
        want,
        "resumed weights differ from the uninterrupted run's"
    );
    // And augmentation is on: without it the weights differ.
    let plain = sb.write("plain.toml", &text.replace(AUGMENT, ""));
    let o = sb.kiln(&["train", plain.to_str().unwrap(), "--json", "--quiet"]);
    assert_exit(&o, 0);
    assert_ne!(weights_sha(&json(&o)), want, "augmentation changed nothing");
}

/// Two ranks under `mpirun`, each with half of every global batch, train the weights one
/// process trains, with augmentation on.
#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn two_ranks_train_what_one_process_trains_with_augmentation() {
    let sb = Sandbox::new();
    let pngs = mnist_png(&sb, 300);
    let cfg = config(
        &sb,
        &pngs,
        CNN,
        2,
        &format!("{AUGMENT}[runtime]\nthreads = 1\n"),
    );
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["train", c, "--json", "--quiet"]);
    assert_exit(&o, 0);
    let one = PathBuf::from(json(&o)["run_dir"].as_str().unwrap()).join("final/model.safetensors");

    let two = Sandbox::new();
    let mut job = Command::new("mpirun");
    job.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", c, "--set", "train.batch_size=16", "--quiet"])
        .current_dir(root())
        .env("KILN_REGISTRY", two.registry())
        .env_remove("BURN_DEVICE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = wait_with_deadline(
        job.spawn().expect("mpirun starts"),
        Duration::from_secs(300),
        "mpirun",
    );
    assert_exit(&out, 0);
    eprintln!("two ranks: {:?}", started.elapsed());
    let run = std::fs::read_dir(two.registry().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let diff = max_abs_diff(
        &tensors_f32(&one),
        &tensors_f32(&run.join("final/model.safetensors")),
    );
    eprintln!("max abs difference, 1 process vs 2 ranks: {diff:e}");
    assert!(diff <= 1e-4, "weights differ by {diff}");
}

/// The residual network exports with its preprocessing in the graph; onnxruntime, given the
/// PNG files' pixels as Pillow reads them, gives `kiln predict`'s probabilities, at the stored
/// size and resized.
#[test]
fn the_exported_resnet_resizes_and_normalises_in_onnxruntime_as_kiln_does() {
    let Some(python) = python_with("onnxruntime") else {
        return;
    };
    let sb = Sandbox::new();
    let pngs = mnist_png(&sb, 300);
    // An MLP reads the same files as rows of pixels: its graph takes images too.
    let mlp = config(&sb, &pngs, "kind = \"mlp\"\nhidden = [16]", 1, "");
    assert_exit(&sb.kiln(&["train", mlp.to_str().unwrap(), "--quiet"]), 0);
    let mlp_onnx = sb.path().join("mlp.onnx");
    let o = sb.kiln(&["export", "digits-png", "-o", mlp_onnx.to_str().unwrap()]);
    assert_exit(&o, 0);
    let cfg = config(
        &sb,
        &pngs,
        "kind = \"resnet\"\nwidths = [8, 16]\ndepths = [1, 1]",
        1,
        "",
    );
    assert_exit(&sb.kiln(&["train", cfg.to_str().unwrap(), "--quiet"]), 0);
    let onnx = sb.path().join("resnet.onnx");
    let o = sb.kiln(&["export", "digits-png/v2", "-o", onnx.to_str().unwrap()]);
    assert_exit(&o, 0);
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(said.contains("0 top-1 disagreements"), "{said}");
    // Files at the model's size, copies scaled by Pillow to other sizes, and RGB copies.
    let folder = sb.path().join("inputs");
    let o = Command::new(&python)
        .arg(root().join("tests/onnx_images.py"))
        .arg("prepare")
        .arg(pngs.join("test"))
        .arg(&folder)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let preds = sb.path().join("preds.csv");
    let o = sb.kiln(&[
        "predict",
        "digits-png/v2",
        "--input",
        folder.to_str().unwrap(),
        "-o",
        preds.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let o = Command::new(&python)
        .arg(root().join("tests/onnx_images.py"))
        .arg("compare")
        .arg(&onnx)
        .arg(&preds)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(&o);
    eprintln!("{report}");
    assert!(report["files"].as_u64().unwrap() >= 40, "{report}");
    assert!(report["max_abs"].as_f64().unwrap() < 1e-4, "{report}");
    assert_eq!(report["argmax_disagreements"], 0, "{report}");
}

/// JPEG photographs decode in colour as Pillow decodes them: the per-channel means kiln fits on
/// scikit-learn's two sample photographs match Pillow's.
#[test]
fn jpeg_photographs_decode_in_colour_as_pillow_reads_them() {
    let Some(python) = python_with("sklearn") else {
        return;
    };
    let o = Command::new(&python)
        .args(["-c", "import sklearn.datasets as d, os; print(os.path.join(os.path.dirname(d.__file__), 'images'))"])
        .output()
        .unwrap();
    let images = PathBuf::from(stdout(&o).trim());
    let sb = Sandbox::new();
    let csv = sb.path().join("photos.csv");
    std::fs::copy(images.join("china.jpg"), sb.path().join("china.jpg")).unwrap();
    std::fs::copy(images.join("flower.jpg"), sb.path().join("flower.jpg")).unwrap();
    std::fs::write(&csv, "path,label\nchina.jpg,building\nflower.jpg,plant\n").unwrap();
    let cfg = sb.write(
        "photos.toml",
        &format!(
            "name = \"photos\"\n[data]\nformat = \"image_csv\"\npath = \"{}\"\n[data.split]\nvalid = 0\ntest = 0\nstratify = false\n[model]\nkind = \"resnet\"\nwidths = [4]\ndepths = [1]\n[train]\nepochs = 1\nbatch_size = 2\n",
            csv.display()
        ),
    );
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--json", "--quiet"]);
    assert_exit(&o, 0);
    let dir = PathBuf::from(json(&o)["run_dir"].as_str().unwrap());
    let pre = read_json(&dir.join("preprocess.json"));
    assert_eq!(
        pre["images"]["channels"], 3,
        "photographs are read in colour"
    );
    assert_eq!(pre["images"]["size"], serde_json::json!([427, 640]));
    let kiln: Vec<f64> = (0..3)
        .map(|c| pre["images"]["mean"][c].as_f64().unwrap())
        .collect();
    let o = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import numpy as np; from PIL import Image; x = np.concatenate([np.asarray(Image.open(p).convert('RGB'), dtype=np.float64).reshape(-1, 3) for p in ['{0}/china.jpg', '{0}/flower.jpg']]) / 255; print(' '.join(map(str, x.mean(0))))",
            sb.path().display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pillow: Vec<f64> = stdout(&o)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    eprintln!("channel means: kiln {kiln:?}, Pillow {pillow:?}");
    for c in 0..3 {
        assert!(
            (kiln[c] - pillow[c]).abs() < 2e-3,
            "channel {c}: kiln {kiln:?}, Pillow {pillow:?}"
        );
    }
    assert!(
        kiln[0] != kiln[1] && kiln[1] != kiln[2],
        "three distinct channels: {kiln:?}"
    );
}

/// A named pipe where kiln expects a file (an image in a class folder, a CSV, the config
/// itself) is one line of error, at once: nothing opens a file that could block forever.
#[test]
fn a_named_pipe_among_the_data_is_refused_and_never_hangs() {
    let sb = Sandbox::new();
    let fifo = |path: &Path| {
        let o = Command::new("mkfifo").arg(path).output().unwrap();
        assert!(o.status.success(), "mkfifo: {}", stderr(&o));
    };
    let run = |args: &[&str], what: &str| {
        let child = sb
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_with_deadline(child, Duration::from_secs(60), what);
        assert!(!o.status.success(), "{what}: {}", stdout(&o));
        let e = error_lines(&o);
        assert_eq!(e.len(), 1, "{what}: {e:?}");
        assert!(e[0].contains("not a regular file"), "{what}: {e:?}");
        assert!(!stderr(&o).contains("panicked"), "{what}");
        e[0].clone()
    };
    let root = mnist_png(&sb, 40);
    fifo(&root.join("train/3/zz-pipe.png"));
    let cfg = config(&sb, &root, CNN, 1, "");
    let e = run(
        &["train", cfg.to_str().unwrap(), "--quiet"],
        "a pipe among images",
    );
    assert!(e.contains("zz-pipe.png"), "{e}");

    let csv = sb.path().join("table.csv");
    fifo(&csv);
    let e = run(
        &[
            "train",
            "configs/breast_cancer.toml",
            "--quiet",
            "--set",
            &format!("data.path={:?}", csv.to_str().unwrap()),
        ],
        "a pipe as the data file",
    );
    assert!(e.contains("table.csv"), "{e}");

    let toml = sb.path().join("pipe.toml");
    fifo(&toml);
    let e = run(&["train", toml.to_str().unwrap()], "a pipe as the config");
    assert!(e.contains("pipe.toml"), "{e}");
    assert!(no_runs(&sb), "a refused input left a run behind");
}

/// A real PNG of `side` x `side` grey pixels, all black: a few hundred kB that decode to
/// `side`² bytes (and four times that as floats). Written row by row, never held whole.
fn black_png(path: &Path, side: u32) {
    use std::io::Write;
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; side as usize + 1]; // filter byte 0, then the pixels
    for _ in 0..side {
        z.write_all(&row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

#[test]
fn a_decompression_bomb_is_refused_by_its_header_before_a_pixel_is_decoded() {
    let sb = Sandbox::new();
    let root = mnist_png(&sb, 40);
    // 20000 x 20000: 400 MB of pixels, 1.6 GB as floats, from a file of under a megabyte.
    let bomb = root.join("train/3/bomb.png");
    black_png(&bomb, 20_000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let cfg = config(&sb, &root, CNN, 1, "");
    let run = |cfg: &Path, what: &str| {
        let child = sb
            .command(&["train", cfg.to_str().unwrap(), "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // The peak resident memory, read while it runs.
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watch = {
            let peak = std::sync::Arc::clone(&peak);
            std::thread::spawn(move || {
                while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let o = wait_with_deadline(child, Duration::from_secs(120), what);
        watch.join().unwrap();
        let kib = peak.load(std::sync::atomic::Ordering::Relaxed);
        assert!(kib < 400 * 1024, "{what}: {kib} KiB resident at its peak");
        o
    };
    let o = run(&cfg, "a bomb among the images");
    // Too large for the machine, as a config asking for too much: exit 2.
    assert_exit(&o, 2);
    let e = error_lines(&o);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("bomb.png: 20000x20000 pixels, over the limit"),
        "{e:?}"
    );
    assert!(no_runs(&sb), "a refused input left a run behind");
    // With `bad_images = "skip"` the bomb is left out like any unreadable file, and the rest
    // trains.
    let skip = sb.write(
        "skip.toml",
        &std::fs::read_to_string(&cfg).unwrap().replace(
            "image_size = [28, 28]",
            "image_size = [28, 28]\nbad_images = \"skip\"",
        ),
    );
    let o = run(&skip, "a bomb skipped");
    assert_exit(&o, 0);
}
