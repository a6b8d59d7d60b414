//! The data set browser: escaped file names, a virtualised list over a huge listing, the
//! exclusion list that the loader honours, and a real folder listed, previewed and summarised.

use std::path::Path;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use facestudio::config::Crop;
use facestudio::data::folder;
use facestudio::tui::app::{App, Screen};
use facestudio::tui::follow::RunData;
use facestudio::tui::screens::datasets::{escape_name, DatasetsScreen, Listing, Origin};
use facestudio::tui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn press(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn draw(app: &mut App, w: u16, h: u16) -> ratatui::buffer::Buffer {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| app.render(f.area(), f.buffer_mut())).unwrap();
    term.backend().buffer().clone()
}

fn text(buf: &ratatui::buffer::Buffer) -> String {
    let a = buf.area;
    (0..a.height)
        .map(|y| {
            (0..a.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                + "\n"
        })
        .collect()
}

fn browser_app(screen: DatasetsScreen) -> App {
    let mut app = App::new(RunData::default(), Theme::load("dark").unwrap(), 0.6);
    app.datasets = screen;
    app.screen = Screen::Datasets;
    app
}

#[test]
fn names_with_escape_sequences_are_drawn_harmlessly() {
    let evil = "face\x1b]52;c;aGk=\x07\x1b[2J\u{202e}gnp.exe\r.png";
    let shown = escape_name(evil);
    assert_eq!(
        shown,
        "face\\x1b]52;c;aGk=\\x07\\x1b[2J\\u{202e}gnp.exe\\x0d.png"
    );
    let mut screen = DatasetsScreen::default();
    screen.set_names(vec![evil.to_string(), "plain.png".into()]);
    let mut app = browser_app(screen);
    let buf = draw(&mut app, 120, 30);
    let t = text(&buf);
    assert!(t.contains("face\\x1b]52;c;aGk=\\x07"), "{t}");
    for cell in buf.content() {
        assert!(
            !cell
                .symbol()
                .chars()
                .any(|c| c.is_control() || c == '\u{202e}'),
            "raw control in {:?}",
            cell.symbol()
        );
    }
}

#[test]
fn scrolling_a_huge_list_renders_only_visible_rows_and_decodes_nothing() {
    let n = 300_000;
    let mut screen = DatasetsScreen::default();
    screen.set_names((0..n).map(|i| format!("img_{i:07}.jpg")).collect());
    let mut app = browser_app(screen);
    let t = Instant::now();
    draw(&mut app, 160, 48);
    for _ in 0..200 {
        press(&mut app, KeyCode::PageDown);
        draw(&mut app, 160, 48);
    }
    press(&mut app, KeyCode::Char('G'));
    let buf = draw(&mut app, 160, 48);
    let elapsed = t.elapsed();
    let shown = text(&buf);
    assert!(
        shown.contains("img_0299999.jpg") && !shown.contains("img_0000000.jpg"),
        "{shown}"
    );
    assert!(shown.contains("300000 files"), "{shown}");
    assert_eq!(
        app.datasets.decoded, 0,
        "no image may be decoded without a worker asking"
    );
    // 202 frames over 300k names: each frame is a handful of rows, not the whole list.
    assert!(
        elapsed < Duration::from_secs(2),
        "{elapsed:?} for 202 frames"
    );

    // The filter narrows the list; Esc clears it.
    press(&mut app, KeyCode::Char('/'));
    for c in "0123".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    let expected = (0..n)
        .filter(|i| format!("img_{i:07}.jpg").contains("0123"))
        .count();
    assert!(expected > 1000 && expected < n);
    assert_eq!(app.datasets.visible.len(), expected);
    let shown = text(&draw(&mut app, 160, 48));
    assert!(
        shown.contains(&format!("{expected} of 300000 files · /0123")),
        "{shown}"
    );
    // Keys typed in the filter never reach the studio (q does not quit).
    press(&mut app, KeyCode::Char('/'));
    press(&mut app, KeyCode::Char('q'));
    assert_eq!(app.datasets.filter, "0123q");
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.datasets.visible.len(), n);
}

fn write_faces(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in names.iter().enumerate() {
        let img = image::RgbImage::from_fn(40, 48, |x, y| {
            image::Rgb([(i * 60) as u8, x as u8 * 5, y as u8 * 5])
        });
        img.save(dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
}

fn wait(app: &mut App, what: &str, done: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(app) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        app.datasets.receive();
        draw(app, 120, 40);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_folder_is_listed_previewed_summarised_and_exclusions_reach_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("faces");
    write_faces(&root, &["a.png", "b.png", "c.png"]);
    let mut screen = DatasetsScreen::default();
    screen.open(Origin::Folder(root.clone()));
    let mut app = browser_app(screen);
    wait(&mut app, "the listing", |a| {
        a.datasets.listing == Listing::Ready
    });
    assert_eq!(
        app.datasets.names,
        vec!["a.png", "b.png", "broken.png", "c.png"]
    );

    // The preview of the selected file is decoded on the worker and drawn.
    wait(&mut app, "the preview", |a| a.datasets.decoded >= 1);
    wait(&mut app, "the statistics", |a| {
        a.datasets.stats.as_ref().is_some_and(|s| s.done == s.total)
    });
    let buf = draw(&mut app, 120, 40);
    let t = text(&buf);
    let half = buf.content().iter().filter(|c| c.symbol() == "▀").count();
    assert!(half > 100, "preview and mean face drawn: {half}\n{t}");
    let stats = app.datasets.stats.clone().unwrap();
    assert_eq!(stats.sizes, vec![((40, 48), 3)]);
    assert_eq!(stats.bad.len(), 1, "{:?}", stats.bad);
    assert!(t.contains("40×48: 3") && t.contains("unreadable 1"), "{t}");
    assert!(
        t.contains("broken.png: cannot decode") || t.contains("broken.png: not an image"),
        "{t}"
    );
    assert!(
        stats.mean[0] > 50.0 && stats.mean[0] < 70.0,
        "red mean {:?}",
        stats.mean
    );

    // Exclude b.png: the list file is written and the loader leaves it out.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char('x'));
    assert!(
        app.message
            .as_ref()
            .unwrap()
            .0
            .contains("b.png excluded from training"),
        "{:?}",
        app.message
    );
    let list = std::fs::read_to_string(root.join(folder::EXCLUDE_FILE)).unwrap();
    assert!(list.lines().any(|l| l == "b.png"), "{list}");
    let ds = folder::load(&root, (16, 16), 3, Crop::Center).unwrap();
    assert_eq!(ds.labels, vec!["a.png", "c.png"]);
    let t = text(&draw(&mut app, 120, 40));
    assert!(t.contains("✗ b.png"), "{t}");
    // x again takes it back.
    press(&mut app, KeyCode::Char('x'));
    let ds = folder::load(&root, (16, 16), 3, Crop::Center).unwrap();
    assert_eq!(ds.labels, vec!["a.png", "b.png", "c.png"]);

    // The thumbnail page.
    press(&mut app, KeyCode::Char('t'));
    wait(&mut app, "thumbnails", |a| a.datasets.decoded >= 5);
    let t = text(&draw(&mut app, 120, 40));
    assert!(t.contains("thumbnails"), "{t}");
}

#[test]
fn synthetic_data_shows_its_generated_faces() {
    let mut config = facestudio::config::Config::default();
    config.data.source = "synthetic".into();
    config.data.synthetic_count = 50;
    let mut data = RunData::default();
    data.config = Some(config);
    let mut app = App::new(data, Theme::load("dark").unwrap(), 0.6);
    app.screen = Screen::Datasets;
    app.datasets.poll(&app.data);
    wait(&mut app, "the synthetic listing", |a| {
        a.datasets.listing == Listing::Ready
    });
    assert_eq!(app.datasets.names.len(), 50);
    assert_eq!(app.datasets.names[0], "synthetic #0");
    wait(&mut app, "a preview", |a| a.datasets.decoded >= 1);
    press(&mut app, KeyCode::Char('x'));
    assert!(app.message.as_ref().unwrap().1 == facestudio::tui::app::Tone::Error);
}

#[test]
#[ignore = "needs the CelebA subset in ../shared/datasets; prints timings"]
fn celeba_subset_opens_and_scrolls() {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/celeba/img_align_celeba");
    let mut screen = DatasetsScreen::default();
    let t = Instant::now();
    screen.open(Origin::Folder(root));
    let mut app = browser_app(screen);
    wait(&mut app, "the listing", |a| {
        a.datasets.listing == Listing::Ready
    });
    let listed = t.elapsed();
    wait(&mut app, "the first preview", |a| a.datasets.decoded >= 1);
    let first = t.elapsed();
    let n = app.datasets.names.len();
    let s = Instant::now();
    for _ in 0..n {
        press(&mut app, KeyCode::Down);
        app.datasets.receive();
        draw(&mut app, 160, 48);
    }
    let scroll = s.elapsed();
    wait(&mut app, "the statistics", |a| {
        a.datasets.stats.as_ref().is_some_and(|s| s.done == s.total)
    });
    println!(
        "celeba: {n} files listed in {listed:?}, first preview at {first:?}, scrolled top to bottom \
         ({n} frames at 160x48) in {scroll:?}, statistics done at {:?}",
        t.elapsed()
    );
    assert!(n >= 4800);
}
