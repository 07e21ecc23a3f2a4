//! CSV edge cases, through the same path `kiln train` takes: config text -> validate -> prepare.

use std::path::{Path, PathBuf};

use kiln_trainer::config::{self, RunConfig};
use kiln_trainer::data::{self, Prepared, Targets};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config over `train.csv` (and `test.csv` when present) in `dir`, with extra `[data]` lines.
fn config(dir: &Path, data_lines: &str) -> Result<RunConfig, config::ConfigError> {
    let test = dir.join("test.csv");
    let test_line = if test.exists() {
        format!("test_path = {:?}\n", test.display().to_string())
    } else {
        String::new()
    };
    let text = format!(
        "[data]\npath = {:?}\n{test_line}header = true\n{data_lines}\n[data.split]\nvalid = 0.25\ntest = {}\nstratify = false\n",
        dir.join("train.csv").display().to_string(),
        if test.exists() { 0.0 } else { 0.25 },
    );
    let (file, _) = config::parse("test.toml", &text, &[])?;
    config::validate(file, "test.toml", "t")
}

fn prepare(dir: &Path, data_lines: &str) -> Result<Prepared, String> {
    let cfg = config(dir, data_lines).map_err(|e| e.to_string())?;
    data::prepare(&cfg.data, None).map_err(|e| e.to_string())
}

const CLEAN: &str = "x,color,y\n1.0,red,0\n2.0,blue,1\n3.0,red,0\n4.0,green,1\n5.0,blue,0\n6.0,red,1\n7.0,green,0\n8.0,blue,1\n";

#[test]
fn categories_are_one_hot_and_numbers_standardised() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.csv", CLEAN);
    let p = prepare(dir.path(), "label = \"y\"").unwrap();
    // x, then color one-hot over the training split's categories.
    let cats = match &p.preprocessor.columns[1] {
        data::preprocess::Column::Categorical { categories, .. } => categories.clone(),
        c => panic!("color should be categorical: {c:?}"),
    };
    assert_eq!(p.train.table().unwrap().d, 1 + cats.len());
    for row in p
        .train
        .table()
        .unwrap()
        .x
        .chunks(p.train.table().unwrap().d)
    {
        assert_eq!(
            row[1..].iter().filter(|&&v| v == 1.0).count(),
            1,
            "one hot per row: {row:?}"
        );
    }
    let xs: Vec<f32> = p
        .train
        .table()
        .unwrap()
        .x
        .chunks(p.train.table().unwrap().d)
        .map(|r| r[0])
        .collect();
    let mean = xs.iter().sum::<f32>() / xs.len() as f32;
    assert!(
        mean.abs() < 1e-6,
        "standardised on the training split: mean {mean}"
    );
    assert_eq!(
        p.train.table().unwrap().n + p.valid.table().unwrap().n + p.test.table().unwrap().n,
        8
    );
}

#[test]
fn missing_values_are_rejected_with_row_and_column_or_imputed() {
    let dir = tempfile::tempdir().unwrap();
    let text = "x,color,y\n1.0,red,0\n,blue,1\n3.0,?,0\n4.0,green,1\nNA,blue,0\n6.0,red,1\n7.0,green,0\n8.0,blue,1\n";
    let train = write(dir.path(), "train.csv", text);
    let err = prepare(dir.path(), "label = \"y\"").unwrap_err();
    assert!(err.starts_with(&format!("{}:", train.display())), "{err}");
    assert!(err.contains("missing value"), "{err}");
    assert!(
        err.contains("column `x`") || err.contains("column `color`"),
        "{err}"
    );
    assert!(
        err.contains(":3:") || err.contains(":4:") || err.contains(":6:"),
        "names the line: {err}"
    );

    let p = prepare(dir.path(), "label = \"y\"\nimpute = \"median\"").unwrap();
    assert!(
        p.train
            .table()
            .unwrap()
            .x
            .iter()
            .chain(&p.valid.table().unwrap().x)
            .chain(&p.test.table().unwrap().x)
            .all(|v| v.is_finite())
    );
    match &p.preprocessor.columns[0] {
        data::preprocess::Column::Numeric { fill: Some(f), .. } => assert!((1.0..=8.0).contains(f)),
        c => panic!("x is numeric with a fill: {c:?}"),
    }
    let p = prepare(
        dir.path(),
        "label = \"y\"\nimpute = \"constant\"\nimpute_value = -1.0",
    )
    .unwrap();
    match &p.preprocessor.columns[1] {
        data::preprocess::Column::Categorical {
            categories, fill, ..
        } => {
            assert_eq!(fill.as_deref(), Some("<missing>"));
            assert!(
                categories.windows(2).all(|w| w[0] < w[1]),
                "categories stay sorted: {categories:?}"
            );
        }
        c => panic!("{c:?}"),
    }
}

#[test]
fn statistics_come_from_the_training_split_only() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.csv", CLEAN);
    write(
        dir.path(),
        "test.csv",
        "x,color,y\n1000.0,red,0\n2000.0,blue,1\n",
    );
    let p = prepare(dir.path(), "label = \"y\"").unwrap();
    match &p.preprocessor.columns[0] {
        data::preprocess::Column::Numeric { mean, .. } => {
            assert!(*mean < 10.0, "test rows leaked into the mean: {mean}")
        }
        c => panic!("{c:?}"),
    }
    assert_eq!(p.test.table().unwrap().n, 2);
}

#[test]
fn an_unseen_category_in_the_test_file_encodes_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.csv", CLEAN);
    write(
        dir.path(),
        "test.csv",
        "x,color,y\n1.0,purple,0\n2.0,red,1\n",
    );
    let p = prepare(dir.path(), "label = \"y\"").unwrap();
    let first = &p.test.table().unwrap().x[..p.test.table().unwrap().d];
    assert!(
        first[1..].iter().all(|&v| v == 0.0),
        "purple was never seen: {first:?}"
    );
    assert_eq!(
        p.test.table().unwrap().x[p.test.table().unwrap().d + 1..2 * p.test.table().unwrap().d]
            .iter()
            .filter(|&&v| v == 1.0)
            .count(),
        1
    );
}

#[test]
fn a_row_with_the_wrong_number_of_fields_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(
        dir.path(),
        "train.csv",
        "x,color,y\n1.0,red,0\n2.0,blue\n3.0,red,0\n",
    );
    let err = prepare(dir.path(), "label = \"y\"").unwrap_err();
    assert_eq!(
        err,
        format!("{}:3: expected 3 fields, found 2", train.display())
    );
}

#[test]
fn an_empty_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(dir.path(), "train.csv", "");
    let err = config(dir.path(), "").unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}: no data rows", train.display())),
        "{err}"
    );
    write(dir.path(), "train.csv", "x,y\n");
    let err = config(dir.path(), "").unwrap_err().to_string();
    assert!(
        err.contains("no data rows"),
        "a header alone has no rows: {err}"
    );
}

#[test]
fn text_in_a_numeric_column_is_named_with_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(
        dir.path(),
        "train.csv",
        "x,y\n1.0,0\n2.0,1\n3..0,0\n4.0,1\n5.0,0\n6.0,1\n7.0,0\n8.0,1\n",
    );
    let err = prepare(dir.path(), "").unwrap_err();
    assert!(
        err.starts_with(&format!(
            "{}:4: column `x`: \"3..0\" is not a number",
            train.display()
        )),
        "{err}"
    );
}

#[test]
fn label_column_by_name_index_and_typo() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.csv", CLEAN);
    let by_index = prepare(dir.path(), "label = 2").unwrap();
    let by_name = prepare(dir.path(), "label = \"y\"").unwrap();
    assert_eq!(by_index.train, by_name.train);
    assert!(matches!(
        by_name.train.table().unwrap().y,
        Targets::Classes(_)
    ));
    let err = config(dir.path(), "label = \"yy\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`data.label` = \"yy\": no such column; did you mean \"y\"?"),
        "{err}"
    );
    let err = config(dir.path(), "label = 7").unwrap_err().to_string();
    assert!(
        err.contains("`data.label` = 7: the file has 3 columns"),
        "{err}"
    );
}

#[test]
fn gzip_and_tsv_read_like_csv() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let tsv = CLEAN.replace(',', "\t");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tsv.as_bytes()).unwrap();
    std::fs::write(dir.path().join("train.csv"), gz.finish().unwrap()).unwrap();
    let p = prepare(dir.path(), "label = \"y\"\ndelimiter = \"\\t\"").unwrap();
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "train.csv", CLEAN);
    assert_eq!(
        p.train,
        prepare(plain.path(), "label = \"y\"").unwrap().train
    );
}

#[test]
fn stratified_split_keeps_class_proportions() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("x,y\n");
    for i in 0..100 {
        text.push_str(&format!("{i},{}\n", if i < 80 { "a" } else { "b" }));
    }
    write(dir.path(), "train.csv", &text);
    let cfg = config(dir.path(), "").unwrap();
    let mut spec = cfg.data.clone();
    spec.stratify = true;
    let p = data::prepare(&spec, None).unwrap();
    let count_b = |t: &Targets| match t {
        Targets::Classes(v) => v.iter().filter(|&&c| c == 1).count(),
        _ => unreachable!(),
    };
    assert_eq!(
        (
            p.valid.table().unwrap().n,
            count_b(&p.valid.table().unwrap().y)
        ),
        (25, 5)
    );
    assert_eq!(
        (
            p.test.table().unwrap().n,
            count_b(&p.test.table().unwrap().y)
        ),
        (25, 5)
    );
    assert_eq!(
        (
            p.train.table().unwrap().n,
            count_b(&p.train.table().unwrap().y)
        ),
        (50, 10)
    );
}
