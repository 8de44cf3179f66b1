//! The curves as an SVG (plotters, SVG backend: no fonts or system libraries): validation loss
//! (solid, a dot at each progress point) and training loss (pale) per optimizer, and under the
//! plot what each optimizer costs.

use std::path::Path;

use plotters::prelude::*;

use crate::{Options, Outcome, Result, mib};

const WIDTH: u32 = 1000;
const PLOT_HEIGHT: u32 = 560;
const ROW: u32 = 24;
const FONT: &str = "sans-serif";
const COLOURS: [RGBColor; 2] = [RGBColor(214, 39, 40), RGBColor(31, 119, 180)];
const PALE: f64 = 0.4;

fn label(name: &str) -> &str {
    match name {
        "came" => "came_candle::Came",
        "adamw" => "candle_nn::AdamW",
        other => other,
    }
}

pub fn write_svg(path: &Path, o: &Options, outcomes: &[Outcome]) -> Result {
    let height = PLOT_HEIGHT + ROW * (outcomes.len() as u32 + 2) + 20;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_vertically(PLOT_HEIGHT);
    let c = &o.config;
    let title = format!(
        "GPT on Shakespeare (candle): {} layers x {} wide, {} steps of {} x {} characters",
        c.layers, c.embed, o.steps, o.batch, c.context
    );
    let points = outcomes.iter().flat_map(|x| &x.points);
    let x_max = points.clone().map(|p| p.0 as f64).fold(1.0, f64::max);
    let (lo, hi) = points
        .flat_map(|p| [p.1, p.2])
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let pad = (0.05 * (hi - lo)).max(1e-2);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats per character)")
        .label_style((FONT, 13))
        .draw()?;
    for (x, colour) in outcomes.iter().zip(COLOURS.iter().cycle()) {
        let train = x.points.iter().map(|p| (p.0 as f64, p.1));
        chart.draw_series(LineSeries::new(train, colour.mix(PALE).stroke_width(1)))?;
        let val: Vec<(f64, f64)> = x.points.iter().map(|p| (p.0 as f64, p.2)).collect();
        chart.draw_series(LineSeries::new(val.iter().copied(), colour.stroke_width(2)))?;
        chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    let text = |s: String, y: u32, colour: &RGBColor| -> Result {
        legend.draw(&Text::new(
            s,
            (70, y as i32),
            (FONT, 14).into_font().color(colour),
        ))?;
        Ok(())
    };
    for (i, (x, colour)) in outcomes.iter().zip(COLOURS.iter().cycle()).enumerate() {
        text(
            format!(
                "{}: validation loss {:.4}, state {:.2} MiB, peak RSS {:.1} MiB, peak heap {:.1} \
                 MiB, step {:.2} ms ({}x{} var: {:.1} ms)",
                label(&x.name),
                x.val_loss,
                mib(x.state_bytes),
                mib(x.peak_rss),
                mib(x.peak_heap),
                x.step_ms,
                o.bench_size,
                o.bench_size,
                x.bench_ms
            ),
            ROW * i as u32 + 6,
            colour,
        )?;
    }
    let note = "solid: validation loss on the progress windows (the figures above: over the whole \
                validation text); pale: training loss between points";
    text(
        note.to_string(),
        ROW * outcomes.len() as u32 + 10,
        &RGBColor(90, 90, 90),
    )?;
    root.present()?;
    Ok(())
}
