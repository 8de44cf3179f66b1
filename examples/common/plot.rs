//! The loss curves as an SVG (plotters, SVG backend only: no fonts or system libraries).

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One optimizer's curves in one phase: `(step, validation loss)` and `(step, training loss)`.
pub struct Curve {
    /// The optimizer, as the legend names it ("CAME").
    pub label: String,
    /// What the legend says after the label (its optimizer state and weights).
    pub note: String,
    /// Its colour, an index into the palette (the optimizer's place in the list of all of
    /// them, so that an optimizer has the same colour whichever ran).
    pub colour: usize,
    pub val: Vec<(f64, f64)>,
    pub train: Vec<(f64, f64)>,
}

/// One phase: its curves and the unigram baseline of its validation text.
pub struct Panel<'a> {
    pub title: &'a str,
    /// Validation loss of the unigram model (nats per character), drawn dashed.
    pub baseline: f64,
    pub curves: &'a [Curve],
}

/// The palette `Curve::colour` indexes (cyclically).
const COLOURS: [RGBColor; 7] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Opacity of the training curves.
const PALE: f64 = 0.4;
const GREY: RGBColor = RGBColor(110, 110, 110);
const FONT: &str = "sans-serif";

/// Width of the image, height of the title and of the four plots under it.
const WIDTH: u32 = 1200;
const TITLE_HEIGHT: u32 = 40;
const PLOTS_HEIGHT: u32 = 730;
/// Height of a legend row (an optimizer, the baseline) and of a line of the note under them,
/// and the margin under the note.
const ROW: u32 = 24;
const NOTE_LINE: u32 = 20;
const BOTTOM: u32 = 30;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Writes `title` over two columns (pretraining, fine-tuning). The upper row has validation
/// loss as solid lines ending in a dot, training loss as thin pale lines and the unigram
/// baseline dashed; the lower row magnifies the validation loss over the second half of each
/// phase and prints each curve's last value. Under them one legend for both columns, as tall as
/// it needs: the optimizers with their `Curve::note` (from the first panel), `baseline` (what
/// the dashed line is, with its values) and `val_note` (what the validation loss is measured
/// on). Losses are in nats per character.
pub fn write_svg(
    path: &Path,
    title: &str,
    val_note: &str,
    baseline: &str,
    panels: [Panel<'_>; 2],
) -> Result {
    let legend_rows = panels[0].curves.len() + 2; // the optimizers, the line styles, the baseline
    let legend_height = ROW * legend_rows as u32 + NOTE_LINE * val_note.lines().count() as u32;
    let height = TITLE_HEIGHT + PLOTS_HEIGHT + legend_height + BOTTOM;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 20))?;
    let (plots, legend) = root.split_vertically(PLOTS_HEIGHT);
    let (full, zoom) = plots.split_vertically(410);
    let (full_left, full_right) = full.split_horizontally(WIDTH / 2);
    let (zoom_left, zoom_right) = zoom.split_horizontally(WIDTH / 2);
    for ((full, zoom), panel) in [(full_left, zoom_left), (full_right, zoom_right)]
        .iter()
        .zip(&panels)
    {
        draw_full(full, panel)?;
        draw_zoom(zoom, panel)?;
    }
    draw_legend(&legend, panels[0].curves, val_note, baseline)?;
    root.present()?;
    Ok(())
}

/// The smallest and largest `y`, padded by 4% of the span.
fn y_range(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let pad = (0.04 * (hi - lo)).max(2e-3);
    (lo - pad, hi + pad)
}

fn colour(curve: &Curve) -> RGBColor {
    COLOURS[curve.colour % COLOURS.len()]
}

fn x_max(panel: &Panel<'_>) -> f64 {
    panel
        .curves
        .iter()
        .flat_map(|c| c.val.iter().chain(&c.train))
        .fold(1.0f64, |m, p| m.max(p.0))
}

/// Both curves of every optimizer and the baseline, over the whole phase.
fn draw_full(area: &Area<'_>, panel: &Panel<'_>) -> Result {
    let x_max = x_max(panel);
    let ys = panel
        .curves
        .iter()
        .flat_map(|c| c.val.iter().chain(&c.train));
    let (y_lo, y_hi) = y_range(ys.map(|p| p.1).chain([panel.baseline]));
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, y_lo..y_hi)?;
    mesh(&mut chart, (y_lo, y_hi))?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, panel.baseline), (x_max, panel.baseline)],
        8,
        5,
        GREY.stroke_width(2),
    ))?;
    for (curve, colour) in panel.curves.iter().map(|c| (c, colour(c))) {
        chart.draw_series(LineSeries::new(
            curve.train.iter().copied(),
            colour.mix(PALE).stroke_width(1),
        ))?;
    }
    for (curve, colour) in panel.curves.iter().map(|c| (c, colour(c))) {
        chart.draw_series(LineSeries::new(
            curve.val.iter().copied(),
            colour.stroke_width(2),
        ))?;
        // the last point: the table's value
        chart.draw_series(
            curve
                .val
                .last()
                .map(|&p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    Ok(())
}

/// The validation curves over the second half of the phase, magnified, with their last values
/// written at the right (moved apart where they would overlap).
fn draw_zoom(area: &Area<'_>, panel: &Panel<'_>) -> Result {
    let x_max = x_max(panel);
    // the second half, or from the earliest last point if one ends before it
    let x_min = panel
        .curves
        .iter()
        .filter_map(|c| c.val.last())
        .fold(x_max / 2.0, |m, p| m.min(p.0));
    let shown = |c: &Curve| -> Vec<(f64, f64)> {
        // from the last point before the half, so that the line starts at the left edge
        let first = c.val.iter().rposition(|p| p.0 <= x_min).unwrap_or(0);
        c.val[first..].to_vec()
    };
    let clip = |p: &(f64, f64), q: &(f64, f64)| {
        // the segment from p to q, cut at x_min
        if p.0 >= x_min || q.0 <= p.0 {
            *p
        } else {
            let t = (x_min - p.0) / (q.0 - p.0);
            (x_min, p.1 + t * (q.1 - p.1))
        }
    };
    let lines: Vec<Vec<(f64, f64)>> = panel
        .curves
        .iter()
        .map(|c| {
            let points = shown(c);
            let next = points.iter().skip(1).chain(points.last());
            points.iter().zip(next).map(|(p, q)| clip(p, q)).collect()
        })
        .collect();
    let (y_lo, y_hi) = y_range(lines.iter().flatten().map(|p| p.1));
    // room at the right for the values
    let x_end = x_max + 0.16 * (x_max - x_min);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: validation, second half, magnified", short(panel.title)),
            (FONT, 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_end, y_lo..y_hi)?;
    mesh(&mut chart, (y_lo, y_hi))?;
    let mut labels = Vec::new();
    for (line, curve) in lines.into_iter().zip(panel.curves) {
        let colour = colour(curve);
        let last = line.last().copied();
        chart.draw_series(LineSeries::new(line, colour.stroke_width(2)))?;
        if let Some(last) = last {
            chart.draw_series([Circle::new(last, 4, colour.filled())])?;
            labels.push((last.1, colour));
        }
    }
    // the values, top to bottom, at least a line apart
    let (_, height) = chart.plotting_area().dim_in_pixel();
    let gap = 16.0 * (y_hi - y_lo) / f64::from(height.max(1));
    labels.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut at: Vec<f64> = Vec::with_capacity(labels.len());
    for (i, &(y, _)) in labels.iter().enumerate() {
        at.push(if i == 0 { y } else { y.min(at[i - 1] - gap) });
    }
    let below = at.last().map_or(0.0, |&y| (y_lo + gap / 2.0 - y).max(0.0));
    let x_text = x_max + 0.02 * (x_max - x_min);
    let style = |colour: RGBColor| {
        (FONT, 14)
            .into_font()
            .color(&colour)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    chart.draw_series(labels.iter().zip(&at).map(|(&(y, colour), &a)| {
        Text::new(format!("{y:.4}"), (x_text, a + below), style(colour))
    }))?;
    Ok(())
}

/// "fine-tuning on The Tempest" of "fine-tuning on The Tempest, from ...".
fn short(title: &str) -> &str {
    title.split(',').next().unwrap_or(title)
}

/// Axes and grid, with the loss to as many decimals as the range of `y` needs.
fn mesh<'a>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    (y_lo, y_hi): (f64, f64),
) -> Result {
    let decimals = match y_hi - y_lo {
        span if span < 0.015 => 4,
        span if span < 0.15 => 3,
        _ => 2,
    };
    let y_label = move |y: &f64| format!("{y:.decimals$}");
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/char)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()?;
    Ok(())
}

/// One row per optimizer (its validation and training line, its label and note), a row saying
/// which line is which, the baseline, and the note.
fn draw_legend(area: &Area<'_>, curves: &[Curve], val_note: &str, baseline: &str) -> Result {
    let text = |s: &str, x: i32, y: i32| Text::new(s.to_string(), (x, y), (FONT, 15).into_font());
    let (x0, sample, gap) = (84, 28, 10);
    let x1 = x0 + sample + gap; // the training line's sample
    let x_text = x1 + sample + gap;
    let row = |i: usize| 12 + ROW as i32 * i as i32;
    for (i, (curve, colour)) in curves.iter().map(|c| (c, colour(c))).enumerate() {
        let y = row(i);
        area.draw(&PathElement::new(
            [(x0, y + 8), (x0 + sample, y + 8)],
            colour.stroke_width(2),
        ))?;
        area.draw(&Circle::new((x0 + sample, y + 8), 4, colour.filled()))?;
        area.draw(&PathElement::new(
            [(x1, y + 8), (x1 + sample, y + 8)],
            colour.mix(PALE).stroke_width(2),
        ))?;
        area.draw(&text(
            &format!("{}: {}", curve.label, curve.note),
            x_text,
            y,
        ))?;
    }
    let y = row(curves.len());
    area.draw(&text(
        "bold: validation loss; pale: training loss, the mean of the batches since the previous \
         point",
        x0,
        y,
    ))?;
    let y = row(curves.len() + 1);
    area.draw(&DashedPathElement::new(
        [(x0, y + 8), (x1 + sample, y + 8)],
        8,
        5,
        GREY.stroke_width(2),
    ))?;
    area.draw(&text(baseline, x_text, y))?;
    for (i, line) in val_note.lines().enumerate() {
        area.draw(&Text::new(
            line.to_string(),
            (x0, row(curves.len() + 2) + 6 + NOTE_LINE as i32 * i as i32),
            (FONT, 14).into_font().color(&BLACK.mix(0.75)),
        ))?;
    }
    Ok(())
}
