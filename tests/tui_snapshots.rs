//! The studio's screens drawn on a fixed-size `TestBackend` with seeded data, and its state
//! logic (keys, tabs, pause, quit dialog, smoothing, help) driven without a terminal.

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use facestudio::config::Config;
use facestudio::control::Status;
use facestudio::run::{SettingRecord, StepRecord, ValRecord};
use facestudio::tui::app::{Action, App, Overlay, Screen};
use facestudio::tui::follow::{LogLevel, LogLine, RunData};
use facestudio::tui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;

/// A run at step 200 of 1000 with a falling loss, validation every 20 steps, two setting
/// changes, a status, a log and a sample grid on disk.
fn seeded(dir: &Path, alive: bool) -> RunData {
    let mut data = RunData::new(&dir.join("run-test"));
    for step in 1..=200u64 {
        let s = step as f64;
        let recon = 900.0 / (1.0 + s / 20.0) + 100.0 + (s * 0.7).sin() * 5.0;
        let kl = 5.0 + 20.0 * (1.0 - (-s / 50.0).exp());
        data.push_record(facestudio::run::Record::Train(StepRecord {
            step,
            epoch: s / 12.0,
            time: s * 0.25,
            total: recon + kl,
            recon,
            kl,
            beta: 1.0,
            lr: 2e-3,
            ips: 128.0,
        }));
        if step % 20 == 0 {
            let v = ValRecord {
                step,
                epoch: s / 12.0,
                time: s * 0.25,
                total: recon + kl + 3.0,
                recon: recon + 2.0,
                kl,
            };
            data.push_record(facestudio::run::Record::Val(v));
        }
    }
    data.settings.push(SettingRecord {
        step: 80,
        key: "train.beta".into(),
        value: "1.0".into(),
    });
    data.settings.push(SettingRecord {
        step: 150,
        key: "train.lr".into(),
        value: "0.002".into(),
    });
    data.status = Some(Status {
        pid: std::process::id(),
        state: "running".into(),
        step: 200,
        total_steps: 1000,
        device: "cpu".into(),
        dataset: "synthetic".into(),
        train_images: 365,
        val_images: 19,
        parameters: 133_827,
        ..Default::default()
    });
    data.alive = alive;
    let mut config = Config::default();
    config.model.image_size = 32;
    config.model.latent = 16;
    config.train.batch_size = 32;
    config.data.synthetic_count = 384;
    data.config = Some(config);
    data.push_log(LogLine {
        time: "10:00:01".into(),
        level: LogLevel::Info,
        text: "checkpoint at step 150".into(),
    });
    data.push_log(LogLine {
        time: "10:00:02".into(),
        level: LogLevel::Warn,
        text: "skipped bad.jpg: truncated".into(),
    });
    data.push_log(LogLine {
        time: "10:00:03".into(),
        level: LogLevel::Error,
        text: "sample grid: disk full".into(),
    });

    let samples = dir.join("run-test/samples");
    std::fs::create_dir_all(&samples).unwrap();
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let path = samples.join("step-00000200.png");
    img.save(&path).unwrap();
    data.sample = Some((200, path));
    data
}

fn app(dir: &Path, alive: bool) -> App {
    let mut app = App::new(seeded(dir, alive), Theme::load("dark").unwrap(), 0.6);
    app.sync_sample();
    app
}

fn draw(app: &mut App, w: u16, h: u16) -> (Vec<String>, ratatui::buffer::Buffer) {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| app.render(f.area(), f.buffer_mut())).unwrap();
    let buf = term.backend().buffer().clone();
    let lines = (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect())
        .collect();
    (lines, buf)
}

fn screen_text(lines: &[String]) -> String {
    lines.join("\n")
}

fn press(app: &mut App, code: KeyCode) -> Action {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn assert_frame(lines: &[String], w: u16) {
    assert!(
        lines[0].contains("1 Datasets")
            && lines[0].contains("2 Training")
            && lines[0].contains("3 Gallery")
    );
    let status = lines.last().unwrap();
    for part in ["run-test", "cpu", "step 200/1000", "running", "halfblocks"] {
        assert!(status.contains(part), "status bar lacks {part}: {status}");
    }
    assert!(lines.iter().all(|l| l.chars().count() == w as usize));
}

#[test]
fn training_screen_at_80x24_and_160x48() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(80, 24), (160, 48)] {
        let mut app = app(dir.path(), true);
        let (lines, buf) = draw(&mut app, w, h);
        let text = screen_text(&lines);
        assert_frame(&lines, w);
        for part in [
            "progress",
            "losses",
            "hyperparameters",
            "total · smoothing 0.60",
            "log",
            "step 200",
            "/ 1000",
            "img/s 128.0",
            "elapsed 50s",
            "ETA 3m20s",
            "recon",
            "KL",
            "2.00e-3",
            "batch",
            "32",
            "latent",
            "16",
            "synthetic",
            "checkpoint at step 150",
            "sample grid: disk",
            "validation at step 200",
        ] {
            assert!(text.contains(part), "{w}x{h} lacks `{part}`:\n{text}");
        }
        // The panels' corners sit where the layout puts them.
        assert_eq!(lines[1].chars().next(), Some('╭'), "{w}x{h}:\n{text}");
        assert!(
            text.contains('↓'),
            "a falling loss shows a down arrow:\n{text}"
        );
        // The sample grid is drawn with half-blocks in the image's colours.
        let half = buf
            .content()
            .iter()
            .filter(|c| c.symbol() == "▀" && matches!(c.fg, Color::Rgb(..)))
            .count();
        assert!(half > 20, "{w}x{h}: only {half} half-block cells");
    }
}

#[test]
fn datasets_and_gallery_screens_at_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(80, 24), (160, 48)] {
        let mut app = app(dir.path(), true);
        press(&mut app, KeyCode::Char('1'));
        let (lines, _) = draw(&mut app, w, h);
        let text = screen_text(&lines);
        assert_frame(&lines, w);
        for part in [
            "data set",
            "synthetic",
            "384",
            "365",
            "19",
            "unreadable",
            "1 (from the run's log)",
            "32×32 px",
        ] {
            assert!(
                text.contains(part),
                "{w}x{h} datasets lacks `{part}`:\n{text}"
            );
        }
        press(&mut app, KeyCode::Char('3'));
        let (lines, buf) = draw(&mut app, w, h);
        let text = screen_text(&lines);
        assert_frame(&lines, w);
        assert!(text.contains("samples · step 200"), "{text}");
        let half = buf.content().iter().filter(|c| c.symbol() == "▀").count();
        assert!(
            half > 200,
            "{w}x{h}: the gallery image is too small ({half} cells)"
        );
    }
}

#[test]
fn help_overlay_lists_every_key_of_each_screen() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(80, 24), (160, 48)] {
        for screen in ['1', '2', '3'] {
            let mut app = app(dir.path(), true);
            press(&mut app, KeyCode::Char(screen));
            press(&mut app, KeyCode::Char('?'));
            assert_eq!(app.overlay, Some(Overlay::Help));
            let (lines, _) = draw(&mut app, w, h);
            let text = screen_text(&lines);
            assert!(
                text.contains(&format!("keys · {}", app.screen.title())),
                "{text}"
            );
            for k in app.help_keys() {
                assert!(
                    text.contains(k.keys),
                    "{w}x{h} help lacks `{}`:\n{text}",
                    k.keys
                );
                assert!(
                    text.contains(k.what),
                    "{w}x{h} help lacks `{}`:\n{text}",
                    k.what
                );
            }
            press(&mut app, KeyCode::Esc);
            assert_eq!(app.overlay, None);
        }
    }
    let mut app = app(dir.path(), true);
    let training: Vec<_> = app.help_keys().iter().map(|k| k.keys).collect();
    press(&mut app, KeyCode::Char('1'));
    let datasets: Vec<_> = app.help_keys().iter().map(|k| k.keys).collect();
    assert!(training.contains(&"t / T") && !datasets.contains(&"t / T"));
}

#[test]
fn quit_dialog_is_drawn_with_its_choices() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    press(&mut app, KeyCode::Char('q'));
    let (lines, _) = draw(&mut app, 80, 24);
    let text = screen_text(&lines);
    for part in [
        "Stop training (saves a checkpoint)",
        "Detach (training continues headless)",
        "Cancel",
        "facestudio watch",
    ] {
        assert!(text.contains(part), "lacks `{part}`:\n{text}");
    }
}

#[test]
fn tiny_terminals_get_a_compact_view_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [
        (79, 24),
        (80, 23),
        (40, 10),
        (20, 5),
        (1, 1),
        (0, 0),
        (200, 1),
    ] {
        for screen in ['1', '2', '3'] {
            let mut app = app(dir.path(), true);
            press(&mut app, KeyCode::Char(screen));
            press(&mut app, KeyCode::Char('?'));
            let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
            term.draw(|f| app.render(f.area(), f.buffer_mut())).unwrap();
        }
    }
    let mut app = app(dir.path(), true);
    let (lines, _) = draw(&mut app, 60, 10);
    let text = screen_text(&lines);
    assert!(text.contains("enlarge the window (needs 80x24)"), "{text}");
    assert!(text.contains("step 200/1000"), "{text}");
}

#[test]
fn mono_theme_draws_no_colour_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::new(seeded(dir.path(), true), Theme::load("mono").unwrap(), 0.6);
    app.sync_sample();
    for screen in ['1', '2', '3'] {
        press(&mut app, KeyCode::Char(screen));
        let (_, buf) = draw(&mut app, 120, 40);
        for c in buf.content() {
            assert_eq!(
                (c.fg, c.bg),
                (Color::Reset, Color::Reset),
                "coloured cell {:?}",
                c.symbol()
            );
        }
    }
}

#[test]
fn empty_run_draws_waiting_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::new(
        RunData::new(&dir.path().join("fresh")),
        Theme::default(),
        0.6,
    );
    let (lines, _) = draw(&mut app, 80, 24);
    let text = screen_text(&lines);
    for part in [
        "waiting for the first logged step",
        "no log lines yet",
        "no sample",
        "waiting",
    ] {
        assert!(text.contains(part), "lacks `{part}`:\n{text}");
    }
}

#[test]
fn number_keys_and_tab_switch_screens() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    assert_eq!(app.screen, Screen::Training);
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(app.screen, Screen::Datasets);
    press(&mut app, KeyCode::Char('3'));
    assert_eq!(app.screen, Screen::Gallery);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.screen, Screen::Datasets);
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.screen, Screen::Gallery);
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(app.screen, Screen::Training);
}

#[test]
fn clicks_switch_tabs_and_focus_panels() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    draw(&mut app, 100, 30);
    let click = |x, y| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: x,
        row: y,
        modifiers: KeyModifiers::NONE,
    };
    // The log panel sits at the bottom right.
    app.on_mouse(click(50, 25));
    assert_eq!(
        app.training.focus,
        facestudio::tui::screens::training::Panel::Log
    );
    app.on_mouse(click(3, 0));
    assert_eq!(app.screen, Screen::Datasets);
}

#[test]
fn space_pauses_and_resumes_a_live_trainer_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    assert_eq!(
        press(&mut app, KeyCode::Char(' ')),
        Action::Send("pause".into())
    );
    app.data.status.as_mut().unwrap().state = "paused".into();
    assert_eq!(
        press(&mut app, KeyCode::Char(' ')),
        Action::Send("resume".into())
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('s')),
        Action::Send("save".into())
    );

    let mut dead = self::app(dir.path(), false);
    assert_eq!(press(&mut dead, KeyCode::Char(' ')), Action::None);
    assert!(
        dead.message.as_ref().unwrap().0.contains("no trainer"),
        "{:?}",
        dead.message
    );
}

#[test]
fn quit_asks_when_training_runs_and_the_choices_decide() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    assert_eq!(press(&mut app, KeyCode::Char('q')), Action::None);
    assert!(matches!(app.overlay, Some(Overlay::Confirm { .. })));
    assert_eq!(press(&mut app, KeyCode::Esc), Action::None);
    assert_eq!(app.overlay, None);

    press(&mut app, KeyCode::Char('q'));
    assert_eq!(press(&mut app, KeyCode::Char('d')), Action::Detach);
    press(&mut app, KeyCode::Char('q'));
    assert_eq!(press(&mut app, KeyCode::Char('s')), Action::Stop);
    // Ctrl-C opens the same dialog; Enter takes the highlighted choice (detach by default).
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(matches!(app.overlay, Some(Overlay::Confirm { .. })));
    assert_eq!(press(&mut app, KeyCode::Enter), Action::Detach);
    press(&mut app, KeyCode::Char('q'));
    press(&mut app, KeyCode::Up);
    assert_eq!(press(&mut app, KeyCode::Enter), Action::Stop);

    let mut finished = self::app(dir.path(), false);
    assert_eq!(press(&mut finished, KeyCode::Char('q')), Action::Quit);
}

#[test]
fn smoothing_moves_in_steps_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    press(&mut app, KeyCode::Char('+'));
    assert!((app.training.smoothing - 0.65).abs() < 1e-9);
    for _ in 0..30 {
        press(&mut app, KeyCode::Char('+'));
    }
    assert!((app.training.smoothing - 0.99).abs() < 1e-9);
    for _ in 0..40 {
        press(&mut app, KeyCode::Char('-'));
    }
    assert_eq!(app.training.smoothing, 0.0);
    let (lines, _) = draw(&mut app, 80, 24);
    assert!(screen_text(&lines).contains("smoothing 0.00"));
}

#[test]
fn series_cycle_and_ctrl_l_redraws() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    press(&mut app, KeyCode::Char('t'));
    let (lines, _) = draw(&mut app, 80, 24);
    assert!(screen_text(&lines).contains("recon · smoothing"));
    press(&mut app, KeyCode::Char('T'));
    press(&mut app, KeyCode::Char('T'));
    let (lines, _) = draw(&mut app, 80, 24);
    assert!(screen_text(&lines).contains("lr · smoothing"));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('l'), KeyModifiers::CONTROL)),
        Action::Redraw
    );
}

#[test]
fn log_scrolls_back_and_returns_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    for i in 0..50 {
        app.data.push_log(LogLine {
            time: String::new(),
            level: LogLevel::Info,
            text: format!("line {i}"),
        });
    }
    app.training.focus = facestudio::tui::screens::training::Panel::Log;
    press(&mut app, KeyCode::Char('k'));
    press(&mut app, KeyCode::Char('k'));
    assert_eq!(app.training.log_scroll, 2);
    let (lines, _) = draw(&mut app, 80, 24);
    let text = screen_text(&lines);
    assert!(
        text.contains("line 47") && !text.contains("line 49"),
        "{text}"
    );
    press(&mut app, KeyCode::Char('G'));
    assert_eq!(app.training.log_scroll, 0);
}

#[test]
fn pictures_draw_half_blocks_cell_by_cell() {
    use facestudio::tui::graphics::{Picture, Pictures};
    use facestudio::tui::theme::ImageMode;

    // A 4x4 image at its own size: each cell carries the upper pixel as foreground and the
    // lower one as background.
    let img = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 7]));
    let picture = Picture::new(img);
    let mut pictures = Pictures::default();
    let mut term = Terminal::new(TestBackend::new(4, 2)).unwrap();
    term.draw(|f| pictures.draw(&picture, f.area(), f.buffer_mut(), ImageMode::Color))
        .unwrap();
    let buf = term.backend().buffer();
    for y in 0..2u16 {
        for x in 0..4u16 {
            let c = &buf[(x, y)];
            let (top, bottom) = (y as u8 * 2, y as u8 * 2 + 1);
            assert_eq!(c.symbol(), "▀");
            assert_eq!(c.fg, Color::Rgb(x as u8 * 60, top * 60, 7), "cell {x},{y}");
            assert_eq!(
                c.bg,
                Color::Rgb(x as u8 * 60, bottom * 60, 7),
                "cell {x},{y}"
            );
        }
    }
    // In a wider area the picture is centred, aspect kept, and the rest left alone.
    let mut term = Terminal::new(TestBackend::new(8, 2)).unwrap();
    term.draw(|f| pictures.draw(&picture, f.area(), f.buffer_mut(), ImageMode::Color))
        .unwrap();
    let row: String = (0..8)
        .map(|x| term.backend().buffer()[(x, 0)].symbol().to_string())
        .collect();
    assert_eq!(row, "  ▀▀▀▀  ");
}

#[test]
fn gallery_and_browser_status_bar_names_the_protocol() {
    use facestudio::tui::graphics::{Decision, Pictures};
    use ratatui_image::picker::ProtocolType;

    let dir = tempfile::tempdir().unwrap();
    let mut app = app(dir.path(), true);
    let decision = Decision {
        protocol: ProtocolType::Sixel,
        cell: (8, 16),
        tmux: true,
        kitty_direct: false,
        why: "test".into(),
    };
    app.graphics = decision.label();
    app.pictures = Pictures::new(decision);
    for screen in ['1', '3'] {
        press(&mut app, KeyCode::Char(screen));
        let (lines, _) = draw(&mut app, 120, 30);
        assert!(
            lines.last().unwrap().contains("sixel+tmux"),
            "{}",
            lines.last().unwrap()
        );
    }
    // The gallery's own keys do not shadow the global ones.
    assert_eq!(
        press(&mut app, KeyCode::Char('s')),
        Action::Send("save".into())
    );
    press(&mut app, KeyCode::Char('v'));
    assert_eq!(
        app.gallery.view,
        facestudio::tui::screens::gallery::View::Reconstructions
    );
}

#[test]
fn a_finished_model_without_a_run_says_nothing_trains() {
    use facestudio::tui::follow::RunData;

    let data = RunData {
        name: "demo".into(),
        ..Default::default()
    };
    let mut app = App::new(data, Theme::load("dark").unwrap(), 0.6);
    app.controls = false;
    app.screen = facestudio::tui::app::Screen::Gallery;
    let (lines, _) = draw(&mut app, 100, 30);
    let status = lines.last().unwrap();
    assert!(
        status.contains("demo") && status.contains("no training"),
        "{status}"
    );
    assert!(!status.contains("waiting"), "{status}");
}
