//! SVG charts for `docs/BENCHMARKS.md`, drawn with `plotters` (SVG backend only, no fonts
//! needed: text stays `<text>` for the browser to render).
//!
//! Two shapes cover every scenario: grouped bars (one group per figure, one bar per system)
//! and saturation curves (delivered vs offered deliveries per second, per system).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// The colour a system is drawn in, the same in every chart.
fn color(system: &str) -> RGBColor {
    match system {
        "switchyard" => RGBColor(31, 119, 180),
        "node_redis" | "node" => RGBColor(214, 39, 40),
        "node_sharded" => RGBColor(255, 127, 14),
        "socketioxide_redis" => RGBColor(44, 160, 44),
        _ => RGBColor(127, 127, 127),
    }
}

/// One bar per system in each of `categories`; `series` is `(system, value per category)`.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[&str],
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<()> {
    let n = categories.len().max(1) as f64;
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        // Headroom for the legend in the upper right corner.
        * 1.45;
    let root = SVGBackend::new(path, (760, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..top)
        .map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = categories.iter().map(|c| (*c).to_owned()).collect();
    let formatter = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len().max(1))
        .x_label_formatter(&formatter)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, (system, values)) in series.iter().enumerate() {
        let c = color(system);
        let left = -0.4 + j as f64 * width;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 + left;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], c.filled())
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label(*system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Delivered vs offered (both deliveries per second), one line per system, with the
/// "everything delivered" diagonal for reference. `series` is `(system, [(offered, achieved)])`.
pub fn saturation_curves(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let hi = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(o, a)| o.max(*a)))
        .fold(0.0f64, f64::max);
    let hi = if hi > 0.0 { hi * 1.1 } else { 10.0 };
    let axes = Axes {
        x: ("offered deliveries/s", hi),
        y: ("delivered deliveries/s", hi),
        diagonal: true,
    };
    lines(path, title, &axes, series)
}

/// One line per system of `(x, y)` points, from 0 on both axes: a figure against a parameter
/// (CPU per delivery against the number of gateways).
pub fn figure_against(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let hi = |f: fn(&(f64, f64)) -> f64| {
        let hi = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(f))
            .fold(0.0f64, f64::max);
        if hi > 0.0 { hi * 1.1 } else { 10.0 }
    };
    let axes = Axes {
        x: (x_desc, hi(|p| p.0)),
        y: (y_desc, hi(|p| p.1)),
        diagonal: false,
    };
    lines(path, title, &axes, series)
}

/// Both axes of a line chart, from 0: `(description, upper end)`; `diagonal` draws y = x (for
/// delivered against offered).
struct Axes<'a> {
    x: (&'a str, f64),
    y: (&'a str, f64),
    diagonal: bool,
}

fn lines(
    path: &Path,
    title: &str,
    axes: &Axes<'_>,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..axes.x.1, 0.0..axes.y.1)
        .map_err(|e| anyhow!("{e}"))?;
    let y_decimals = if axes.y.1 < 100.0 { 1 } else { 0 };
    chart
        .configure_mesh()
        .x_desc(axes.x.0)
        .y_desc(axes.y.0)
        .x_labels(8)
        .y_labels(8)
        .light_line_style(WHITE)
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.y_decimals$}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    if axes.diagonal {
        let hi = axes.x.1.min(axes.y.1);
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (hi, hi)],
                ShapeStyle::from(&BLACK.mix(0.3)).stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("offered")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.mix(0.3)));
    }
    for (system, pts) in series {
        let c = color(system);
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied(),
                ShapeStyle::from(&c).stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(*system)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_curves_render_svg_with_labels() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("sy-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bars = dir.join("bars.svg");
        grouped_bars(
            &bars,
            "latency",
            "ms",
            &["p50", "p99"],
            &[
                ("switchyard", vec![1.0, 2.0]),
                ("node_redis", vec![3.0, 9.0]),
            ],
        )?;
        let svg = std::fs::read_to_string(&bars)?;
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("p99") && svg.contains("node_redis"));
        let curves = dir.join("curves.svg");
        saturation_curves(
            &curves,
            "saturation",
            &[("switchyard", vec![(100.0, 100.0), (200.0, 150.0)])],
        )?;
        assert!(std::fs::read_to_string(&curves)?.contains("switchyard"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
