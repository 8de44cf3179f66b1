//! The loss curves as an SVG (plotters, SVG backend only: no fonts or system libraries).

use std::path::Path;

use plotters::prelude::*;

/// One optimizer's curve in one phase: `(step, validation loss)` and `(step, training loss)`.
pub struct Curve<'a> {
    pub label: &'a str,
    pub val: Vec<(f64, f64)>,
    pub train: Vec<(f64, f64)>,
}

/// Colours of the optimizers, in the order the curves come.
const COLOURS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

/// Writes two panels side by side (pretraining, fine-tuning): validation loss as solid lines,
/// training loss as thin pale lines, in nats per character.
pub fn write_svg(
    path: &Path,
    panels: [(&str, &[Curve<'_>]); 2],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    for (area, (title, curves)) in [left, right].iter().zip(panels) {
        let points = curves.iter().flat_map(|c| c.val.iter().chain(&c.train));
        let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        if !y_min.is_finite() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let pad = 0.05 * (y_max - y_min).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (nats/char): validation bold, training pale")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (curve, colour) in curves.iter().zip(COLOURS) {
            chart.draw_series(LineSeries::new(
                curve.train.iter().copied(),
                colour.mix(0.35).stroke_width(1),
            ))?;
            chart
                .draw_series(LineSeries::new(
                    curve.val.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(format!("{} (validation)", curve.label))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
