//! `--plot`: draws the samples as an SVG with `plotters` (see the module docs for why the
//! SVG backend needs no fonts).
//!
//! Three panels over the same time axis: capacity (supply, and demand when the offered rate
//! is known: open loop and `--profile`), average load, machines.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

use super::elasticity::Point;
use super::sampler::Sample;

/// Why the plot could not be drawn: writing the file failed, or `plotters` could not lay
/// it out.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const X_DESC: &str = "seconds since the load started";
const STOP: RGBColor = RGBColor(200, 60, 60);
const SUPPLY: RGBColor = RGBColor(30, 140, 60);
const DEMAND: RGBColor = RGBColor(120, 60, 170);
const TOTAL: RGBColor = RGBColor(230, 140, 20);

/// Draws capacity (supply and, with `demand`, demand), average load and machines over time
/// as an SVG at `path`.
pub(super) fn draw_plot(
    path: &Path,
    samples: &[Sample],
    demand: Option<&[Point]>,
    load_end_s: f64,
) -> Result<(), PlotError> {
    let t_max = samples.last().map_or(1.0, |s| s.t).max(load_end_s).max(1.0);
    let root = SVGBackend::new(path, (960, 920)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = if demand.is_some() {
        "elastic-lb load: demand and supply, average load and machines over time"
    } else {
        "elastic-lb load: supply, average load and machines over time"
    };
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    draw_capacity(&panels[0], samples, demand, t_max, load_end_s)?;
    draw_load(&panels[1], samples, t_max, load_end_s)?;
    draw_machines(&panels[2], samples, t_max, load_end_s)?;
    root.present()?;
    Ok(())
}

/// `(t, value)` as a step line: each value holds until the next sample.
fn steps(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(samples.len() * 2);
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            points.push((s.t, value(&samples[i - 1])));
        }
        points.push((s.t, value(s)));
    }
    points
}

fn legend(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A panel over `0..t_max` × `0..y_max` with its mesh drawn, the y axis labelled
/// `y_desc` (with `y_labels` labels when given).
fn panel<'a, 'b: 'a>(
    area: &'a Area<'b>,
    t_max: f64,
    y_max: f64,
    y_desc: &str,
    y_labels: Option<usize>,
) -> Result<Chart<'a, 'b>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(X_DESC)
        .y_desc(y_desc)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14));
    if let Some(n) = y_labels {
        mesh.y_labels(n);
    }
    mesh.draw()?;
    Ok(chart)
}

/// Draws `points` as a 2-pixel line in `color`, with `label` and a matching swatch in the
/// legend.
fn line<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    points: impl IntoIterator<Item = (f64, f64)>,
    color: RGBColor,
    label: &str,
) -> Result<(), PlotError> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(legend(color));
    Ok(())
}

/// The "load stops" line and the legend.
fn finish<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    load_end_s: f64,
    y_max: f64,
) -> Result<(), PlotError> {
    chart
        .draw_series(LineSeries::new(
            [(load_end_s, 0.0), (load_end_s, y_max)],
            STOP.stroke_width(1),
        ))?
        .label("load stops")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], STOP));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn draw_capacity(
    area: &Area<'_>,
    samples: &[Sample],
    demand: Option<&[Point]>,
    t_max: f64,
    load_end_s: f64,
) -> Result<(), PlotError> {
    let demand_max = demand
        .unwrap_or_default()
        .iter()
        .map(|p| p.demand)
        .fold(0.0, f64::max);
    let y_max = samples
        .iter()
        .map(|s| s.supply)
        .fold(demand_max, f64::max)
        .max(100.0)
        * 1.1;
    let mut chart = panel(area, t_max, y_max, "capacity (load units)", None)?;
    line(
        &mut chart,
        steps(samples, |s| s.supply),
        SUPPLY,
        "supply: Σ capacity of active machines",
    )?;
    if let Some(points) = demand {
        line(
            &mut chart,
            points.iter().map(|p| (p.t, p.demand)),
            DEMAND,
            "demand: 100 × (reserved + busy capacity) / threshold",
        )?;
    }
    finish(&mut chart, load_end_s, y_max)
}

fn draw_load(
    area: &Area<'_>,
    samples: &[Sample],
    t_max: f64,
    load_end_s: f64,
) -> Result<(), PlotError> {
    let y_max = samples
        .iter()
        .map(|s| s.avg_load)
        .fold(100.0f64, f64::max)
        .ceil();
    let mut chart = panel(area, t_max, y_max, "average load (%)", None)?;
    line(
        &mut chart,
        samples.iter().map(|s| (s.t, s.avg_load)),
        BLUE,
        "average load over active machines",
    )?;
    finish(&mut chart, load_end_s, y_max)
}

fn draw_machines(
    area: &Area<'_>,
    samples: &[Sample],
    t_max: f64,
    load_end_s: f64,
) -> Result<(), PlotError> {
    let y_max = samples
        .iter()
        .map(|s| s.active + s.draining)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        + 1.0;
    let mut chart = panel(area, t_max, y_max, "machines", Some(y_max as usize + 1))?;
    line(
        &mut chart,
        steps(samples, |s| (s.active + s.draining) as f64),
        TOTAL,
        "active + draining",
    )?;
    line(
        &mut chart,
        steps(samples, |s| s.active as f64),
        SUPPLY,
        "active machines",
    )?;
    finish(&mut chart, load_end_s, y_max)
}
