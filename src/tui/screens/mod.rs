//! The studio's screens. Each has its own state type with a `render` that lays out its panels,
//! builds their widgets and draws them, and a list of the keys it answers (for the help).

pub mod datasets;
pub mod gallery;
pub mod hyper;
pub mod training;

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType};

use super::theme::Theme;

/// One entry of the help overlay: the keys and what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHelp {
    /// The keys, as written in the help.
    pub keys: &'static str,
    /// What they do.
    pub what: &'static str,
}

/// Shorthand for a [`KeyHelp`].
pub const fn key(keys: &'static str, what: &'static str) -> KeyHelp {
    KeyHelp { keys, what }
}

/// A bordered panel with a title, its border highlighted when focused.
pub fn panel<'a>(title: impl Into<String>, focused: bool, theme: &Theme) -> Block<'a> {
    let border = if focused {
        theme.border_focus
    } else {
        theme.border
    };
    Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Rounded
        })
        .border_style(border)
        .title(Line::from(Span::styled(
            format!(" {} ", title.into()),
            theme.title,
        )))
}

/// Whether a point lies in a rectangle.
pub fn contains(rect: Rect, x: u16, y: u16) -> bool {
    x >= rect.x && x < rect.right() && y >= rect.y && y < rect.bottom()
}

/// A `label value` line with the label dimmed.
pub fn field<'a>(label: &str, value: String, theme: &Theme) -> Line<'a> {
    Line::from(vec![
        Span::styled(format!("{label} "), theme.dim),
        Span::styled(value, theme.text),
    ])
}
