//! The bench's SVG charts, drawn with plotters' SVG backend (text stays `<text>` elements, so
//! no font files or font libraries are involved). This file owns the axes (round linear ticks,
//! a log2 axis for clients and batch sizes) and the layout: panels on the left, one legend on
//! the right shared by every panel, caption lines underneath. What goes on a chart (which
//! systems, which mode) is decided by the callers in `peers.rs` and `mod.rs`.

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;
use std::ops::Range;

/// A linear axis from 0 to a round top, ticks 1, 2 or 5 x 10^k apart: 0, 100, 200 rather
/// than 0, 117, 234 (what dividing the data's range into equal parts gives).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundAxis {
    pub step: f64,
    pub top: f64,
}

/// About this many intervals between ticks; fewer crowd no label, more leave the eye guessing.
const TICK_INTERVALS: f64 = 5.0;

impl RoundAxis {
    /// The smallest round axis from 0 that holds `max` with at most ~[`TICK_INTERVALS`] steps.
    pub fn covering(max: f64) -> RoundAxis {
        if !(max.is_finite() && max > 0.0) {
            return RoundAxis { step: 1.0, top: 1.0 };
        }
        let raw = max / TICK_INTERVALS;
        let mag = 10f64.powf(raw.log10().floor());
        // Rounding error can leave raw a hair above 1, 2 or 5 x mag; compare with slack.
        let step =
            [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
        let top = step * (max / step * (1.0 - 1e-9)).ceil().max(1.0);
        RoundAxis { step, top }
    }

    /// 0, step, 2 step, ... top; each an integer multiple of the step (no drift from summing).
    pub fn ticks(&self) -> Vec<f64> {
        let n = (self.top / self.step).round() as i64;
        (0..=n).map(|i| i as f64 * self.step).collect()
    }

    /// A tick value with as many decimals as the step needs (0.5 -> "0.5", 200 -> "200").
    pub fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

impl Ranged for RoundAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        lerp(v / self.top, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // plotters asks twice: bold points (labelled grid lines), then light ones between them.
        // Only the round ticks get lines.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.top
    }
}

impl ValueFormatter<f64> for RoundAxis {
    fn format_ext(&self, v: &f64) -> String {
        self.label(*v)
    }
}

/// A log2 axis between two powers of two, ticks at every power: 1, 2, 4, ... 32. Clients and
/// batch sizes are doubled from level to level, so they sit evenly spaced on it. The axis runs a
/// little past the end ticks ([`LOG2_PAD`]) so that the end points' markers are not cut by the
/// frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Log2Axis {
    pub lo_exp: i32,
    pub hi_exp: i32,
}

/// How far (in powers of two) the log2 axis extends beyond its first and last tick.
const LOG2_PAD: f64 = 0.15;

impl Log2Axis {
    /// The powers of two just around `min..=max` (both > 0); a single value gets one more power.
    pub fn covering(min: f64, max: f64) -> Log2Axis {
        let (min, max) = (min.max(1e-9), max.max(min).max(1e-9));
        let lo_exp = min.log2().floor() as i32;
        let hi_exp = (max.log2().ceil() as i32).max(lo_exp + 1);
        Log2Axis { lo_exp, hi_exp }
    }

    pub fn ticks(&self) -> Vec<f64> {
        (self.lo_exp..=self.hi_exp).map(|e| 2f64.powi(e)).collect()
    }
}

impl Ranged for Log2Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (f64::from(self.lo_exp) - LOG2_PAD, f64::from(self.hi_exp) + LOG2_PAD);
        lerp((v.max(1e-9).log2() - lo) / (hi - lo), limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks()
    }

    fn range(&self) -> Range<f64> {
        2f64.powf(f64::from(self.lo_exp) - LOG2_PAD)..2f64.powf(f64::from(self.hi_exp) + LOG2_PAD)
    }
}

impl ValueFormatter<f64> for Log2Axis {
    fn format_ext(&self, v: &f64) -> String {
        if *v >= 1.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        }
    }
}

/// `frac` of the way from `limit.0` to `limit.1` (plotters passes the y range bottom-up).
fn lerp(frac: f64, limit: (i32, i32)) -> i32 {
    limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
}

/// How a panel's x values are spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum XScale {
    /// Doubling levels (clients, batch sizes): [`Log2Axis`].
    Log2,
    /// Anything else (milliseconds, request rates): [`RoundAxis`] from 0.
    Linear,
}

/// One system's line. `ours` lines are solid with dots; peers' dashed with triangles, so the
/// two stay apart even where colours are hard to tell.
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub ours: bool,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub x_desc: String,
    pub y_desc: String,
    pub x_scale: XScale,
    /// The same systems in the same order in every panel of a chart: the legend and the
    /// colours are by position.
    pub lines: Vec<Line>,
}

/// Tableau's 10 colours: distinct on white and for the common colour-vision deficiencies.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const PANEL_W: u32 = 440;
const PANEL_H: u32 = 400;
/// The legend's width: its marker and gap, then the longest label at about this many pixels a
/// character (14 px sans-serif; a viewer's font may differ a little, so it is generous).
const LEGEND_MARKER_W: u32 = 60;
const LEGEND_CHAR_W: f64 = 7.8;
const CAPTION_LINE_H: u32 = 17;

/// Draws `panels` side by side under `title`, one legend for all, `caption` lines below.
/// Returns the SVG document.
pub fn draw(title: &str, panels: &[Panel], caption: &[String]) -> Result<String, String> {
    let legend_lines = panels.first().map_or(0, |p| p.lines.len()) as u32;
    let longest = panels.first().and_then(|p| p.lines.iter().map(|l| l.label.chars().count()).max()).unwrap_or(0);
    let legend_w = LEGEND_MARKER_W + (LEGEND_CHAR_W * longest as f64).ceil() as u32;
    let w = PANEL_W * panels.len().max(1) as u32 + legend_w;
    let plots_h = PANEL_H.max(60 + 22 * legend_lines);
    let h = 40 + plots_h + 10 + CAPTION_LINE_H * caption.len() as u32;
    let mut svg = String::new();
    {
        let err = |e: DrawingAreaErrorKind<_>| format!("drawing '{title}': {e}");
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (main, bottom) = root.split_vertically(plots_h);
        let (plots, legend) = main.split_horizontally(w - legend_w);
        let areas = plots.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let ys = panel.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
            let y = RoundAxis::covering(ys.fold(0.0, f64::max) * 1.05);
            let xs: Vec<f64> = panel.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).collect();
            match panel.x_scale {
                XScale::Log2 => {
                    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = xs.iter().copied().fold(0.0, f64::max);
                    let x = if xs.is_empty() { Log2Axis::covering(1.0, 32.0) } else { Log2Axis::covering(lo, hi) };
                    draw_panel(area, x, y, panel).map_err(err)?;
                }
                XScale::Linear => {
                    let x = RoundAxis::covering(xs.iter().copied().fold(0.0, f64::max) * 1.05);
                    draw_panel(area, x, y, panel).map_err(err)?;
                }
            }
        }
        for (i, line) in panels.first().map_or(&[][..], |p| &p.lines[..]).iter().enumerate() {
            let y = 50 + 22 * i as i32;
            let colour = COLOURS[i % COLOURS.len()];
            let style = colour.stroke_width(2);
            // Peers' entries are dashed like their lines: two segments either side of the marker.
            let segments: &[[(i32, i32); 2]] =
                if line.ours { &[[(4, y), (40, y)]] } else { &[[(4, y), (16, y)], [(28, y), (40, y)]] };
            for seg in segments {
                legend.draw(&PathElement::new(seg.to_vec(), style)).map_err(err)?;
            }
            if line.ours {
                legend.draw(&Circle::new((22, y), 4, colour.filled())).map_err(err)?;
            } else {
                legend.draw(&TriangleMarker::new((22, y), 5, colour.filled())).map_err(err)?;
            }
            legend.draw(&Text::new(line.label.clone(), (48, y - 7), ("sans-serif", 14))).map_err(err)?;
        }
        for (i, text) in caption.iter().enumerate() {
            let pos = (12, 4 + (CAPTION_LINE_H * i as u32) as i32);
            bottom.draw(&Text::new(text.clone(), pos, ("sans-serif", 13))).map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_panel<DB: DrawingBackend, X>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: X,
    y: RoundAxis,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64> + Clone,
{
    let mut chart =
        ChartBuilder::on(area).margin(12).x_label_area_size(44).y_label_area_size(64).build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    for (i, line) in panel.lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let style = colour.stroke_width(2);
        if line.ours {
            chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?;
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        } else {
            chart.draw_series(DashedLineSeries::new(line.points.iter().copied(), 10, 6, style))?;
            chart.draw_series(line.points.iter().map(|&p| TriangleMarker::new(p, 5, colour.filled())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step is round when it is 1, 2 or 5 times a power of ten.
    fn is_round(step: f64) -> bool {
        let mag = 10f64.powf(step.log10().floor());
        let m = step / mag;
        [1.0, 2.0, 5.0].iter().any(|r| (m - r).abs() < 1e-9)
    }

    #[test]
    fn round_ticks_for_several_ranges() {
        // (data max, the step and top a reader expects)
        let cases = [
            (42.0, 10.0, 50.0),
            (117.0, 50.0, 150.0),
            (234.0, 50.0, 250.0),
            (999.0, 200.0, 1000.0),
            (1013.0, 500.0, 1500.0),
            (0.37, 0.1, 0.4),
            (7.3, 2.0, 8.0),
            (100.0, 20.0, 100.0),
            (25_000.0, 5000.0, 25_000.0),
        ];
        for (max, step, top) in cases {
            let a = RoundAxis::covering(max);
            assert!((a.step - step).abs() < 1e-9 * step, "max {max}: step {} (want {step})", a.step);
            assert!((a.top - top).abs() < 1e-9 * top, "max {max}: top {} (want {top})", a.top);
        }
        // Any range: round steps, ticks that are whole multiples of them, the data inside.
        for max in [0.013, 1.0, 3.3, 8.4, 16.8, 25.2, 117.0, 451.7, 6e4, 1.23e7] {
            let a = RoundAxis::covering(max);
            assert!(is_round(a.step), "max {max}: step {}", a.step);
            let ticks = a.ticks();
            assert!(ticks.len() >= 2 && ticks.len() <= 7, "max {max}: {ticks:?}");
            assert_eq!(ticks[0], 0.0);
            assert!(*ticks.last().unwrap() >= max, "max {max}: top {ticks:?}");
            for t in &ticks {
                assert!(((t / a.step) - (t / a.step).round()).abs() < 1e-9, "max {max}: tick {t}");
            }
        }
        assert_eq!(RoundAxis::covering(0.0), RoundAxis { step: 1.0, top: 1.0 });
        assert_eq!(RoundAxis::covering(f64::NAN), RoundAxis { step: 1.0, top: 1.0 });
    }

    #[test]
    fn round_labels_carry_the_decimals_the_step_needs() {
        let a = RoundAxis::covering(0.37);
        let labels: Vec<String> = a.ticks().iter().map(|t| a.label(*t)).collect();
        assert_eq!(labels, ["0.0", "0.1", "0.2", "0.3", "0.4"]);
        let b = RoundAxis::covering(1013.0);
        assert_eq!(b.ticks().iter().map(|t| b.label(*t)).collect::<Vec<_>>(), ["0", "500", "1000", "1500"]);
    }

    #[test]
    fn concurrency_axis_is_log2_with_power_of_two_ticks() {
        let a = Log2Axis::covering(1.0, 32.0);
        assert_eq!(a.ticks(), [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]);
        // Levels that are not powers of two still get power-of-two ticks around them.
        assert_eq!(Log2Axis::covering(3.0, 20.0).ticks(), [2.0, 4.0, 8.0, 16.0, 32.0]);
        assert_eq!(Log2Axis::covering(1.0, 1.0).ticks(), [1.0, 2.0]);
        // Evenly spaced: each doubling moves the same number of pixels, and the middle of the
        // axis is the geometric mean of its ends (sqrt(32)), not their average.
        let px: Vec<i32> = a.ticks().iter().map(|t| a.map(t, (0, 1060))).collect();
        assert_eq!(px, [30, 230, 430, 630, 830, 1030]);
        assert_eq!(a.map(&(32f64.sqrt()), (0, 1060)), 530);
        assert_eq!(a.format_ext(&16.0), "16");
    }
}
