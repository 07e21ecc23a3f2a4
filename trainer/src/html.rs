//! `kiln report`: one self-contained HTML page with a run's curves and its confusion matrix (or
//! residual plot), drawn as inline SVG with `plotters`.

use crate::layout;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::data::SplitName;
use crate::eval::{EvalError, LoadedRun};
use crate::explain::ExplainError;
use crate::metrics::Metrics;
use crate::run;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 360;

/// A named series of `(step, value)` points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// `(split, metric) -> [(step, value)]`.
type Curves = BTreeMap<(String, String), Vec<(f64, f64)>>;

/// Every logged curve of a run's `metrics.jsonl`.
fn curves(run_dir: &Path) -> Result<Curves, run::RunError> {
    let path = run_dir.join(layout::METRICS_LOG);
    let text = std::fs::read_to_string(&path).map_err(run::io(&path))?;
    let mut out = Curves::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(split), Some(step)) = (v["split"].as_str(), v["step"].as_f64()) else {
            continue;
        };
        for (k, x) in v.as_object().into_iter().flatten() {
            if let (false, Some(x)) = (["split", "step", "epoch"].contains(&k.as_str()), x.as_f64())
            {
                out.entry((split.to_string(), k.clone()))
                    .or_default()
                    .push((step, x));
            }
        }
    }
    Ok(out)
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // A flat series (a constant learning rate) gets a band around its value.
    let pad = ((hi - lo) * 0.05)
        .max(hi.abs().max(lo.abs()) * 0.1)
        .max(1e-9);
    (lo - pad, hi + pad)
}

type XyChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// An SVG chart on `f64` axes: caption, axis descriptions and mesh, then whatever `draw` adds,
/// then a legend of the labelled series when `legend`.
fn xy_chart(
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    legend: bool,
    draw: impl FnOnce(&mut XyChart),
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
        else {
            return svg_error(title);
        };
        let _ = chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| {
                if (x1 - x0) > 20.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            })
            .draw();
        draw(&mut chart);
        if legend {
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

fn line_chart(title: &str, y_label: &str, series: &[Series]) -> String {
    let x = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let y = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    xy_chart(title, ("optimizer step", y_label), x, y, true, |chart| {
        for s in series {
            let style = ShapeStyle::from(&s.color).stroke_width(2);
            if let Ok(ann) = chart.draw_series(LineSeries::new(s.points.iter().copied(), style)) {
                let color = s.color;
                ann.label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
            if s.points.len() < 60 {
                let _ = chart.draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, s.color.filled())),
                );
            }
        }
    })
}

fn svg_error(title: &str) -> String {
    format!("<p>could not draw {title}</p>")
}

fn confusion_chart(title: &str, cm: &[Vec<usize>], names: &[String]) -> String {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let n = cm.len();
    let size = (WIDTH.min(140 + 44 * n as u32)).max(360);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (size, size)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        else {
            return svg_error(title);
        };
        // Row t (true class) is drawn at height n - 1 - t, so class 0 is on top.
        let name = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < n => names
                .get(if flip { n - 1 - i } else { *i })
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        let _ = chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n + 1)
            .y_labels(n + 1)
            .x_label_formatter(&|v| name(v, false))
            .y_label_formatter(&|v| name(v, true))
            .draw();
        let max = cm.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let cells = (0..n).flat_map(|t| (0..n).map(move |p| (t, p)));
        let _ = chart.draw_series(cells.clone().map(|(t, p)| {
            let shade = 1.0 - cm[t][p] as f64 / max;
            let c = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
            let (x0, x1) = (SegmentValue::Exact(p), SegmentValue::Exact(p + 1));
            let (y0, y1) = (SegmentValue::Exact(n - 1 - t), SegmentValue::Exact(n - t));
            Rectangle::new([(x0, y0), (x1, y1)], c.filled())
        }));
        let _ = chart.draw_series(cells.map(|(t, p)| {
            let color = if cm[t][p] as f64 > max / 2.0 {
                WHITE
            } else {
                BLACK
            };
            let style = ("sans-serif", 13)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Center));
            Text::new(
                cm[t][p].to_string(),
                (SegmentValue::CenterOf(p), SegmentValue::CenterOf(n - 1 - t)),
                style,
            )
        }));
        let _ = root.present();
    }
    svg
}

fn residual_chart(title: &str, pairs: &[(f64, f64)]) -> String {
    let (x0, x1) = range(pairs.iter().map(|p| p.0));
    let y = range(pairs.iter().map(|p| p.1 - p.0).chain([0.0]));
    xy_chart(
        title,
        ("predicted", "true - predicted"),
        (x0, x1),
        y,
        false,
        |chart| {
            let _ = chart.draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], &BLACK));
            let _ = chart.draw_series(
                pairs
                    .iter()
                    .map(|&(p, t)| Circle::new((p, t - p), 3, BLUE.mix(0.6).filled())),
            );
        },
    )
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The report's explanations: permutation importance on `split` (3 repeats; images: 500 rows,
/// 7-pixel patches) and, for images, Integrated Gradients maps of the split's first 4 images.
fn explanations_section(
    loaded: &LoadedRun,
    split: SplitName,
    body: &mut String,
) -> Result<(), ExplainError> {
    use crate::explain::reports::{self, ImportanceRequest, RowsRequest};
    body.push_str("<h2>Explanations</h2>");
    if crate::explain::check_explainable(loaded).is_err() {
        body.push_str("<p>Explanations cover table and image models.</p>");
        return Ok(());
    }
    if loaded.split(split).is_err() {
        body.push_str("<p>The run has no test or validation examples to explain.</p>");
        return Ok(());
    }
    let image = matches!(
        crate::explain::explained_input(loaded),
        kiln_models::InputShape::Images { .. }
    );
    let req = ImportanceRequest {
        split,
        metric: None,
        repeats: 3,
        seed: 0,
        patch: 7,
        max_samples: image.then_some(500),
    };
    let r = reports::importance(loaded, &req)?;
    let _ = write!(
        body,
        "<p>How much {} drops on the {} split ({} rows) when a {} is shuffled across rows (<code>kiln explain</code> for more repeats and per-example attributions).</p>",
        r.metric,
        reports::split_name(split),
        r.rows,
        if image {
            "7x7 patch of pixels"
        } else {
            "column"
        }
    );
    body.push_str(&importance_svg(&r, 30));
    if image {
        let rows = crate::explain::split_rows(loaded, split)?.n.min(4);
        let req = RowsRequest {
            split,
            rows: format!("0:{rows}"),
            method: None,
            class: None,
            ig: crate::explain::attribution::IgOptions::default(),
            budget: 2,
            background: 1,
            seed: 0,
        };
        body.push_str(&attributions_html(&reports::attributions(loaded, &req)?));
    }
    Ok(())
}

/// The report's fairness section: per-group metrics by `groups`, or how to ask for them.
fn fairness_section(
    loaded: &LoadedRun,
    split: SplitName,
    groups: &[String],
    body: &mut String,
) -> Result<(), ExplainError> {
    use crate::explain::reports::{self, FairnessRequest};
    if loaded.task.class_names().is_none() || crate::explain::check_explainable(loaded).is_err() {
        return Ok(());
    }
    body.push_str("<h2>Fairness</h2>");
    if loaded.split(split).is_err() {
        body.push_str("<p>The run has no test or validation examples to break down.</p>");
        return Ok(());
    }
    if loaded.task.class_names().is_some_and(|c| c.len() != 2) {
        let _ = write!(
            body,
            "<p>A classifier of several classes: <code>kiln fairness {} --group COLUMN --positive CLASS</code> names the favourable one.</p>",
            escape(&loaded.label)
        );
        return Ok(());
    }
    if groups.is_empty() {
        body.push_str("<p><code>kiln report RUN --group COLUMN</code> adds per-group metrics (any column of the data file, read by the model or not).</p>");
        return Ok(());
    }
    let req = FairnessRequest {
        split,
        columns: groups.to_vec(),
        positive: None,
        min_group: 30,
        limits: Default::default(),
    };
    body.push_str(&fairness_html(&reports::fairness(loaded, &req)?));
    Ok(())
}

/// Writes the report of the run in `run_dir` to `out`; `groups` are the columns of the
/// fairness section.
pub fn write_report(run_dir: &Path, out: &Path, groups: &[String]) -> Result<(), ExplainError> {
    let loaded = LoadedRun::open(run_dir)?;
    let info = loaded
        .info
        .as_ref()
        .expect("a model opened from its run folder has the run's record");
    let curves = curves(run_dir).map_err(EvalError::from)?;
    let mut body = String::new();
    summary_section(info, &mut body);
    curves_section(info, &curves, &mut body);
    let split = if !crate::data::Source::is_empty(&loaded.data.test) {
        SplitName::Test
    } else {
        SplitName::Valid
    };
    evaluation_section(&loaded, info, split, &mut body)?;
    explanations_section(&loaded, split, &mut body)?;
    fairness_section(&loaded, split, groups, &mut body)?;
    let config = std::fs::read_to_string(run_dir.join(layout::CONFIG)).unwrap_or_default();
    let _ = write!(body, "<h2>Config</h2><pre>{}</pre>", escape(&config));
    let html = page(&format!("kiln run {}", info.id), &body);
    run::write_atomic(out, html.as_bytes()).map_err(EvalError::Run)?;
    Ok(())
}

/// The report's heading (the run's id, model, status, steps, speed) and its table of final
/// metrics per split.
fn summary_section(info: &run::RunInfo, body: &mut String) {
    let _ = write!(
        body,
        "<h1>kiln run {}</h1><p>model <b>{}</b>, status <b>{:?}</b>, {} steps, {} epochs, {:.1} s, {:.0} samples/s, started {}</p>",
        escape(&info.id),
        escape(&info.name),
        info.status,
        info.steps,
        info.epochs_done,
        info.wall_seconds,
        info.train_samples_per_second,
        escape(&info.started)
    );
    body.push_str("<h2>Final metrics</h2><table><tr><th>split</th>");
    let order = ["train", "valid", "test"];
    let first = order.iter().find_map(|s| info.metrics.get(*s));
    let names: Vec<&str> = first
        .map(|m| m.all_scalars().into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default();
    for n in &names {
        let _ = write!(body, "<th>{n}</th>");
    }
    body.push_str("</tr>");
    for s in order {
        if let Some(m) = info.metrics.get(s) {
            let _ = write!(body, "<tr><td>{s}</td>");
            for n in &names {
                let _ = write!(
                    body,
                    "<td>{}</td>",
                    m.get(n).map_or("-".into(), |v| format!("{v:.4}"))
                );
            }
            body.push_str("</tr>");
        }
    }
    body.push_str("</table>");
}

/// The report's curves: training and validation loss, the monitored validation metric (when
/// it is not the loss) and the learning rate.
fn curves_section(info: &run::RunInfo, curves: &Curves, body: &mut String) {
    let get = |split: &str, metric: &str| {
        curves
            .get(&(split.to_string(), metric.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let colors = [BLUE, RED, GREEN, MAGENTA];
    body.push_str("<h2>Curves</h2>");
    let loss = [
        Series {
            name: "train loss".into(),
            points: get("train", "loss"),
            color: colors[0],
        },
        Series {
            name: "valid loss".into(),
            points: get("valid", "loss"),
            color: colors[1],
        },
    ];
    body.push_str(&line_chart("Loss", "loss", &loss));
    let monitor = if info.monitor.is_empty() {
        "loss"
    } else {
        &info.monitor
    };
    if monitor != "loss" {
        let s = [Series {
            name: format!("valid {monitor}"),
            points: get("valid", monitor),
            color: colors[2],
        }];
        body.push_str(&line_chart(&format!("Validation {monitor}"), monitor, &s));
    }
    body.push_str(&line_chart(
        "Learning rate",
        "lr",
        &[Series {
            name: "lr".into(),
            points: get("train", "lr"),
            color: colors[3],
        }],
    ));
}

/// The held-out split's chart: a classifier's confusion matrix (from the run's final
/// metrics) or a regression's residuals; nothing for a language model.
fn evaluation_section(
    loaded: &LoadedRun,
    info: &run::RunInfo,
    split: SplitName,
    body: &mut String,
) -> Result<(), ExplainError> {
    let split_name = if split == SplitName::Test {
        "test"
    } else {
        "valid"
    };
    match info.metrics.get(split_name) {
        Some(Metrics::Classification(c)) => {
            let names: Vec<String> = c.per_class.iter().map(|s| s.name.clone()).collect();
            body.push_str(&format!("<h2>Confusion matrix ({split_name} split)</h2>"));
            body.push_str(&confusion_chart(
                &format!("Confusion matrix, {split_name}"),
                &c.confusion_matrix,
                &names,
            ));
        }
        Some(Metrics::Regression(_)) => {
            let pairs = loaded.regression_pairs(split)?;
            body.push_str(&format!("<h2>Residuals ({split_name} split)</h2>"));
            body.push_str(&residual_chart(&format!("Residuals, {split_name}"), &pairs));
        }
        // Loss, perplexity and bits per token are in the metrics table above.
        Some(Metrics::LanguageModel(_)) | None => {}
    }
    Ok(())
}

// ---- Explanations and fairness: hand-drawn SVG (bars with whiskers, maps over images) ----

/// A complete page around `body`.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto}}svg{{display:block;margin:1em 0}}\
         .maps svg{{display:inline-block;margin:4px}}</style></head>\
         <body>{body}</body></html>\n",
        escape(title)
    )
}

/// Horizontal bars, one per `(label, value, whisker)`, signed (negative bars go left, red).
fn bar_svg(title: &str, unit: &str, bars: &[(String, f64, f64)]) -> String {
    let label_w = 190.0;
    let (w, row_h, top) = (720.0, 20.0, 34.0);
    let h = top + row_h * bars.len() as f64 + 30.0;
    let lo = bars.iter().map(|b| b.1 - b.2).fold(0.0, f64::min);
    let hi = bars.iter().map(|b| b.1 + b.2).fold(0.0, f64::max);
    let span = (hi - lo).max(1e-12);
    let plot = w - label_w - 20.0;
    let x = |v: f64| label_w + (v - lo) / span * plot;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <text x=\"{}\" y=\"18\" font-size=\"15\" text-anchor=\"middle\">{}</text>",
        w / 2.0,
        escape(title)
    );
    for (i, (label, v, e)) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let (a, b) = (x(0.0).min(x(*v)), x(0.0).max(x(*v)));
        let color = if *v >= 0.0 { "#3b6fb6" } else { "#c0392b" };
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{a:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"><title>{}: {v:.4}</title></rect>",
            label_w - 6.0,
            y + 14.0,
            escape(label),
            y + 3.0,
            (b - a).max(0.5),
            row_h - 6.0,
            escape(label)
        );
        if *e > 0.0 {
            let (l, r, m) = (x(v - e), x(v + e), y + row_h / 2.0);
            let _ = write!(
                s,
                "<path d=\"M{l:.1} {m:.1}H{r:.1}M{l:.1} {:.1}V{:.1}M{r:.1} {:.1}V{:.1}\" stroke=\"#222\"/>",
                m - 4.0,
                m + 4.0,
                m - 4.0,
                m + 4.0
            );
        }
    }
    let axis = top + row_h * bars.len() as f64 + 4.0;
    let _ = write!(
        s,
        "<path d=\"M{:.1} {top}V{axis}\" stroke=\"#888\"/><text x=\"{:.1}\" y=\"{}\">{lo:.4}</text>\
         <text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\">{hi:.4}</text>\
         <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text></svg>",
        x(0.0),
        label_w,
        axis + 14.0,
        w - 20.0,
        axis + 14.0,
        label_w + plot / 2.0,
        axis + 14.0,
        escape(unit)
    );
    s
}

/// Permutation importance as bars with ± one standard deviation.
pub fn importance_svg(r: &crate::explain::importance::ImportanceReport, top: usize) -> String {
    let bars: Vec<(String, f64, f64)> = r
        .importances
        .iter()
        .take(top)
        .map(|i| (i.name.clone(), i.mean, i.std))
        .collect();
    bar_svg(
        &format!("Permutation importance ({} repeats)", r.repeats),
        &format!("{} lost when the column is permuted", r.metric),
        &bars,
    )
}

/// An image (grey) with its attributions over it (red: towards the output, blue: away),
/// channels summed.
pub fn saliency_svg(pixels: &[f32], values: &[f64], [c, h, w]: [usize; 3], title: &str) -> String {
    let cell = (224 / h.max(w).max(1)).max(2) as f64;
    let (pw, ph) = (cell * w as f64, cell * h as f64);
    let gray: Vec<f32> = (0..h * w)
        .map(|p| (0..c).map(|ch| pixels[ch * h * w + p]).sum::<f32>() / c as f32)
        .collect();
    let (glo, ghi) = gray
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let amax = values.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
        pw * 2.0 + 12.0,
        ph + 18.0
    );
    for p in 0..h * w {
        let (x, y) = ((p % w) as f64 * cell, (p / w) as f64 * cell + 16.0);
        let g = ((gray[p] - glo) / (ghi - glo).max(1e-12) * 255.0) as u8;
        let a = values[p] / amax;
        let (r, b) = if a >= 0.0 {
            (255, (255.0 * (1.0 - a)) as u8)
        } else {
            ((255.0 * (1.0 + a)) as u8, 255)
        };
        let gg = (255.0 * (1.0 - a.abs())) as u8;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({g},{g},{g})\"/>\
             <rect x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({r},{gg},{b})\"/>",
            x + pw + 12.0
        );
    }
    let _ = write!(s, "<text x=\"0\" y=\"12\">{}</text></svg>", escape(title));
    s
}

/// Per-example attributions: bars per column for tables, maps over images.
pub fn attributions_html(r: &crate::explain::reports::RowsReport) -> String {
    let mut body = String::new();
    let mut maps = String::new();
    for (i, row) in r.rows.iter().enumerate() {
        let pred = match &row.prediction {
            serde_json::Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        let what = row
            .class
            .as_ref()
            .map_or("the prediction".into(), |c| format!("P({c})"));
        if let Some(shape) = r.image_shape {
            if let Some(a) = &row.integrated_gradients {
                maps.push_str(&saliency_svg(
                    &r.pixels[i],
                    &a.values,
                    shape,
                    &format!("row {}: predicted {pred}, IG of {what}", row.row),
                ));
            }
            continue;
        }
        for (name, a) in [
            ("Integrated Gradients", &row.integrated_gradients),
            ("KernelSHAP", &row.kernel_shap),
        ] {
            let Some(a) = a else { continue };
            let mut bars: Vec<(String, f64, f64)> = r
                .groups
                .iter()
                .zip(&row.values)
                .zip(&a.values)
                .map(|((g, v), &x)| (format!("{g} = {v}"), x, 0.0))
                .collect();
            bars.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
            body.push_str(&bar_svg(
                &format!(
                    "row {}: predicted {pred}; {name} of {what} ({:.3} vs {:.3})",
                    row.row, a.output, a.reference
                ),
                &format!("contribution to {what}"),
                &bars,
            ));
        }
    }
    if !maps.is_empty() {
        let _ = write!(
            body,
            "<p>Each pair: the image, then its Integrated Gradients (red: raises the explained output; blue: lowers it; baseline: a black image).</p><div class=\"maps\">{maps}</div>"
        );
    }
    body
}

pub fn importance_page(
    label: &str,
    split: &str,
    r: &crate::explain::importance::ImportanceReport,
) -> String {
    let body = format!(
        "<h1>Explanations of {}</h1><p>{split} split, {} rows; {} {:.4} unpermuted.</p>{}",
        escape(label),
        r.rows,
        r.metric,
        r.baseline,
        importance_svg(r, 40)
    );
    page(&format!("kiln explain {label}"), &body)
}

pub fn attributions_page(r: &crate::explain::reports::RowsReport) -> String {
    let body = format!(
        "<h1>Attributions of {}</h1><p>{} split.</p>{}",
        escape(&r.model),
        r.split,
        attributions_html(r)
    );
    page(&format!("kiln explain {}", r.model), &body)
}

/// Per-group bars (selection rate, TPR, FPR, accuracy) and the table of every metric.
pub fn fairness_html(r: &crate::explain::reports::FairnessReport) -> String {
    let mut body = format!(
        "<p>Favourable outcome <b>{}</b>; {} examples of the {} split, selection rate {:.4}, accuracy {:.4}. Groups marked * are small.</p>",
        escape(&r.positive),
        r.overall.count,
        r.split,
        r.overall.selection_rate,
        r.overall.accuracy
    );
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    for b in &r.breakdowns {
        let by = b.columns.join(" x ");
        let _ = write!(body, "<h3>By {}</h3>", escape(&by));
        for (metric, get) in [
            (
                "selection rate",
                &(|g: &crate::explain::fairness::GroupMetrics| Some(g.selection_rate))
                    as &dyn Fn(&_) -> Option<f64>,
            ),
            (
                "true positive rate",
                &|g: &crate::explain::fairness::GroupMetrics| g.tpr,
            ),
            (
                "false positive rate",
                &|g: &crate::explain::fairness::GroupMetrics| g.fpr,
            ),
        ] {
            let bars: Vec<(String, f64, f64)> = b
                .groups
                .iter()
                .map(|g| {
                    let name =
                        format!("{}{}", g.group.join(" & "), if g.small { " *" } else { "" });
                    (name, get(g).unwrap_or(0.0), 0.0)
                })
                .collect();
            body.push_str(&bar_svg(&format!("{metric} by {by}"), metric, &bars));
        }
        body.push_str("<table><tr><th>group</th><th>count</th><th>selection</th><th>accuracy</th><th>TPR</th><th>FPR</th><th>precision</th><th>base rate</th><th>mean score</th><th>ECE</th></tr>");
        for g in &b.groups {
            let _ = write!(
                body,
                "<tr><td>{}{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                escape(&g.group.join(" & ")),
                if g.small { " *" } else { "" },
                g.count,
                g.selection_rate,
                g.accuracy,
                opt(g.tpr),
                opt(g.fpr),
                opt(g.precision),
                g.base_rate,
                g.mean_score,
                g.ece
            );
        }
        let g = &b.gaps;
        let _ = write!(
            body,
            "</table><p>Demographic parity difference <b>{:.4}</b>, ratio <b>{:.4}</b>; equalized odds difference <b>{:.4}</b> (TPR {:.4}, FPR {:.4}).</p>",
            g.demographic_parity_difference,
            g.demographic_parity_ratio,
            g.equalized_odds_difference,
            g.tpr_difference,
            g.fpr_difference
        );
    }
    for v in &r.violations {
        let _ = write!(
            body,
            "<p style=\"color:#c0392b\">Limit broken: {}</p>",
            escape(v)
        );
    }
    body
}

pub fn fairness_page(r: &crate::explain::reports::FairnessReport) -> String {
    let body = format!(
        "<h1>Fairness of {}</h1>{}",
        escape(&r.model),
        fairness_html(r)
    );
    page(&format!("kiln fairness {}", r.model), &body)
}

/// Training and new shares per bin of one drifted column, side by side.
fn drift_svg(s: &crate::drift::Score) -> String {
    let bars: Vec<(String, f64, f64)> = s
        .bins
        .iter()
        .zip(s.expected.iter().zip(&s.actual))
        .flat_map(|(b, (&e, &a))| {
            [
                (format!("{b} (training)"), e, 0.0),
                (format!("{b} (new)"), a, 0.0),
            ]
        })
        .collect();
    let ks = s.ks.map_or(String::new(), |k| format!(", KS {k:.3}"));
    bar_svg(
        &format!("{}: PSI {:.3}{ks}", s.name, s.psi),
        "share of rows",
        &bars,
    )
}

/// `kiln drift -o`: the scores of every column, a plot per drifted one.
pub fn drift_page(r: &crate::drift::Report) -> String {
    let mut body = format!(
        "<h1>Drift of {} against {}</h1><p>{} rows; PSI &ge; {} or KS &ge; {} counts as drift. Drifted: <b>{}</b>.</p>\
         <table><tr><th>column</th><th>kind</th><th>PSI</th><th>KS</th><th>unseen</th><th>drift</th></tr>",
        escape(&r.input),
        escape(&r.model),
        r.rows,
        r.thresholds.psi,
        r.thresholds.ks,
        if r.drifted.is_empty() {
            "none".to_string()
        } else {
            escape(&r.drifted.join(", "))
        }
    );
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    for s in r.columns.iter().chain(&r.predictions) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            s.kind,
            s.psi,
            opt(s.ks),
            opt(s.unseen),
            if s.drifted { "yes" } else { "" }
        );
    }
    body.push_str("</table>");
    for s in r.columns.iter().chain(&r.predictions).filter(|s| s.drifted) {
        body.push_str(&drift_svg(s));
    }
    page(&format!("kiln drift {}", r.model), &body)
}

/// A scatter of labelled point sets (filled or hollow circles) and an optional line: a sweep's
/// metric over trials, or against one parameter.
/// A labelled set of points, drawn filled or hollow.
pub(crate) type PointSet<'a> = (&'a str, Vec<(f64, f64)>, bool);

pub(crate) fn scatter_svg(
    title: &str,
    axes: (&str, &str),
    sets: &[PointSet],
    line: Option<(&str, Vec<(f64, f64)>)>,
) -> String {
    let all = || sets.iter().flat_map(|s| s.1.iter());
    let x = range(all().map(|p| p.0));
    let y = range(all().map(|p| p.1));
    let colors = [RGBColor(31, 119, 180), RGBColor(150, 150, 150)];
    xy_chart(title, axes, x, y, true, |chart| {
        for (i, (name, points, filled)) in sets.iter().enumerate() {
            let color = colors[i % colors.len()];
            let style = if *filled {
                color.filled()
            } else {
                color.stroke_width(1)
            };
            if let Ok(ann) = chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style))) {
                ann.label(name.to_string())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, style));
            }
        }
        if let Some((name, points)) = &line {
            let red = RGBColor(214, 39, 40);
            if let Ok(ann) = chart.draw_series(LineSeries::new(
                points.iter().copied(),
                ShapeStyle::from(&red).stroke_width(2),
            )) {
                ann.label(name.to_string())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], red));
            }
        }
    })
}
