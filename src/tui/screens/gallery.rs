//! The gallery screen: the newest sample grid, large.
//!
//! Not built yet: the real gallery (fixed seeds that sharpen as training goes, a selected face
//! shown large, reconstructions, interpolation, latent walks, time-lapse, nearest training
//! image) and graphics protocols other than half-blocks.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Paragraph, Widget};

use super::KeyHelp;
use crate::tui::follow::RunData;
use crate::tui::theme::Theme;
use crate::tui::widgets::halfblock::SampleView;

/// The keys of the gallery screen (none beyond the global ones yet).
pub const KEYS: [KeyHelp; 0] = [];

/// State of the gallery screen.
#[derive(Debug, Clone, Default)]
pub struct GalleryScreen {
    /// A caption that replaces the run's sample step (a finished model's description).
    pub caption: Option<String>,
}

impl GalleryScreen {
    /// Draws the screen into `area`.
    pub fn render(&self, area: Rect, buf: &mut Buffer, data: &RunData, theme: &Theme, sample: &mut SampleView) {
        let title = match (&self.caption, &data.sample) {
            (Some(c), _) => c.clone(),
            (None, Some((step, _))) => format!("samples · step {step}"),
            (None, None) => "samples".to_string(),
        };
        let block = super::panel(title, false, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        let [image, hint] = Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(inner);

        if let Some(e) = sample.error() {
            Paragraph::new(Span::styled(e.to_string(), theme.error)).render(image, buf);
        } else if sample.has_image() {
            sample.render(image, buf, theme.image);
        } else {
            let text = "no sample grid yet: the trainer writes one every train.sample_every steps";
            Paragraph::new(Span::styled(text, theme.dim)).render(image, buf);
        }
        let note = "the same faces (fixed latent seeds) at each sample step; drawn with half-blocks";
        Paragraph::new(Span::styled(note, theme.dim)).render(hint, buf);
    }
}
