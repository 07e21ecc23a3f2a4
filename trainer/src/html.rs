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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the report of the run in `run_dir` to `out`.
pub fn write_report(run_dir: &Path, out: &Path) -> Result<(), EvalError> {
    let loaded = LoadedRun::open(run_dir)?;
    let info = loaded
        .info
        .as_ref()
        .expect("a model opened from its run folder has the run's record");
    let curves = curves(run_dir)?;
    let get = |split: &str, metric: &str| {
        curves
            .get(&(split.to_string(), metric.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let colors = [BLUE, RED, GREEN, MAGENTA];
    let mut body = String::new();
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
    body.push_str("</table><h2>Curves</h2>");
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
    let split = if !crate::data::Source::is_empty(&loaded.data.test) {
        SplitName::Test
    } else {
        SplitName::Valid
    };
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
    let config = std::fs::read_to_string(run_dir.join(layout::CONFIG)).unwrap_or_default();
    let _ = write!(body, "<h2>Config</h2><pre>{}</pre>", escape(&config));
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>kiln run {}</title><style>\
         body{{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto}}svg{{display:block;margin:1em 0}}</style></head>\
         <body>{body}</body></html>\n",
        escape(&info.id)
    );
    let tmp = out.with_extension("html.tmp");
    std::fs::write(&tmp, html).map_err(|e| {
        EvalError::Run(run::RunError::Io {
            path: tmp.display().to_string(),
            source: e,
        })
    })?;
    std::fs::rename(&tmp, out).map_err(|e| {
        EvalError::Run(run::RunError::Io {
            path: out.display().to_string(),
            source: e,
        })
    })?;
    Ok(())
}
