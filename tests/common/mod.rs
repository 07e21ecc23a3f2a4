//! Helpers shared by the end-to-end tests: a sandbox registry, the `kiln` binary, outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary folder that also serves as the registry of the commands run in it.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry(&self) -> PathBuf {
        self.path().join("registry")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write a test file");
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(args)
            .current_dir(root())
            .env("KILN_REGISTRY", self.registry());
        c
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("kiln runs")
    }
}

/// The newest `checkpoints/step-*` folder of a run.
pub fn newest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .max()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> Value {
    let out = stdout(o);
    let last = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr: {}", stderr(o)));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// A small digits config; `extra` is appended (later keys of a table must come in its own
/// section, so `extra` usually holds whole tables).
pub fn digits_config(sb: &Sandbox, extra: &str) -> PathBuf {
    digits_config_with(sb, "", extra)
}

/// As [`digits_config`], with `model` lines added to the `[model]` table (`hidden = [32]`
/// unless they set `hidden`).
pub fn digits_config_with(sb: &Sandbox, model: &str, extra: &str) -> PathBuf {
    let model = if model.contains("hidden =") {
        model.to_string()
    } else {
        format!("hidden = [32]{model}")
    };
    let text = format!(
        r#"
name = "tiny"
seed = 7
[data]
path = "{}/data/sklearn/digits.csv.gz"
[model]
{model}
{extra}
"#,
        root().display()
    );
    sb.write("tiny.toml", &text)
}

/// A Python that can import `module`: `$KILN_TEST_PYTHON` or `python3`. `None` (the caller says
/// the test was skipped) only outside CI: `.ci/run` installs the packages, and there a missing
/// one fails the test.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the Python package {module}: set KILN_TEST_PYTHON to a Python with it"
    );
    eprintln!(
        "SKIPPED: no Python with the {module} package ({python}); set KILN_TEST_PYTHON to run this test"
    );
    None
}
