//! Widgets of the studio that ratatui does not have.

pub mod halfblock;
pub mod kitty;
