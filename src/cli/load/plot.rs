//! `--plot`: draws the samples as an SVG with `plotters` (see the module docs for why the
//! SVG backend needs no fonts).

use std::path::Path;

use plotters::drawing::DrawingAreaErrorKind;

use super::sampler::Sample;

/// Why the plot could not be drawn: writing the file failed, or `plotters` could not lay
/// it out.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

/// Draws average load (top) and machines (bottom) over time as an SVG at `path`.
pub(super) fn draw_plot(path: &Path, samples: &[Sample], load_end_s: f64) -> Result<(), PlotError> {
    use plotters::prelude::*;

    let t_max = samples.last().map_or(1.0, |s| s.t).max(load_end_s).max(1.0);
    let load_max = samples
        .iter()
        .map(|s| s.avg_load)
        .fold(100.0f64, f64::max)
        .ceil();
    let machines_max = samples
        .iter()
        .map(|s| s.active + s.draining)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        + 1.0;

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "elastic-lb load: average load and machines over time",
        ("sans-serif", 22),
    )?;
    let (upper, lower) = root.split_vertically(310);
    let stop_color = RGBColor(200, 60, 60);
    let x_desc = "seconds since the load started";

    // Average load, with the load phase marked.
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..load_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("average load (%)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.avg_load)),
            BLUE.stroke_width(2),
        ))?
        .label("average load over active machines")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            [(load_end_s, 0.0), (load_end_s, load_max)],
            stop_color.stroke_width(1),
        ))?
        .label("load stops")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stop_color));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

    // Machines: active, and active + draining, as step lines.
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..machines_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("machines")
        .y_labels(machines_max as usize + 1)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let steps = |value: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        let mut points = Vec::with_capacity(samples.len() * 2);
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                points.push((s.t, value(&samples[i - 1])));
            }
            points.push((s.t, value(s)));
        }
        points
    };
    let total_color = RGBColor(230, 140, 20);
    chart
        .draw_series(LineSeries::new(
            steps(|s| (s.active + s.draining) as f64),
            total_color.stroke_width(2),
        ))?
        .label("active + draining")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], total_color.stroke_width(2))
        });
    let active_color = RGBColor(30, 140, 60);
    chart
        .draw_series(LineSeries::new(
            steps(|s| s.active as f64),
            active_color.stroke_width(2),
        ))?
        .label("active machines")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], active_color.stroke_width(2))
        });
    chart.draw_series(LineSeries::new(
        [(load_end_s, 0.0), (load_end_s, machines_max)],
        stop_color.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
