//! The training dashboard: progress, loss sparklines, a chart of one series with smoothing,
//! the hyperparameters in force, the run's log and the newest sample grid.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Chart, Dataset, Gauge, GraphType, Paragraph, Sparkline, Widget, Wrap,
};

use super::hyper::{Edit, HyperEditor};
use super::{contains, field, key, panel, KeyHelp};
use crate::cli::format_duration;
use crate::tui::follow::{LogLevel, RunData};
use crate::tui::graphics::Pictures;
use crate::tui::series::{self, fmt_value, Series, Trend};
use crate::tui::theme::Theme;
use crate::tui::widgets::halfblock::SampleView;

/// Smoothing changes by this much per key press.
pub const SMOOTHING_STEP: f64 = 0.05;
/// The most smoothing allowed.
pub const SMOOTHING_MAX: f64 = 0.99;

/// The panels of the dashboard, in focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// Step, epoch, speed and time.
    Progress,
    /// Sparklines of the three losses.
    Losses,
    /// Settings in force.
    Hyper,
    /// The large chart.
    Chart,
    /// The run's log.
    Log,
    /// The newest sample grid.
    Sample,
}

impl Panel {
    const ORDER: [Panel; 6] = [
        Panel::Progress,
        Panel::Losses,
        Panel::Hyper,
        Panel::Chart,
        Panel::Log,
        Panel::Sample,
    ];

    fn cycle(self, forward: bool) -> Panel {
        let i = Self::ORDER.iter().position(|p| *p == self).unwrap_or(0);
        let n = Self::ORDER.len();
        Self::ORDER[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// The keys of the training screen.
pub const KEYS: [KeyHelp; 10] = [
    key("t / T", "next / previous series on the chart"),
    key(
        "+ / -",
        "more / less smoothing (chart); change a setting (hyperparameters)",
    ),
    key("j k / e", "hyperparameters: pick a setting / type a value"),
    key(
        "Enter / Esc",
        "hyperparameters: apply the change / cancel it",
    ),
    key("v", "show / hide validation on the chart"),
    key("h l ← →", "focus the previous / next panel"),
    key("j k ↓ ↑", "scroll the log, or change series (chart)"),
    key("g / G", "oldest / newest log line"),
    key("r", "roll back after a divergence (lr × 0.1)"),
    key("click", "focus a panel"),
];

/// State of the training screen.
#[derive(Debug, Clone)]
pub struct TrainingScreen {
    /// The series on the chart.
    pub series: Series,
    /// EMA weight of the chart, 0 to [`SMOOTHING_MAX`].
    pub smoothing: f64,
    /// Whether validation passes are drawn.
    pub show_val: bool,
    /// The focused panel.
    pub focus: Panel,
    /// Log lines scrolled back from the newest (0 follows new lines).
    pub log_scroll: usize,
    /// The hyperparameter editor.
    pub hyper: HyperEditor,
    /// An edit the editor finished, for the event loop to write.
    pub edit: Option<Edit>,
    panels: Vec<(Panel, Rect)>,
}

impl TrainingScreen {
    /// A screen with the chart on the total loss and `smoothing` from the configuration.
    pub fn new(smoothing: f64) -> Self {
        Self {
            series: Series::Total,
            smoothing: smoothing.clamp(0.0, SMOOTHING_MAX),
            show_val: true,
            focus: Panel::Chart,
            log_scroll: 0,
            hyper: HyperEditor::default(),
            edit: None,
            panels: Vec::new(),
        }
    }

    /// Changes the smoothing by `delta`, kept within 0 to [`SMOOTHING_MAX`] on a 0.05 grid.
    pub fn adjust_smoothing(&mut self, delta: f64) {
        let v = ((self.smoothing + delta) / SMOOTHING_STEP).round() * SMOOTHING_STEP;
        self.smoothing = v.clamp(0.0, SMOOTHING_MAX);
    }

    /// Answers a key of this screen; false when it is not one.
    pub fn on_key(&mut self, key: KeyEvent, data: &RunData) -> bool {
        if self.focus == Panel::Hyper {
            let (used, edit) = self.hyper.on_key(key, data.config.as_ref());
            if edit.is_some() {
                self.edit = edit;
            }
            if used {
                return true;
            }
        }
        let log_max = data.log.len().saturating_sub(1);
        match key.code {
            KeyCode::Char('t') => self.series = self.series.cycle(true),
            KeyCode::Char('T') => self.series = self.series.cycle(false),
            KeyCode::Char('+' | '=') => self.adjust_smoothing(SMOOTHING_STEP),
            KeyCode::Char('-' | '_') => self.adjust_smoothing(-SMOOTHING_STEP),
            KeyCode::Char('v') => self.show_val = !self.show_val,
            KeyCode::Char('h') | KeyCode::Left => self.focus = self.focus.cycle(false),
            KeyCode::Char('l') | KeyCode::Right => self.focus = self.focus.cycle(true),
            KeyCode::Char('k') | KeyCode::Up => self.scroll(1, true, log_max),
            KeyCode::Char('j') | KeyCode::Down => self.scroll(1, false, log_max),
            KeyCode::PageUp => self.scroll(10, true, log_max),
            KeyCode::PageDown => self.scroll(10, false, log_max),
            KeyCode::Char('g') | KeyCode::Home => self.log_scroll = log_max,
            KeyCode::Char('G') | KeyCode::End => self.log_scroll = 0,
            _ => return false,
        }
        true
    }

    fn scroll(&mut self, by: usize, back: bool, max: usize) {
        if matches!(self.focus, Panel::Chart | Panel::Losses) && by == 1 {
            self.series = self.series.cycle(!back);
            return;
        }
        self.log_scroll = if back {
            (self.log_scroll + by).min(max)
        } else {
            self.log_scroll.saturating_sub(by)
        };
    }

    /// Focuses the panel under a click; true when one was hit.
    pub fn click(&mut self, x: u16, y: u16) -> bool {
        match self.panels.iter().find(|(_, r)| contains(*r, x, y)) {
            Some((p, _)) => {
                self.focus = *p;
                true
            }
            None => false,
        }
    }

    /// Draws the dashboard into `area`.
    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        sample: &mut SampleView,
        pictures: &mut Pictures,
    ) {
        let left_w = (area.width * 2 / 5).clamp(34.min(area.width), 52);
        let [left, right] =
            Layout::horizontal([Constraint::Length(left_w), Constraint::Fill(1)]).areas(area);
        // Tall windows give the sample grid the left column's spare rows; short ones put it
        // beside the log.
        let sample_left = area.height >= 36;
        let (hyper_c, rest_c) = if sample_left {
            (Constraint::Length(10), Constraint::Fill(1))
        } else {
            (Constraint::Fill(1), Constraint::Length(0))
        };
        let [progress, losses, hyper, left_rest] = Layout::vertical([
            Constraint::Length(6),
            Constraint::Length(8),
            hyper_c,
            rest_c,
        ])
        .areas(left);
        let bottom_h = (area.height / 3).max(8);
        let [chart, bottom] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(bottom_h)]).areas(right);
        let (log, sample_area) = if sample_left {
            (bottom, left_rest)
        } else {
            let sample_w = (bottom_h.saturating_sub(2) * 2 + 2).min(bottom.width / 2);
            let [log, s] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(sample_w)])
                .areas(bottom);
            (log, s)
        };
        self.panels = vec![
            (Panel::Progress, progress),
            (Panel::Losses, losses),
            (Panel::Hyper, hyper),
            (Panel::Chart, chart),
            (Panel::Log, log),
            (Panel::Sample, sample_area),
        ];

        self.render_progress(progress, buf, data, theme);
        self.render_losses(losses, buf, data, theme);
        self.render_hyper(hyper, buf, data, theme);
        self.render_chart(chart, buf, data, theme);
        self.render_log(log, buf, data, theme);
        self.render_sample(sample_area, buf, data, theme, (sample, pictures));
    }

    fn render_progress(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let block = panel("progress", self.focus == Panel::Progress, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        let [step_row, gauge_row, speed_row, eta_row] =
            Layout::vertical([Constraint::Length(1); 4]).areas(inner);

        let (step, total) = (data.step(), data.total_steps());
        let pct = if total > 0 {
            100.0 * step as f64 / total as f64
        } else {
            0.0
        };
        let step_line = Line::from(vec![
            Span::styled("step ", theme.dim),
            Span::styled(format!("{step}"), theme.title),
            Span::styled(format!(" / {total}  {pct:.1}%"), theme.text),
        ]);
        Paragraph::new(step_line).render(step_row, buf);
        let epoch = data.last_step().map_or(0.0, |r| r.epoch);
        let label = format!(
            "epoch {} · {:.0}%",
            epoch.floor() as u64 + 1,
            epoch.fract() * 100.0
        );
        Gauge::default()
            .gauge_style(theme.gauge)
            .style(theme.text)
            .ratio(epoch.fract().clamp(0.0, 1.0))
            .label(Span::styled(label, theme.text))
            .render(gauge_row, buf);
        let ips = data.last_step().map_or(0.0, |r| r.ips);
        let elapsed = data.last_step().map_or(0.0, |r| r.time);
        let speed = Line::from(vec![
            Span::styled("img/s ", theme.dim),
            Span::styled(format!("{ips:.1}"), theme.text),
            Span::styled("  elapsed ", theme.dim),
            Span::styled(format_duration(elapsed), theme.text),
        ]);
        Paragraph::new(speed).render(speed_row, buf);
        let eta = series::eta_seconds(&data.steps, total).map_or("–".to_string(), format_duration);
        let rate = series::steps_per_second(&data.steps, series::TREND_WINDOW)
            .map_or(String::new(), |r| format!("  {r:.1} steps/s"));
        let eta_line = Line::from(vec![
            Span::styled("ETA ", theme.dim),
            Span::styled(eta, theme.text),
            Span::styled(rate, theme.dim),
        ]);
        Paragraph::new(eta_line).render(eta_row, buf);
    }

    fn render_losses(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let block = panel("losses", self.focus == Panel::Losses, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        let rows = Layout::vertical([Constraint::Length(2); 3]).split(inner);
        let spark_series = [
            (Series::Total, theme.total),
            (Series::Recon, theme.recon),
            (Series::Kl, theme.kl),
        ];

        for ((s, style), row) in spark_series.into_iter().zip(rows.iter()) {
            let [label, spark] =
                Layout::horizontal([Constraint::Length(13), Constraint::Fill(1)]).areas(*row);
            let values: Vec<f64> = data.steps.iter().map(|r| s.of(r)).collect();
            let trend = series::trend(&values, series::TREND_WINDOW);
            let trend_style = match trend {
                Trend::Down => theme.good,
                Trend::Up => theme.bad,
                Trend::Flat => theme.dim,
            };
            let marker = if s == self.series { "▸" } else { " " };
            let latest = values.last().map_or("–".to_string(), |v| fmt_value(*v));
            let text = vec![
                Line::from(vec![
                    Span::styled(marker, theme.title),
                    Span::styled(s.label(), style),
                ]),
                Line::from(vec![
                    Span::styled(format!(" {latest} "), theme.text),
                    Span::styled(trend.arrow(), trend_style),
                ]),
            ];
            Paragraph::new(text).render(label, buf);
            let tail = &values[values.len().saturating_sub(spark.width as usize)..];
            Sparkline::default()
                .data(series::spark_bars(tail))
                .style(style)
                .render(spark, buf);
        }
    }

    /// Whether keys should reach this screen before the global ones (a value is being typed).
    pub fn captures_keys(&self, key: &KeyEvent) -> bool {
        self.focus == Panel::Hyper
            && (self.hyper.typing()
                || (self.hyper.editing() && matches!(key.code, KeyCode::Esc | KeyCode::Enter)))
    }

    fn render_hyper(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let focused = self.focus == Panel::Hyper;
        let title = if focused {
            "hyperparameters · edit"
        } else {
            "hyperparameters"
        };
        let block = panel(title, focused, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        if focused {
            self.hyper
                .render(inner, buf, data.config.as_ref(), true, theme);
            return;
        }
        let entries = hyper_entries(data);

        if inner.height as usize >= entries.len() {
            let lines: Vec<Line> = entries
                .into_iter()
                .map(|(k, v)| field(&format!("{k:<7}"), v, theme))
                .collect();
            Paragraph::new(lines).render(inner, buf);
            return;
        }
        let half = inner.width / 2;
        let lines: Vec<Line> = entries
            .chunks(2)
            .map(|pair| {
                let mut spans = Vec::new();
                for (i, (k, v)) in pair.iter().enumerate() {
                    let cell = v.clone();
                    let width = if i == 0 {
                        (half as usize).saturating_sub(k.len() + 1)
                    } else {
                        cell.len()
                    };
                    spans.push(Span::styled(format!("{k} "), theme.dim));
                    spans.push(Span::styled(format!("{cell:<width$}"), theme.text));
                }
                Line::from(spans)
            })
            .collect();
        Paragraph::new(lines).render(inner, buf);
    }

    fn render_chart(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let style = match self.series {
            Series::Total => theme.total,
            Series::Recon => theme.recon,
            Series::Kl => theme.kl,
            Series::Beta | Series::Lr => theme.text,
        };
        let val_note = if self.show_val && self.series.has_validation() {
            " · • val"
        } else {
            ""
        };
        let title = format!(
            "{} · smoothing {:.2}{val_note}",
            self.series.label(),
            self.smoothing
        );
        let block = panel(title, self.focus == Panel::Chart, theme);
        let raw = self.series.points(data);
        if raw.is_empty() {
            let inner = block.inner(area);
            block.render(area, buf);
            Paragraph::new(Span::styled(
                "waiting for the first logged step…",
                theme.dim,
            ))
            .render(inner, buf);
            return;
        }

        let max_points = usize::from(area.width.max(2)) * 4;
        let ys: Vec<f64> = raw.iter().map(|p| p.1).collect();
        let smooth: Vec<(f64, f64)> = raw
            .iter()
            .zip(series::ema(&ys, self.smoothing))
            .map(|(p, y)| (p.0, y))
            .collect();
        let raw = series::thin(&raw, max_points);
        let smooth = series::thin(&smooth, max_points);
        let vals = if self.show_val {
            self.series.val_points(data)
        } else {
            Vec::new()
        };
        let (x0, x1) = (raw[0].0, raw[raw.len() - 1].0.max(raw[0].0 + 1.0));
        let (y0, y1) = bounds(raw.iter().chain(&vals).map(|p| p.1));
        let markers: Vec<[(f64, f64); 2]> = data
            .settings
            .iter()
            .map(|s| s.step as f64)
            .filter(|s| (x0..=x1).contains(s))
            .map(|s| [(s, y0), (s, y1)])
            .collect();

        let mut datasets = Vec::new();
        for m in &markers {
            datasets.push(
                Dataset::default()
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(theme.marker)
                    .data(m),
            );
        }
        if self.smoothing > 0.0 {
            datasets.push(
                Dataset::default()
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(theme.raw)
                    .data(&raw),
            );
        }
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(style)
                .data(&smooth),
        );
        datasets.push(
            Dataset::default()
                .marker(Marker::Dot)
                .graph_type(GraphType::Scatter)
                .style(theme.val)
                .data(&vals),
        );
        let x_labels =
            [x0, (x0 + x1) / 2.0, x1].map(|v| Span::styled(format!("{v:.0}"), theme.dim));
        let y_labels = [y0, (y0 + y1) / 2.0, y1].map(|v| Span::styled(fmt_value(v), theme.dim));
        Chart::new(datasets)
            .block(block)
            .style(theme.text)
            .legend_position(None)
            .x_axis(
                Axis::default()
                    .style(theme.border)
                    .bounds([x0, x1])
                    .labels(x_labels),
            )
            .y_axis(
                Axis::default()
                    .style(theme.border)
                    .bounds([y0, y1])
                    .labels(y_labels),
            )
            .render(area, buf);
    }

    fn render_log(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let title = if self.log_scroll > 0 {
            format!("log · ↑{}", self.log_scroll)
        } else {
            "log".to_string()
        };
        let block = panel(title, self.focus == Panel::Log, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        let h = inner.height as usize;
        let end = data.log.len().saturating_sub(self.log_scroll);
        let start = end.saturating_sub(h);

        let lines: Vec<Line> = data
            .log
            .range(start..end)
            .map(|l| {
                let style = match l.level {
                    LogLevel::Info => theme.text,
                    LogLevel::Warn => theme.warn,
                    LogLevel::Error => theme.error,
                };
                // Narrow panels keep their width for the message.
                let time = if l.time.is_empty() || inner.width < 48 {
                    String::new()
                } else {
                    format!("{} ", l.time)
                };
                Line::from(vec![
                    Span::styled(time, theme.dim),
                    Span::styled(l.text.clone(), style),
                ])
            })
            .collect();
        if lines.is_empty() {
            Paragraph::new(Span::styled("no log lines yet", theme.dim)).render(inner, buf);
        } else {
            Paragraph::new(lines).render(inner, buf);
        }
    }

    fn render_sample(
        &self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        (sample, pictures): (&mut SampleView, &mut Pictures),
    ) {
        let title = match &data.sample {
            Some((s, _)) if area.width >= 24 => format!("samples · step {s}"),
            Some((s, _)) => format!("step {s}"),
            None => "samples".to_string(),
        };
        let block = panel(title, self.focus == Panel::Sample, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        if let Some(e) = sample.error() {
            Paragraph::new(Span::styled(e.to_string(), theme.error)).render(inner, buf);
        } else if let Some(picture) = sample.picture() {
            pictures.draw(picture, inner, buf, theme.image);
        } else {
            Paragraph::new(Span::styled("no sample yet", theme.dim))
                .wrap(Wrap { trim: true })
                .render(inner, buf);
        }
    }
}

/// The settings shown in the hyperparameter panel, as `(label, value)`.
pub fn hyper_entries(data: &RunData) -> Vec<(&'static str, String)> {
    let last = data.last_step();
    let c = data.config.as_ref();
    let status = data.status.as_ref();
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
    let dataset = status
        .filter(|s| !s.dataset.is_empty())
        .map(|s| s.dataset.clone());
    vec![
        (
            "lr",
            or_dash(
                last.map(|r| format!("{:.2e}", r.lr))
                    .or(c.map(|c| format!("{:.2e}", c.train.lr))),
            ),
        ),
        (
            "beta",
            or_dash(
                last.map(|r| fmt_value(r.beta))
                    .or(c.map(|c| fmt_value(c.train.beta))),
            ),
        ),
        ("batch", or_dash(c.map(|c| c.train.batch_size.to_string()))),
        ("latent", or_dash(c.map(|c| c.model.latent.to_string()))),
        (
            "image",
            or_dash(c.map(|c| format!("{}px×{}", c.model.image_size, c.model.channels))),
        ),
        (
            "device",
            or_dash(
                status
                    .filter(|s| !s.device.is_empty())
                    .map(|s| s.device.clone()),
            ),
        ),
        (
            "data",
            or_dash(dataset.or(c.map(|c| c.data.source.clone()))),
        ),
        (
            "params",
            or_dash(
                status
                    .filter(|s| s.parameters > 0)
                    .map(|s| s.parameters.to_string()),
            ),
        ),
    ]
}

/// Chart bounds around the finite values, padded; a flat series gets a unit band.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = lo.abs().max(1e-9) * 0.5;
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}
