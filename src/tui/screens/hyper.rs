//! The hyperparameter panel's editor: pick a setting, nudge it with `+`/`-` (a log scale for the
//! learning rate and beta) or type a value, and apply it to the run's `config.toml`.
//!
//! The editor only prepares an [`Edit`]; the event loop writes it with
//! [`crate::config::edit_file_checked`], which keeps the file's comments and refuses to
//! overwrite a value that an editor changed meanwhile.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use crate::config::{effect_of, Config, Effect};
use crate::tui::series::fmt_value;
use crate::tui::theme::Theme;

/// How `+` and `-` move a setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Multiply or divide by this factor (learning rate, beta).
    Log(f64),
    /// Add or subtract this step, never below zero.
    Linear(f64),
    /// A whole number: add or subtract this step, never below one.
    Whole(i64),
    /// A whole number: double or halve, never below one.
    Doubling,
}

/// A setting the panel can edit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Editable {
    /// The dotted config key.
    pub key: &'static str,
    /// How `+`/`-` move it.
    pub scale: Scale,
}

/// The settings the panel edits, in display order.
pub const EDITABLE: [Editable; 9] = [
    Editable {
        key: "train.lr",
        scale: Scale::Log(1.25),
    },
    Editable {
        key: "train.beta",
        scale: Scale::Log(1.25),
    },
    Editable {
        key: "train.kl_warmup_steps",
        scale: Scale::Whole(100),
    },
    Editable {
        key: "train.grad_clip",
        scale: Scale::Linear(0.5),
    },
    Editable {
        key: "train.batch_size",
        scale: Scale::Doubling,
    },
    Editable {
        key: "train.steps",
        scale: Scale::Whole(500),
    },
    Editable {
        key: "train.sample_every",
        scale: Scale::Whole(50),
    },
    Editable {
        key: "train.checkpoint_every",
        scale: Scale::Whole(100),
    },
    Editable {
        key: "ui.smoothing",
        scale: Scale::Linear(0.05),
    },
];

/// A change ready to be written to the run's config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The dotted key.
    pub key: &'static str,
    /// The new value.
    pub value: f64,
    /// The value the file held when the edit began; the write is refused if it changed.
    pub base: f64,
    /// Whether the value is a whole number.
    pub whole: bool,
}

/// A value being prepared for one setting.
#[derive(Debug, Clone, PartialEq)]
struct Draft {
    index: usize,
    base: f64,
    value: f64,
    /// Text typed so far, while typing.
    typed: Option<String>,
    error: Option<String>,
}

/// State of the editor.
#[derive(Debug, Clone, Default)]
pub struct HyperEditor {
    /// The highlighted row of [`EDITABLE`].
    pub selected: usize,
    draft: Option<Draft>,
}

/// The current value of an editable key in `config`.
pub fn value_of(config: &Config, key: &str) -> f64 {
    let t = &config.train;
    match key {
        "train.lr" => t.lr,
        "train.beta" => t.beta,
        "train.kl_warmup_steps" => t.kl_warmup_steps as f64,
        "train.grad_clip" => t.grad_clip,
        "train.batch_size" => t.batch_size as f64,
        "train.steps" => t.steps as f64,
        "train.sample_every" => t.sample_every as f64,
        "train.checkpoint_every" => t.checkpoint_every as f64,
        "ui.smoothing" => config.ui.smoothing,
        _ => f64::NAN,
    }
}

/// Moves `value` one notch up or down on `scale`.
pub fn nudge(value: f64, scale: Scale, up: bool) -> f64 {
    match scale {
        Scale::Log(f) => {
            let v = if value > 0.0 { value } else { 1e-4 };
            if up {
                v * f
            } else {
                v / f
            }
        }
        Scale::Linear(s) => (if up { value + s } else { value - s }).max(0.0),
        Scale::Whole(s) => (if up {
            value + s as f64
        } else {
            value - s as f64
        })
        .max(1.0),
        Scale::Doubling => (if up {
            value * 2.0
        } else {
            (value / 2.0).floor()
        })
        .max(1.0),
    }
}

fn whole(scale: Scale) -> bool {
    matches!(scale, Scale::Whole(_) | Scale::Doubling)
}

fn show(value: f64, scale: Scale) -> String {
    match scale {
        Scale::Log(_) => format!("{value:.3e}"),
        Scale::Whole(_) | Scale::Doubling => format!("{value:.0}"),
        Scale::Linear(_) => fmt_value(value),
    }
}

impl HyperEditor {
    /// Whether a value is being prepared (keys then belong to the editor first).
    pub fn editing(&self) -> bool {
        self.draft.is_some()
    }

    /// Whether text is being typed (every printable key is then part of the value).
    pub fn typing(&self) -> bool {
        self.draft.as_ref().is_some_and(|d| d.typed.is_some())
    }

    /// Answers a key while the panel has focus; `Some` is an edit to write. The bool says
    /// whether the key was used.
    pub fn on_key(&mut self, key: KeyEvent, config: Option<&Config>) -> (bool, Option<Edit>) {
        let Some(config) = config else {
            return (false, None);
        };
        if self.typing() {
            return (true, self.on_typing_key(key));
        }
        let n = EDITABLE.len();
        match key.code {
            KeyCode::Char('j') | KeyCode::Down if self.draft.is_none() => {
                self.selected = (self.selected + 1) % n
            }
            KeyCode::Char('k') | KeyCode::Up if self.draft.is_none() => {
                self.selected = (self.selected + n - 1) % n
            }
            KeyCode::Char('+' | '=') => self.nudge_draft(config, true),
            KeyCode::Char('-' | '_') => self.nudge_draft(config, false),
            KeyCode::Enter if self.draft.is_some() => return (true, self.finish()),
            KeyCode::Enter | KeyCode::Char('e') => {
                let d = self.start(config);
                d.typed = Some(String::new());
            }
            KeyCode::Esc if self.draft.is_some() => self.draft = None,
            _ => return (false, None),
        }
        (true, None)
    }

    fn start(&mut self, config: &Config) -> &mut Draft {
        let index = self.selected;
        if self.draft.as_ref().is_none_or(|d| d.index != index) {
            let base = value_of(config, EDITABLE[index].key);
            self.draft = Some(Draft {
                index,
                base,
                value: base,
                typed: None,
                error: None,
            });
        }
        self.draft.as_mut().expect("a draft was just made")
    }

    fn nudge_draft(&mut self, config: &Config, up: bool) {
        let scale = EDITABLE[self.selected].scale;
        let d = self.start(config);
        d.value = nudge(d.value, scale, up);
        d.error = None;
    }

    fn on_typing_key(&mut self, key: KeyEvent) -> Option<Edit> {
        let d = self.draft.as_mut()?;
        let typed = d.typed.as_mut()?;
        match key.code {
            KeyCode::Char(c) if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') => {
                typed.push(c)
            }
            KeyCode::Backspace => {
                typed.pop();
            }
            KeyCode::Esc => self.draft = None,
            KeyCode::Enter => {
                let text = typed.trim().to_string();
                let scale = EDITABLE[d.index].scale;
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 && (!whole(scale) || v.fract() == 0.0) => {
                        d.value = v;
                        d.typed = None;
                        return self.finish();
                    }
                    _ => {
                        let what = if whole(scale) {
                            "a whole number"
                        } else {
                            "a number ≥ 0"
                        };
                        d.error = Some(format!("`{text}` is not {what}"));
                    }
                }
            }
            _ => {}
        }
        None
    }

    fn finish(&mut self) -> Option<Edit> {
        let d = self.draft.take()?;
        let e = EDITABLE[d.index];
        Some(Edit {
            key: e.key,
            value: d.value,
            base: d.base,
            whole: whole(e.scale),
        })
    }

    /// Draws the editable settings, the selected one highlighted, into `area`.
    pub fn render(
        &self,
        area: Rect,
        buf: &mut Buffer,
        config: Option<&Config>,
        focused: bool,
        theme: &Theme,
    ) {
        let Some(config) = config else {
            Paragraph::new(Span::styled(
                "waiting for the run's config.toml…",
                theme.dim,
            ))
            .render(area, buf);
            return;
        };
        let rows = usize::from(area.height).saturating_sub(1).max(1);
        let first = self.selected.saturating_sub(rows - 1);
        let mut lines: Vec<Line> = Vec::new();
        for (i, e) in EDITABLE.iter().enumerate().skip(first).take(rows) {
            let current = show(value_of(config, e.key), e.scale);
            let label = e.key.split_once('.').map_or(e.key, |(_, k)| k);
            let when = match effect_of(e.key) {
                Effect::Live => "",
                Effect::NextEpoch => " (next epoch)",
                Effect::Restart => " (new run)",
            };
            let mut spans = vec![Span::styled(format!("{label:<17}"), theme.dim)];
            match self.draft.as_ref().filter(|d| d.index == i) {
                Some(d) => {
                    let shown = d
                        .typed
                        .clone()
                        .map_or_else(|| show(d.value, e.scale), |t| format!("{t}▏"));
                    spans.push(Span::styled(format!("{current} → "), theme.text));
                    spans.push(Span::styled(shown, theme.warn));
                }
                None => spans.push(Span::styled(format!("{current}{when}"), theme.text)),
            }
            let style = if focused && i == self.selected {
                theme.selection
            } else {
                theme.text
            };
            lines.push(Line::from(spans).style(style));
        }
        let hint = match &self.draft {
            Some(Draft { error: Some(e), .. }) => Span::styled(e.clone(), theme.error),
            Some(Draft { typed: Some(_), .. }) => {
                Span::styled("type a value · Enter apply · Esc cancel", theme.dim)
            }
            Some(_) => Span::styled("+/- change · Enter apply · Esc cancel", theme.dim),
            None if focused => Span::styled("j/k pick · +/- change · e type", theme.dim),
            None => Span::styled("focus this panel (h/l or click) to edit", theme.dim),
        };
        lines.push(Line::from(hint));
        Paragraph::new(lines).render(area, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyModifiers;

    fn press(ed: &mut HyperEditor, code: KeyCode, c: &Config) -> Option<Edit> {
        ed.on_key(KeyEvent::new(code, KeyModifiers::NONE), Some(c))
            .1
    }

    #[test]
    fn plus_and_minus_move_the_learning_rate_on_a_log_scale() {
        let c = Config::default();
        let mut ed = HyperEditor::default();
        press(&mut ed, KeyCode::Char('+'), &c);
        press(&mut ed, KeyCode::Char('+'), &c);
        let edit = press(&mut ed, KeyCode::Enter, &c).expect("an edit");
        assert_eq!(edit.key, "train.lr");
        assert!((edit.value - c.train.lr * 1.25 * 1.25).abs() < 1e-12);
        assert_eq!(edit.base, c.train.lr);
        assert!(!ed.editing());
    }

    #[test]
    fn typed_values_are_checked_and_whole_numbers_stay_whole() {
        let c = Config::default();
        let mut ed = HyperEditor {
            selected: 4,
            ..Default::default()
        };
        press(&mut ed, KeyCode::Char('e'), &c);
        for ch in "12.5".chars() {
            press(&mut ed, KeyCode::Char(ch), &c);
        }
        assert!(
            press(&mut ed, KeyCode::Enter, &c).is_none(),
            "12.5 is no batch size"
        );
        assert!(ed.typing());
        for _ in 0..4 {
            press(&mut ed, KeyCode::Backspace, &c);
        }
        for ch in "32".chars() {
            press(&mut ed, KeyCode::Char(ch), &c);
        }
        let edit = press(&mut ed, KeyCode::Enter, &c).expect("an edit");
        assert_eq!(
            (edit.key, edit.value, edit.whole),
            ("train.batch_size", 32.0, true)
        );
    }

    #[test]
    fn escape_drops_the_draft_and_selection_wraps() {
        let c = Config::default();
        let mut ed = HyperEditor::default();
        press(&mut ed, KeyCode::Char('k'), &c);
        assert_eq!(ed.selected, EDITABLE.len() - 1);
        press(&mut ed, KeyCode::Char('-'), &c);
        assert!(ed.editing());
        press(&mut ed, KeyCode::Esc, &c);
        assert!(!ed.editing());
        assert_eq!(nudge(1.0, Scale::Doubling, false), 1.0);
        assert_eq!(nudge(0.0, Scale::Linear(0.5), false), 0.0);
    }
}
