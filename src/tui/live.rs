//! Live settings in the studio: writing the panel's edits to the run's `config.toml`, carrying
//! edits of the user's own config file over to the run, noticing when the trainer has taken a
//! change in, and following theme and UI settings as they change.
//!
//! The trainer watches only its run's `config.toml`; that file is the one control surface of a
//! run, so every change the studio makes or forwards is written there, with its comments kept.

use std::time::Instant;

use crate::config::{self, effect_of, Config, Effect};
use crate::run::RunDir;

use super::app::{App, Tone};
use super::screens::hyper::{value_of, Edit};
use super::theme::Theme;
use super::Watched;

/// Writes an edit from the hyperparameter panel to the run's config file.
pub fn write_edit(app: &mut App, run: &RunDir, edit: &Edit) {
    let path = run.config();
    let item = if edit.whole {
        toml_edit::value(edit.value.round() as i64)
    } else {
        toml_edit::value(edit.value)
    };
    let unchanged = |now: &Config| {
        let current = value_of(now, edit.key);
        if same(current, edit.base) {
            Ok(())
        } else {
            Err(format!(
                "changed in the file meanwhile (now {current}); not overwritten, edit it again"
            ))
        }
    };
    match config::edit_file_checked(&path, edit.key, item, unchanged) {
        Ok(()) => {
            tracing::info!("wrote {} = {} to {}", edit.key, edit.value, path.display());
            app.awaiting = Some((edit.key.to_string(), edit.value, Instant::now()));
            let note = match effect_of(edit.key) {
                Effect::NextEpoch => " (takes effect at the next epoch)",
                _ => "",
            };
            app.say(
                format!(
                    "{} = {} written to {}{note}; waiting for the trainer…",
                    edit.key,
                    edit.value,
                    path.display()
                ),
                Tone::Info,
            );
        }
        Err(e) => app.say(format!("not applied: {e}"), Tone::Error),
    }
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// After the run's files were read: report a change taken in, a config error, new UI settings.
pub fn after_poll(app: &mut App) {
    if let Some((key, value, since)) = app.awaiting.clone() {
        let taken = app
            .data
            .settings
            .iter()
            .rev()
            .find(|s| s.key == key && s.value.parse::<f64>().is_ok_and(|v| same(v, value)))
            .map(|s| s.step);
        if let Some(step) = taken {
            let secs = since.elapsed().as_secs_f64();
            let text = format!(
                "{key} = {value} picked up by the trainer from step {step} ({secs:.1} s after \
                 the write)"
            );
            app.say(text, Tone::Info);
            tracing::info!("{key} picked up at step {step} after {secs:.3} s");
            app.awaiting = None;
        }
    }
    if let Some(e) = app.data.config_error.clone() {
        if app.message.as_ref().is_none_or(|(m, _)| !m.contains(&e)) {
            app.say(
                format!("rejected, the previous settings stay in force: {e}"),
                Tone::Error,
            );
        }
    }
    announce_trouble(app);
    apply_ui(app);
}

/// Puts a trainer that stopped on a problem (a divergence, a failed write) in the message line,
/// with what the user can do about it, once per occurrence.
fn announce_trouble(app: &mut App) {
    let Some(status) = app.data.status.as_ref() else {
        return;
    };
    let text = match status.state.as_str() {
        "diverged" => format!(
            "training diverged ({}): r rolls back to the last good checkpoint with a tenth of \
             the learning rate, space resumes as it is",
            status.detail
        ),
        "write-failed" => format!(
            "training paused, a write failed: {}; it retries every 30 s (space retries now)",
            status.detail
        ),
        _ => return,
    };
    if app.message.as_ref().is_none_or(|(m, _)| *m != text) {
        app.say(text, Tone::Error);
    }
}

/// Takes in changed UI settings of the run's config: the theme and the chart's smoothing.
fn apply_ui(app: &mut App) {
    let Some(ui) = app.data.config.as_ref().map(|c| c.ui.clone()) else {
        return;
    };
    let Some(seen) = app.ui_seen.replace(ui.clone()) else {
        return;
    };
    if seen.smoothing != ui.smoothing {
        app.training.smoothing = ui
            .smoothing
            .clamp(0.0, super::screens::training::SMOOTHING_MAX);
    }
    if seen.theme != ui.theme {
        load_theme(app, &ui.theme);
    }
}

fn load_theme(app: &mut App, name: &str) {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return;
    }
    match Theme::load(name) {
        Ok(theme) => {
            tracing::info!("theme `{name}` loaded");
            app.theme = theme;
            app.dirty = true;
        }
        Err(e) => app.say(format!("theme not changed: {e}"), Tone::Error),
    }
}

/// Answers settled edits of the user's config file and of theme files.
pub fn watch_files(app: &mut App, watch: &mut Watched) {
    let themes_changed = watch
        .themes_rx
        .as_ref()
        .map(|w| w.rx.try_iter().map(|c| c.path).collect::<Vec<_>>());
    for path in themes_changed.unwrap_or_default() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem == app.theme.name {
            load_theme(app, &stem);
        }
    }
    let edited = watch
        .config_rx
        .as_ref()
        .is_some_and(|w| w.rx.try_iter().count() > 0);
    if edited {
        forward_config(app, watch);
    }
}

/// Carries the live and next-epoch changes of the user's config file over to the run's file;
/// changes that need a new run are reported as pending.
fn forward_config(app: &mut App, watch: &mut Watched) {
    let Some((path, old)) = watch.config.as_mut() else {
        return;
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            app.say(
                format!("rejected, the previous settings stay in force: {e}"),
                Tone::Error,
            );
            return;
        }
    };
    let run_config = RunDir::new(&app.data.root).config();
    let mut pending = Vec::new();
    let mut forwarded = Vec::new();
    for change in old.changes(&new) {
        if change.effect == Effect::Restart {
            pending.push(format!("{} = {}", change.key, change.new));
            continue;
        }
        let Ok(value) = change.new.parse::<toml_edit::Value>() else {
            continue;
        };
        match config::edit_file(&run_config, &change.key, toml_edit::Item::Value(value)) {
            Ok(()) => {
                if let Ok(v) = change.new.parse::<f64>() {
                    app.awaiting = Some((change.key.clone(), v, Instant::now()));
                }
                forwarded.push(format!("{} = {}", change.key, change.new));
            }
            Err(e) => app.say(format!("not applied: {e}"), Tone::Error),
        }
    }
    *old = new;
    if !pending.is_empty() {
        let file = path.display();
        app.say(
            format!(
                "pending, needs a new run: {} (start one with `facestudio train --config {file}`)",
                pending.join(", ")
            ),
            Tone::Error,
        );
    } else if !forwarded.is_empty() {
        app.say(
            format!(
                "{} forwarded to the run; waiting for the trainer…",
                forwarded.join(", ")
            ),
            Tone::Info,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::SettingRecord;
    use crate::tui::follow::RunData;

    fn studio(dir: &std::path::Path) -> (App, RunDir) {
        let run = RunDir::new(dir.join("run"));
        run.create().unwrap();
        let text = "# my notes on this run\n[train]\nlr = 0.001 # the rate\nbeta = 1.0\n\n\
                    [ui]\ntheme = \"dark\"\n"
            .to_string();
        std::fs::write(run.config(), text).unwrap();
        let mut data = RunData::new(&run.root);
        data.config = Some(Config::load(&run.config()).unwrap());
        (App::new(data, Theme::default(), 0.6), run)
    }

    #[test]
    fn a_panel_edit_keeps_the_comments_and_waits_for_the_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, run) = studio(dir.path());
        write_edit(
            &mut app,
            &run,
            &Edit {
                key: "train.lr",
                value: 0.0005,
                base: 0.001,
                whole: false,
            },
        );
        let text = std::fs::read_to_string(run.config()).unwrap();
        assert!(
            text.contains("# my notes on this run") && text.contains("# the rate"),
            "{text}"
        );
        assert_eq!(Config::load(&run.config()).unwrap().train.lr, 0.0005);
        assert_eq!(
            app.awaiting.as_ref().map(|a| a.0.as_str()),
            Some("train.lr")
        );

        app.data.settings.push(SettingRecord {
            step: 41,
            key: "train.lr".into(),
            value: "0.0005".into(),
        });
        after_poll(&mut app);
        assert!(app.awaiting.is_none());
        let (msg, _) = app.message.clone().unwrap();
        assert!(
            msg.contains("picked up by the trainer from step 41"),
            "{msg}"
        );
    }

    #[test]
    fn an_edit_made_in_an_editor_meanwhile_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, run) = studio(dir.path());
        let text = std::fs::read_to_string(run.config())
            .unwrap()
            .replace("lr = 0.001", "lr = 0.003");
        std::fs::write(run.config(), text).unwrap();
        write_edit(
            &mut app,
            &run,
            &Edit {
                key: "train.lr",
                value: 0.0005,
                base: 0.001,
                whole: false,
            },
        );
        assert_eq!(Config::load(&run.config()).unwrap().train.lr, 0.003);
        let (msg, tone) = app.message.clone().unwrap();
        assert_eq!(tone, Tone::Error);
        assert!(
            msg.contains("changed in the file meanwhile") && msg.contains("train.lr"),
            "{msg}"
        );
        assert!(app.awaiting.is_none());
    }

    #[test]
    fn a_theme_change_in_the_config_recolours_the_studio_and_errors_are_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, _run) = studio(dir.path());
        after_poll(&mut app);
        let dark_text = app.theme.text;
        app.data.config.as_mut().unwrap().ui.theme = "light".into();
        after_poll(&mut app);
        if std::env::var_os("NO_COLOR").is_none() {
            assert_eq!(app.theme.name, "light");
            assert_ne!(app.theme.text, dark_text);
        }
        app.data.config_error = Some("config.toml:3: train.lr: must be positive".into());
        after_poll(&mut app);
        let (msg, tone) = app.message.clone().unwrap();
        assert_eq!(tone, Tone::Error);
        assert!(
            msg.contains("previous settings stay in force") && msg.contains("train.lr"),
            "{msg}"
        );
    }

    #[test]
    fn edits_of_the_users_file_are_forwarded_and_restart_keys_are_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, run) = studio(dir.path());
        let user = dir.path().join("facestudio.toml");
        std::fs::write(&user, "[train]\nbeta = 1.0\n").unwrap();
        let mut watch = Watched {
            config: Some((user.clone(), Config::load(&user).unwrap())),
            ..Default::default()
        };
        std::fs::write(&user, "[train]\nbeta = 0.5\n").unwrap();
        forward_config(&mut app, &mut watch);
        assert_eq!(Config::load(&run.config()).unwrap().train.beta, 0.5);
        assert!(std::fs::read_to_string(run.config())
            .unwrap()
            .contains("# the rate"));

        std::fs::write(&user, "[train]\nbeta = 0.5\n[model]\nlatent = 32\n").unwrap();
        forward_config(&mut app, &mut watch);
        let (msg, _) = app.message.clone().unwrap();
        assert!(
            msg.contains("model.latent = 32") && msg.contains("needs a new run"),
            "{msg}"
        );
        assert_eq!(
            Config::load(&run.config()).unwrap().model.latent,
            Config::default().model.latent
        );
    }
}
