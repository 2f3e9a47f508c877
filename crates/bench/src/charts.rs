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
    let (lo, hi) = (0.0, if hi > 0.0 { hi * 1.1 } else { 10.0 });
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries/s")
        .y_desc("delivered deliveries/s")
        .x_labels(8)
        .y_labels(8)
        .light_line_style(WHITE)
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            [(lo, lo), (hi, hi)],
            ShapeStyle::from(&BLACK.mix(0.3)).stroke_width(1),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("offered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.mix(0.3)));
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
