//! The gallery: latent maths, protocol selection from canned terminal replies, the escape
//! output of each protocol, and the gallery worker and screen over a tiny trained model.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use facestudio::gallery::{Endpoint, Job, Reply, Request, Worker};
use facestudio::latent::{self, Blend};
use facestudio::tui::app::{App, Screen};
use facestudio::tui::follow::RunData;
use facestudio::tui::graphics::{self, Choice, Decision, Pictures, ReplySource, TermEnv};
use facestudio::tui::screens::gallery::View;
use facestudio::tui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::layout::Size;
use ratatui::Terminal;
use ratatui_image::picker::ProtocolType;

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

#[test]
fn interpolation_end_points_equal_the_inputs() {
    let a = latent::seed_latent(1, 16);
    let b = latent::seed_latent(2, 16);
    for blend in [Blend::Linear, Blend::Spherical] {
        let zs = latent::interpolate(&a, &b, 7, blend);
        assert_eq!(zs.len(), 7 * 16);
        assert!(close(&zs[..16], &a), "{blend:?} start");
        assert!(close(&zs[6 * 16..], &b), "{blend:?} end");
    }
    // The middle of a linear path between opposite points is the origin; slerp's is not.
    let minus: Vec<f32> = a.iter().map(|x| -x).collect();
    let mid = latent::lerp(&a, &minus, 0.5);
    assert!(latent::norm(&mid) < 1e-5);
}

#[test]
fn slerp_keeps_the_norm() {
    let a = latent::seed_latent(3, 32);
    let b: Vec<f32> = latent::seed_latent(4, 32);
    // Give both the same norm, then every point of the path must have it too.
    let scale = (latent::norm(&a) / latent::norm(&b)) as f32;
    let b: Vec<f32> = b.iter().map(|x| x * scale).collect();
    let na = latent::norm(&a);
    for i in 0..=10 {
        let z = latent::slerp(&a, &b, i as f32 / 10.0);
        assert!(
            (latent::norm(&z) - na).abs() < 1e-3 * na,
            "t = {i}/10: {} vs {na}",
            latent::norm(&z)
        );
    }
    let mid = latent::lerp(&a, &b, 0.5);
    assert!(
        latent::norm(&mid) < na * 0.99,
        "linear paths cut inside the shell"
    );
}

#[test]
fn latent_walk_sweeps_one_dimension_between_its_end_points() {
    let z = latent::seed_latent(5, 8);
    let zs = latent::walk(&z, 3, 5, 3.0);
    assert_eq!(zs.len(), 5 * 8);
    for (k, step) in zs.chunks(8).enumerate() {
        for d in 0..8 {
            if d == 3 {
                assert!((step[d] - (-3.0 + 1.5 * k as f32)).abs() < 1e-6);
            } else {
                assert_eq!(step[d], z[d]);
            }
        }
    }
}

fn env(term: &str) -> TermEnv {
    TermEnv {
        term: term.into(),
        ..Default::default()
    }
}

#[test]
fn protocol_from_canned_replies() {
    let kitty = b"\x1b_Gi=31;OK\x1b\\\x1b[?62;22c\x1b[6;20;10t\x1b[0n";
    let sixel = b"\x1b[?62;4;22c\x1b[6;16;8t\x1b[0n";
    let none = b"\x1b[?1;2c\x1b[0n";
    let e = env("xterm-256color");

    let d = graphics::decide(Choice::Auto, Some(&graphics::parse_reply(kitty)), &e, None);
    assert_eq!(
        (d.protocol, d.cell, d.tmux),
        (ProtocolType::Kitty, (10, 20), false)
    );
    let d = graphics::decide(Choice::Auto, Some(&graphics::parse_reply(sixel)), &e, None);
    assert_eq!((d.protocol, d.cell), (ProtocolType::Sixel, (8, 16)));
    assert_eq!(d.label(), "sixel");
    let d = graphics::decide(
        Choice::Auto,
        Some(&graphics::parse_reply(none)),
        &e,
        Some((9, 18)),
    );
    assert_eq!(d.protocol, ProtocolType::Halfblocks);
    // No answer at all: half-blocks.
    let d = graphics::decide(Choice::Auto, None, &e, None);
    assert_eq!(
        (d.protocol, d.label().as_str()),
        (ProtocolType::Halfblocks, "halfblocks")
    );
    // Sixel reported but no cell size from the reply or the kernel: cannot size images.
    let no_cell = graphics::parse_reply(b"\x1b[?62;4c\x1b[0n");
    assert_eq!(
        graphics::decide(Choice::Auto, Some(&no_cell), &e, None).protocol,
        ProtocolType::Halfblocks
    );
    // The flag wins over the reply.
    let forced = Choice::parse("iterm2").unwrap();
    let d = graphics::decide(forced, Some(&graphics::parse_reply(kitty)), &e, None);
    assert_eq!(d.protocol, ProtocolType::Iterm2);
    // Inside tmux the chosen protocol is passed through.
    let d = graphics::decide(
        Choice::Auto,
        Some(&graphics::parse_reply(kitty)),
        &env("tmux-256color"),
        None,
    );
    assert_eq!(d.label(), "kitty+tmux");
    // iTerm2 names itself in the environment and answers no query.
    let iterm = TermEnv {
        term_program: "iTerm.app".into(),
        ..Default::default()
    };
    let d = graphics::decide(
        Choice::Auto,
        Some(&graphics::parse_reply(none)),
        &iterm,
        Some((7, 14)),
    );
    assert_eq!(d.protocol, ProtocolType::Iterm2);
}

/// A terminal that answers `bytes` after `delay`, or never.
struct Fake {
    bytes: Option<Vec<u8>>,
    delay: Duration,
    started: Instant,
}

impl ReplySource for Fake {
    fn read_within(&mut self, wait: Duration) -> std::io::Result<Vec<u8>> {
        let ready = self.started + self.delay;
        let now = Instant::now();
        if now + wait < ready || self.bytes.is_none() {
            std::thread::sleep(wait);
            return Ok(Vec::new());
        }
        std::thread::sleep(ready.saturating_duration_since(now));
        Ok(self.bytes.take().unwrap_or_default())
    }
}

#[test]
fn silent_and_slow_terminals_fall_back_within_the_timeout() {
    let timeout = Duration::from_millis(150);
    let silent = Fake {
        bytes: None,
        delay: Duration::ZERO,
        started: Instant::now(),
    };
    let t = Instant::now();
    let reply = graphics::collect_reply(&mut { silent }, timeout, 1);
    assert!(reply.is_none());
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(
        graphics::decide(Choice::Auto, reply.as_ref(), &env("xterm"), None).protocol,
        ProtocolType::Halfblocks
    );

    let slow = Fake {
        bytes: Some(b"\x1b_Gi=31;OK\x1b\\\x1b[0n".to_vec()),
        delay: Duration::from_secs(2),
        started: Instant::now(),
    };
    let t = Instant::now();
    assert!(graphics::collect_reply(&mut { slow }, timeout, 1).is_none());
    assert!(t.elapsed() < Duration::from_millis(600));

    // An answer within the time is taken, and reading stops at its status report.
    let quick = Fake {
        bytes: Some(b"\x1b_Gi=31;OK\x1b\\\x1b[0n".to_vec()),
        delay: Duration::from_millis(20),
        started: Instant::now(),
    };
    let t = Instant::now();
    let reply =
        graphics::collect_reply(&mut { quick }, Duration::from_secs(5), 1).expect("a reply");
    assert!(reply.kitty && t.elapsed() < Duration::from_secs(1));
}

fn known_image() -> image::RgbImage {
    image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([if x < 4 { 255 } else { 0 }, (y * 30) as u8, 40])
    })
}

fn decision(p: ProtocolType) -> Decision {
    Decision {
        protocol: p,
        cell: (4, 8),
        tmux: false,
        kitty_direct: false,
        why: "test".into(),
    }
}

#[test]
fn kitty_without_placeholders_is_placed_at_the_cursor() {
    // kitty before 0.28 (and Konsole, which names no version) cannot draw placeholders.
    let old = b"\x1bP>|kitty(0.26.5)\x1b\\\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1b[6;20;10t\x1b[0n";
    let new = b"\x1bP>|kitty(0.35.2)\x1b\\\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1b[6;20;10t\x1b[0n";
    let konsole =
        b"\x1bP>|Konsole 22.12.3\x1b\\\x1b_Gi=31;OK\x1b\\\x1b[?62;1;4c\x1b[6;20;10t\x1b[0n";
    let e = env("xterm-kitty");
    let reply = graphics::parse_reply(old);
    assert_eq!(reply.version.as_deref(), Some("kitty(0.26.5)"));
    let d = graphics::decide(Choice::Auto, Some(&reply), &e, None);
    assert!(d.protocol == ProtocolType::Kitty && d.kitty_direct);
    let d = graphics::decide(Choice::Auto, Some(&graphics::parse_reply(new)), &e, None);
    assert!(d.protocol == ProtocolType::Kitty && !d.kitty_direct);
    let d = graphics::decide(
        Choice::Auto,
        Some(&graphics::parse_reply(konsole)),
        &e,
        None,
    );
    assert!(d.protocol == ProtocolType::Kitty && d.kitty_direct);
    // Inside tmux only placeholders survive, whatever the version.
    let d = graphics::decide(Choice::Auto, Some(&reply), &env("tmux-256color"), None);
    assert!(!d.kitty_direct);

    let mut direct = decision(ProtocolType::Kitty);
    direct.kitty_direct = true;
    let out = graphics::escape_output(&direct, &known_image(), Size::new(2, 1)).unwrap();
    assert!(out.starts_with("\x1b_Ga=T,f=100,"), "{:?}", &out[..40]);
    assert!(out.contains("C=1") && out.contains("q=2") && out.ends_with("\x1b\\"));
    assert!(!out.contains('\u{10EEEE}'), "no placeholders");
}

#[test]
fn kitty_escape_output_transmits_then_places() {
    let out = graphics::escape_output(
        &decision(ProtocolType::Kitty),
        &known_image(),
        Size::new(2, 1),
    )
    .unwrap();
    let start = out.find("_G").expect("a kitty graphics command");
    assert!(
        out[..start].ends_with('\x1b'),
        "APC introducer: {:?}",
        &out[..start]
    );
    let command = &out[start..];
    for part in ["a=T", "U=1", "f=32", "s=8", "v=8", "m=0;"] {
        assert!(
            command.contains(part),
            "kitty command lacks {part}: {:?}",
            &command[..80.min(command.len())]
        );
    }
    assert!(
        command.contains("\x1b\\"),
        "the command is terminated by ST"
    );
    // Unicode placeholders place the image in the cells.
    assert!(out.contains('\u{10EEEE}'));
}

#[test]
fn sixel_escape_output_is_a_dcs_sequence() {
    let out = graphics::escape_output(
        &decision(ProtocolType::Sixel),
        &known_image(),
        Size::new(2, 1),
    )
    .unwrap();
    let start = out.find("\x1bP").expect("a DCS introducer");
    let body = &out[start..];
    let q = body.find('q').expect("the sixel q");
    assert!(q < 12, "parameters then q: {:?}", &body[..q + 1]);
    assert!(
        body.trim_end().ends_with("\x1b\\"),
        "ends with ST: {:?}",
        &body[body.len().saturating_sub(10)..]
    );
    assert!(body.contains('#'), "colour registers");
    let iterm = graphics::escape_output(
        &decision(ProtocolType::Iterm2),
        &known_image(),
        Size::new(2, 1),
    )
    .unwrap();
    assert!(
        iterm.contains("]1337;File=inline=1"),
        "{:?}",
        &iterm[..60.min(iterm.len())]
    );
}

/// Trains the tiny test model once per test binary run.
fn trained(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    let mut c = common::small_config();
    c.train.steps = 20;
    c.train.checkpoint_every = 10;
    common::train_collect(c, &run, false);
    run
}

fn wait_frame(worker: &Worker, id: u64) -> Vec<facestudio::gallery::Tile> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match worker.recv_timeout(Duration::from_secs(1)) {
            Some(Reply::Frame { id: got, tiles }) if got == id => return tiles,
            Some(Reply::Failed { error, .. }) => panic!("worker failed: {error}"),
            _ => {}
        }
    }
    panic!("no frame {id}")
}

#[test]
fn worker_renders_every_view_of_a_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let checkpoints = facestudio::checkpoint::list(&run.join("checkpoints"));
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    let worker = Worker::spawn();
    worker.send(Request::Load(checkpoints.last().unwrap().meta.clone()));
    match worker.recv_timeout(Duration::from_secs(30)) {
        Some(Reply::Loaded { latent, shape, .. }) => assert_eq!((latent, shape.width), (16, 32)),
        other => panic!("{other:?}"),
    }
    let jobs = [
        (
            Job::Samples {
                seeds: vec![1, 2, 3],
            },
            3,
        ),
        (
            Job::Walk {
                seed: 1,
                dim: 2,
                steps: 5,
            },
            5,
        ),
        (
            Job::Interp {
                a: Endpoint::Seed(1),
                b: Endpoint::Image(4),
                steps: 4,
                blend: Blend::Spherical,
            },
            4,
        ),
        (
            Job::Recon {
                indices: vec![0, 1],
            },
            4,
        ),
        (Job::Novelty { seeds: vec![7] }, 2),
        (
            Job::TimeLapse {
                seed: 1,
                checkpoints: checkpoints.iter().map(|e| e.meta.clone()).collect(),
            },
            checkpoints.len(),
        ),
    ];
    for (i, (job, n)) in jobs.into_iter().enumerate() {
        let id = i as u64 + 1;
        worker.send(Request::Render {
            id,
            job: job.clone(),
        });
        let tiles = wait_frame(&worker, id);
        assert_eq!(tiles.len(), n, "{job:?}");
        assert!(
            tiles.iter().all(|t| t.image.dimensions() == (32, 32)),
            "{job:?}"
        );
    }
    // The same seed gives the same face; the interpolation starts at the seed's face.
    worker.send(Request::Render {
        id: 10,
        job: Job::Samples { seeds: vec![1] },
    });
    let a = wait_frame(&worker, 10);
    worker.send(Request::Render {
        id: 11,
        job: Job::Interp {
            a: Endpoint::Seed(1),
            b: Endpoint::Seed(9),
            steps: 3,
            blend: Blend::Linear,
        },
    });
    let strip = wait_frame(&worker, 11);
    assert_eq!(a[0].image, strip[0].image);
    assert_ne!(strip[0].image, strip[2].image);
}

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

/// Polls and draws until the gallery has a frame of the view wanted.
fn settle(app: &mut App, w: u16, h: u16) -> ratatui::buffer::Buffer {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let buf = draw(app, w, h);
        app.gallery.poll(&app.data);
        if app.gallery.is_current() {
            std::thread::sleep(Duration::from_millis(50));
            app.gallery.poll(&app.data);
            return draw(app, w, h);
        }
        assert!(Instant::now() < deadline, "no frame:\n{}", text(&buf));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gallery_screen_follows_a_run_and_saves_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let mut data = RunData::new(&run);
    data.config = Some(common::small_config());
    let mut app = App::new(data, Theme::load("dark").unwrap(), 0.6);
    app.gallery.follow_run(&run);
    app.screen = Screen::Gallery;
    let buf = settle(&mut app, 160, 48);
    let t = text(&buf);
    assert!(t.contains("samples · step 20 · seeds 1…"), "{t}");
    let half = buf.content().iter().filter(|c| c.symbol() == "▀").count();
    assert!(half > 1500, "the grid fills the screen: {half} cells\n{t}");
    let faces = app.gallery.labels().len();
    assert!(faces >= 12, "{faces} faces at 160x48");

    // Select, enlarge, save the face and the grid into the run directory.
    press(&mut app, KeyCode::Right);
    press(&mut app, KeyCode::Down);
    let (cols, _) = (faces.min(160 / 14), 0);
    assert_eq!(app.gallery.selected, 1 + cols);
    press(&mut app, KeyCode::Enter);
    let t = text(&draw(&mut app, 160, 48));
    assert!(
        t.contains(&format!("face · seed {}", app.gallery.face_seed(1 + cols))),
        "{t}"
    );
    press(&mut app, KeyCode::Char('p'));
    let saved = run
        .join("gallery")
        .join(format!("face-seed-{}.png", app.gallery.face_seed(1 + cols)));
    assert!(saved.is_file(), "{:?}", app.message);
    assert!(
        app.message.as_ref().unwrap().0.contains("saved"),
        "{:?}",
        app.message
    );
    press(&mut app, KeyCode::Char('P'));
    assert!(
        run.join("gallery/samples-seed-1.png").is_file(),
        "{:?}",
        app.message
    );
    assert_eq!(image::open(&saved).unwrap().width(), 32);

    // Each view renders; `r` draws new seeds.
    press(&mut app, KeyCode::Esc);
    for view in [
        View::Reconstructions,
        View::Interpolation,
        View::Walk,
        View::TimeLapse,
        View::Novelty,
    ] {
        press(&mut app, KeyCode::Char('v'));
        assert_eq!(app.gallery.view, view);
        let buf = settle(&mut app, 120, 40);
        let t = text(&buf);
        assert!(t.contains(view.title()), "{t}");
        assert!(
            app.gallery.error.is_none(),
            "{view:?}: {:?}",
            app.gallery.error
        );
    }
    assert!(
        app.gallery.labels().iter().any(|l| l.contains("rms")),
        "{:?}",
        app.gallery.labels()
    );
    let before = app.gallery.base_seed;
    press(&mut app, KeyCode::Char('r'));
    assert_ne!(app.gallery.base_seed, before);
}

#[test]
fn gallery_redraw_timings_per_protocol() {
    // Measures a full gallery redraw at 160x48: the encode on the worker plus the frame written
    // to an in-memory terminal, for each protocol. Printed for the closing note.
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    for (p, kitty_direct) in [
        (ProtocolType::Halfblocks, false),
        (ProtocolType::Kitty, false),
        (ProtocolType::Kitty, true),
        (ProtocolType::Sixel, false),
        (ProtocolType::Iterm2, false),
    ] {
        let mut data = RunData::new(&run);
        data.config = Some(common::small_config());
        let mut app = App::new(data, Theme::load("dark").unwrap(), 0.6);
        app.pictures = Pictures::new(Decision {
            protocol: p,
            cell: (10, 20),
            tmux: false,
            kitty_direct,
            why: "bench".into(),
        });
        app.gallery.follow_run(&run);
        app.screen = Screen::Gallery;
        settle(&mut app, 160, 48);
        // Force a new picture (a new selection) and time until it is encoded and written.
        press(&mut app, KeyCode::Right);
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = ratatui::backend::CrosstermBackend::new(Count(written.clone()));
        let mut term = Terminal::new(backend).unwrap();
        term.resize(ratatui::layout::Rect::new(0, 0, 160, 48))
            .unwrap();
        let t = Instant::now();
        loop {
            term.draw(|f| app.render(f.area(), f.buffer_mut())).unwrap();
            if !app.pictures.pending() {
                break;
            }
            while !app.pictures.poll() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let bytes = written.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "redraw 160x48 {}{}: {ms:.1} ms, {bytes} bytes written",
            graphics::protocol_name(p),
            if kitty_direct { " (direct)" } else { "" }
        );
        assert!(bytes > 0);
    }
}

/// A writer that counts the bytes a frame writes and keeps none of them.
struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .fetch_add(buf.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn versus_decodes_the_same_seeds_with_both_models_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let vae = trained(dir.path());
    let ae = dir.path().join("ae");
    let mut c = common::small_config();
    c.train.steps = 10;
    c.model.kind = facestudio::config::ModelKind::Ae;
    common::train_collect(c, &ae, false);
    let newest = |run: &Path| {
        facestudio::checkpoint::list(&run.join("checkpoints"))
            .pop()
            .unwrap()
            .meta
    };

    let worker = Worker::spawn();
    worker.send(Request::Load(newest(&vae)));
    assert!(matches!(
        worker.recv_timeout(Duration::from_secs(30)),
        Some(Reply::Loaded { .. })
    ));
    let seeds = vec![3, 4, 5];
    worker.send(Request::Render {
        id: 1,
        job: Job::Versus {
            seeds: seeds.clone(),
            other: newest(&ae),
        },
    });
    let tiles = wait_frame(&worker, 1);
    let labels: Vec<&str> = tiles.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "vae · seed 3",
            "ae · seed 3",
            "vae · seed 4",
            "ae · seed 4",
            "vae · seed 5",
            "ae · seed 5"
        ]
    );
    assert_ne!(
        tiles[0].image, tiles[1].image,
        "the two models drew the same face"
    );
    // The left column is this model's own samples for those seeds.
    worker.send(Request::Render {
        id: 2,
        job: Job::Samples { seeds },
    });
    let own = wait_frame(&worker, 2);
    for k in 0..3 {
        assert_eq!(tiles[2 * k].image, own[k].image);
    }

    // A missing second model is an error naming it, not a crash.
    worker.send(Request::Render {
        id: 3,
        job: Job::Versus {
            seeds: vec![1],
            other: dir.path().join("nope.json"),
        },
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no answer for a missing model");
        match worker.recv_timeout(Duration::from_secs(1)) {
            Some(Reply::Failed { error, .. }) => {
                assert!(error.contains("nope.json"), "{error}");
                break;
            }
            Some(Reply::Frame { id: 3, .. }) => panic!("a frame from a missing model"),
            _ => {}
        }
    }
}
