//! The data set screen: what the run trains on, in figures.
//!
//! Not built yet: the browser of the data set itself (file list, image previews, thumbnail
//! pages, statistics, filtering and exclusion). This screen shows only what the run directory
//! says about its data.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget, Wrap};

use super::{field, KeyHelp};
use crate::tui::follow::RunData;
use crate::tui::theme::Theme;

/// The keys of the data set screen (none beyond the global ones yet).
pub const KEYS: [KeyHelp; 0] = [];

/// State of the data set screen.
#[derive(Debug, Clone, Default)]
pub struct DatasetsScreen;

impl DatasetsScreen {
    /// Draws the screen into `area`.
    pub fn render(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme) {
        let [summary, note] = Layout::vertical([Constraint::Length(12), Constraint::Fill(1)]).areas(area);
        let block = super::panel("data set", false, theme);
        let inner = block.inner(summary);
        block.render(summary, buf);
        let note_block = super::panel("browser", false, theme);
        let note_inner = note_block.inner(note);
        note_block.render(note, buf);

        Paragraph::new(summary_lines(data, theme)).render(inner, buf);
        let text = vec![
            Line::from(Span::styled(
                "The image browser (file list, previews, statistics, filters) is not here yet.",
                theme.dim,
            )),
            Line::from(Span::styled(
                "From the shell: `facestudio dataset scan <name|folder>` counts images and lists unreadable files.",
                theme.dim,
            )),
        ];
        Paragraph::new(text).wrap(Wrap { trim: true }).render(note_inner, buf);
    }
}

fn summary_lines<'a>(data: &RunData, theme: &Theme) -> Vec<Line<'a>> {
    let status = data.status.as_ref();
    let config = data.config.as_ref();
    let name = status
        .filter(|s| !s.dataset.is_empty())
        .map(|s| s.dataset.clone())
        .or(config.map(|c| c.data.source.clone()))
        .unwrap_or_else(|| "unknown yet".into());
    let count = |n: Option<usize>| n.map_or("–".to_string(), |n| n.to_string());
    let train = status.map(|s| s.train_images).filter(|n| *n > 0);
    let val = status.map(|s| s.val_images).filter(|_| train.is_some());
    let total = train.zip(val).map(|(t, v)| t + v);
    let mut lines = vec![
        field("data set       ", name, theme),
        field("images         ", count(total), theme),
        field("  training     ", count(train), theme),
        field("  held out     ", count(val), theme),
        field("unreadable     ", format!("{} (from the run's log)", data.bad_files), theme),
    ];
    if let Some(c) = config {
        let size = format!("{0}×{0} px, {1} channel(s)", c.model.image_size, c.model.channels);
        lines.push(field("prepared as    ", size, theme));
        lines.push(field("crop           ", format!("{:?}", c.data.crop).to_lowercase(), theme));
        lines.push(field("flip           ", if c.data.flip { "yes" } else { "no" }.to_string(), theme));
        lines.push(field("held-out share ", format!("{:.1}%", c.data.val_fraction * 100.0), theme));
    }
    lines
}
