//! The image data set as the loader reads it ([`ImageSet`], a [`Source`]): the split's files,
//! decoded on the loader's threads, normalised with the statistics fitted on the training
//! images, augmented in training; and the files `kiln predict` reads.

use super::*;

/// Per-channel mean and deviation of up to [`NORM_SAMPLE`] evenly spaced `files`.
pub fn fit_norm(
    files: &[PathBuf],
    channels: usize,
    size: [usize; 2],
) -> Result<(Vec<f64>, Vec<f64>), DataError> {
    let n = files.len();
    let k = n.min(NORM_SAMPLE);
    let sample: Vec<&PathBuf> = (0..k).map(|i| &files[i * n / k]).collect();
    let sums = sample
        .par_iter()
        .map(|p| {
            let x = read_resized(p, channels, size)?;
            let plane = size[0] * size[1];
            Ok(x.chunks(plane)
                .map(|v| {
                    v.iter().fold((0.0f64, 0.0f64), |(s, q), &a| {
                        (s + a as f64, q + (a as f64) * (a as f64))
                    })
                })
                .collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let count = (k * size[0] * size[1]) as f64;
    let mut mean = vec![0.0; channels];
    let mut std = vec![0.0; channels];
    for c in 0..channels {
        let (s, q) = sums
            .iter()
            .fold((0.0, 0.0), |(s, q), v| (s + v[c].0, q + v[c].1));
        let m = s / count;
        let var = (q / count - m * m).max(0.0);
        mean[c] = m;
        std[c] = if var.sqrt() > 1e-6 { var.sqrt() } else { 1.0 };
    }
    Ok((mean, std))
}

/// Images of one split, decoded when a batch asks for them.
#[derive(Debug, Clone)]
pub struct ImageSet {
    files: Arc<Vec<PathBuf>>,
    y: Targets,
    prep: ImagePrep,
    /// Training only.
    augment: Option<Augment>,
}

impl PartialEq for ImageSet {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.y == other.y && self.prep == other.prep
    }
}

impl ImageSet {
    pub fn new(files: Vec<PathBuf>, y: Targets, prep: ImagePrep, augment: Option<Augment>) -> Self {
        Self {
            files: Arc::new(files),
            y,
            prep,
            augment: augment.filter(|a| !a.is_identity()),
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Decodes every file once (in parallel): a corrupt file is named now, not when an
    /// evaluation reaches it.
    pub fn verify(&self) -> Result<(), DataError> {
        let c = self.prep.channels;
        self.files
            .par_iter()
            .try_for_each(|f| decode(f, c).map(|_| ()))
    }

    pub fn head(&self, n: usize) -> ImageSet {
        let n = n.min(self.files.len());
        ImageSet {
            files: Arc::new(self.files[..n].to_vec()),
            y: self.y.select(&(0..n).collect::<Vec<_>>()),
            prep: self.prep.clone(),
            augment: self.augment.clone(),
        }
    }

    /// Every image decoded and normalised, in memory (no augmentation): for reports that
    /// need the whole split's pixels.
    pub fn to_dataset(&self) -> Result<crate::data::Dataset, DataError> {
        let idx: Vec<usize> = (0..self.files.len()).collect();
        let b = self.fetch(&idx, None)?;
        let Features::Dense { x, width } = b.x else {
            unreachable!("images are dense")
        };
        Ok(crate::data::Dataset {
            x,
            y: b.y,
            n: idx.len(),
            d: width,
        })
    }
}

impl Source for ImageSet {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn fetch(&self, idx: &[usize], pass: Option<Pass>) -> Result<Batch, DataError> {
        let [c, h, w] = self.prep.shape();
        let mut x = Vec::with_capacity(idx.len() * c * h * w);
        for &i in idx {
            let mut img = read_resized(&self.files[i], c, self.prep.size)?;
            if let (Some(a), Some(p)) = (&self.augment, pass) {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    p.seed
                        ^ (p.epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                );
                img = augment(&img, c, h, w, a, &mut rng);
            }
            self.prep.normalise(&mut img);
            x.extend(img);
        }
        Ok(Batch {
            x: Features::Dense {
                x,
                width: c * h * w,
            },
            y: self.y.select(idx),
            len: idx.len(),
        })
    }
}

/// What [`crate::data::prepare`] needs of an image data set: the training index (and the test one),
/// as tables of paths and labels for the split and the label encoding.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub main: Index,
    pub test: Option<Index>,
}

impl Indexed {
    /// The index of the spec's files, read once per process: training, its fingerprint and an
    /// evaluation's comparison see the same listing (and `bad_images = "skip"` decodes every
    /// file once, not once per reader).
    pub fn read(spec: &DataSpec) -> Result<Indexed, DataError> {
        use std::sync::{Mutex, OnceLock};
        type Cache = Mutex<std::collections::HashMap<String, Indexed>>;
        static READ: OnceLock<Cache> = OnceLock::new();
        let key = format!(
            "{:?}|{}|{:?}|{}|{:?}|{:?}",
            spec.format,
            spec.path.display(),
            spec.test_path,
            spec.path_column,
            spec.label,
            spec.bad_images
        );
        let cache = READ.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit.clone());
        }
        let read = Self::read_uncached(spec)?;
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, read.clone());
        Ok(read)
    }

    fn read_uncached(spec: &DataSpec) -> Result<Indexed, DataError> {
        let read = |p: &Path| match spec.format {
            crate::data::DataFormat::ImageCsv => index_csv(spec, p, spec.bad_images),
            _ => index_folder(p, spec.bad_images),
        };
        let main = read(&spec.path)?;
        let test = spec.test_path.as_deref().map(read).transpose()?;
        Ok(Indexed { main, test })
    }

    /// The index as saved with a run: `split, path, bytes, modified (s.ns), label, sample`,
    /// tab-separated, a line per file.
    pub fn to_tsv(&self) -> String {
        let mut s = String::from("split\tpath\tbytes\tmodified\tlabel\tsample\n");
        let parts = [("train", Some(&self.main)), ("test", self.test.as_ref())];
        for (split, index) in parts {
            for e in index.map_or(&[][..], |i| &i.entries[..]) {
                s.push_str(&format!(
                    "{split}\t{}\t{}\t{}.{:09}\t{}\t{}\n",
                    e.path, e.bytes, e.modified.0, e.modified.1, e.label, e.sample
                ));
            }
        }
        s
    }

    /// What changed from a saved index ([`Indexed::to_tsv`]) to this one: counts of files
    /// added, removed and rewritten, and the first few of each; `None` when nothing did.
    pub fn changes_since(&self, saved: &str) -> Option<String> {
        use std::collections::BTreeMap;
        let key = |split: &str, path: &str| format!("{split}/{path}");
        let mut was: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        for line in saved.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 6 {
                was.insert(key(f[0], f[1]), (f[2].into(), f[4].into(), f[5].into()));
            }
        }
        let mut now: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        let parts = [("train", Some(&self.main)), ("test", self.test.as_ref())];
        for (split, index) in parts {
            for e in index.map_or(&[][..], |i| &i.entries[..]) {
                now.insert(
                    key(split, &e.path),
                    (e.bytes.to_string(), e.label.clone(), e.sample.clone()),
                );
            }
        }
        let added: Vec<&String> = now.keys().filter(|k| !was.contains_key(*k)).collect();
        let removed: Vec<&String> = was.keys().filter(|k| !now.contains_key(*k)).collect();
        let changed: Vec<&String> = now
            .iter()
            .filter(|(k, v)| was.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .collect();
        let part = |what: &str, v: &[&String]| -> Option<String> {
            (!v.is_empty()).then(|| {
                let first: Vec<&str> = v.iter().take(3).map(|s| s.as_str()).collect();
                let more = if v.len() > 3 { ", ..." } else { "" };
                format!("{} {what} ({}{more})", v.len(), first.join(", "))
            })
        };
        let parts: Vec<String> = [
            part("added", &added),
            part("removed", &removed),
            part("rewritten or relabelled", &changed),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn raw(&self) -> RawData {
        RawData {
            main: self.main.table(),
            test: self.test.as_ref().map(Index::table),
        }
    }
}

/// The splits of an image data set, and its preprocessing (fitted on the training images,
/// unless given).
pub fn prepare(
    spec: &DataSpec,
    fitted: Option<&crate::data::Preprocessor>,
) -> Result<crate::data::Prepared, DataError> {
    let indexed = Indexed::read(spec)?;
    let raw = indexed.raw();
    let parts = crate::data::split::split(&raw, spec)?;
    let files = indexed.main.files();
    let pre = match fitted {
        Some(p) => p.clone(),
        None => {
            let target = crate::data::preprocess::fit_target(&raw, &parts.train, spec)?;
            let train: Vec<PathBuf> = parts.train.iter().map(|&i| files[i].clone()).collect();
            let first = train.first().ok_or_else(|| {
                format_error(&spec.path, "no training images (the split left none)")
            })?;
            let size = match spec.image_size {
                Some(s) => s,
                None => {
                    let (_, w, h) = header(first)?;
                    [h as usize, w as usize]
                }
            };
            // Colour when any of a sample of the training files is (a grey JPEG among
            // colour photographs does not make the model grey).
            let channels = match spec.channels {
                Some(c) => c,
                None => {
                    let k = train.len().min(64);
                    let mut c = 1;
                    for i in 0..k {
                        c = c.max(channels_of(&train[i * train.len() / k])?);
                    }
                    c
                }
            };
            let (mean, std) = fit_norm(&train, channels, size)?;
            crate::data::Preprocessor::for_images(
                ImagePrep {
                    size,
                    channels,
                    mean,
                    std,
                },
                target,
            )
        }
    };
    let prep = pre.images.clone().expect("an image preprocessor");
    let set = |t: &RawTable, files: &[PathBuf], rows: &[usize], augment: bool| {
        let y = pre.targets(t, rows)?;
        Ok::<_, DataError>(crate::data::Split::Images(ImageSet::new(
            rows.iter().map(|&i| files[i].clone()).collect(),
            y,
            prep.clone(),
            augment.then(|| spec.augment.clone()),
        )))
    };
    let test = match (&indexed.test, &raw.test) {
        (Some(index), Some(t)) => set(t, &index.files(), &(0..t.len()).collect::<Vec<_>>(), false)?,
        _ => set(&raw.main, &files, &parts.test, false)?,
    };
    Ok(crate::data::Prepared {
        train: set(&raw.main, &files, &parts.train, true)?,
        valid: set(&raw.main, &files, &parts.valid, false)?,
        test,
        preprocessor: pre,
        indexed: Some(indexed.clone()),
        skipped: indexed
            .main
            .skipped
            .iter()
            .chain(indexed.test.iter().flat_map(|t| &t.skipped))
            .cloned()
            .collect(),
    })
}

/// The image files a `kiln predict --input` names: one file, every image under a folder
/// (recursively, sorted by path), or the paths a CSV/TSV lists in its `data.path_column`
/// (relative to its folder; a label column may be there or not).
pub fn input_files(spec: &DataSpec, input: &Path) -> Result<Vec<PathBuf>, DataError> {
    let listed = input
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("tsv"));
    if listed && input.is_file() {
        let mut header_spec = spec.clone();
        header_spec.header = true;
        header_spec.skip_rows = 0;
        // The training CSV's delimiter for a listing like it, else by the file's extension.
        header_spec.delimiter = match (spec.format, input.extension().and_then(|e| e.to_str())) {
            (crate::data::DataFormat::ImageCsv, _) => spec.delimiter,
            (_, Some(e)) if e.eq_ignore_ascii_case("tsv") => Some(b'\t'),
            _ => Some(b','),
        };
        let cols = crate::data::table::read_columns(
            &header_spec,
            input,
            std::slice::from_ref(&spec.path_column),
        )?;
        let dir = input.parent().unwrap_or(Path::new("."));
        let files: Vec<PathBuf> = cols[0].iter().map(|p| dir.join(p)).collect();
        for f in &files {
            header(f)?;
        }
        return Ok(files);
    }
    if input.is_dir() {
        let files = image_files(input)?;
        if files.is_empty() {
            return Err(format_error(
                input,
                format!("no image files ({}) in this folder", EXTENSIONS.join(", ")),
            ));
        }
        Ok(files)
    } else {
        header(input)?;
        Ok(vec![input.to_path_buf()])
    }
}
