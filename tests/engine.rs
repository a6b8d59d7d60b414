//! The engine end to end on the CPU: learning, checkpoints, resume and bad data.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use candle_core::{Device, Tensor};
use common::{small_config, train_collect};
use facestudio::checkpoint;
use facestudio::run::{read_metrics, Record, RunDir};
use facestudio::train::{self, Command, Event};

fn train_losses(records: &[Record]) -> Vec<(u64, f64)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Train(s) => Some((s.step, s.total)),
            _ => None,
        })
        .collect()
}

/// The mean per-image binary entropy of the data set's pixels: the least BCE any model can reach.
fn bce_floor(config: &facestudio::config::Config) -> f64 {
    let ds = facestudio::data::load(config).unwrap();
    let entropy: f64 = ds
        .pixels
        .iter()
        .map(|&p| {
            let x = f64::from(p) / 255.0;
            if x <= 0.0 || x >= 1.0 {
                0.0
            } else {
                -(x * x.ln() + (1.0 - x) * (1.0 - x).ln())
            }
        })
        .sum();
    entropy / ds.len() as f64
}

#[test]
fn loss_falls_within_a_few_hundred_steps_on_synthetic_faces() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small_config();
    c.train.steps = 300;
    c.train.beta = 1.0;
    c.train.checkpoint_every = 1000;
    let c_data = c.clone();
    let (summary, _) = train_collect(c, &dir.path().join("run"), false);
    assert_eq!(summary.step, 300);
    let (records, torn) = read_metrics(&RunDir::new(dir.path().join("run")).metrics()).unwrap();
    assert_eq!(torn, 0);
    let losses = train_losses(&records);
    let first: f64 = losses[..10].iter().map(|l| l.1).sum::<f64>() / 10.0;
    let last: f64 = losses[losses.len() - 10..].iter().map(|l| l.1).sum::<f64>() / 10.0;
    // BCE against grey-level targets cannot reach zero: its floor is the binary entropy of the
    // pixels themselves. A model that learned the faces' structure has closed most of the gap
    // between the start (near 3072 ln 2 = 2129 nats) and that floor.
    let floor = bce_floor(&c_data);
    assert!(
        first - floor > 100.0,
        "the start {first:.1} is not above the floor {floor:.1}"
    );
    assert!(
        last - floor < 0.5 * (first - floor),
        "loss went from {first:.1} to {last:.1}, floor {floor:.1}"
    );
    let vals = records
        .iter()
        .filter(|r| matches!(r, Record::Val(_)))
        .count();
    assert_eq!(vals, 300 / 20);
}

#[test]
fn a_saved_checkpoint_decodes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut c = small_config();
    c.train.steps = 12;
    let (_, events) = train_collect(c.clone(), &run, false);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Checkpoint { step: 12, .. })));

    let loaded = checkpoint::load_model(run.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(loaded.meta.step, 12);
    let again = checkpoint::load_model(run.to_str().unwrap(), &Device::Cpu).unwrap();
    let zs = Tensor::from_vec(train::sample_latents(7, 8, 16), (8, 16), &Device::Cpu).unwrap();
    let a: Vec<f32> = loaded
        .model
        .decode(&zs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = again
        .model
        .decode(&zs)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a.len(), 8 * 3 * 32 * 32);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));

    // Saving the loaded weights again gives byte-identical files.
    let weights_file = run.join("checkpoints").join(&loaded.meta.weights);
    let original = std::fs::read(&weights_file).unwrap();
    let named: Vec<(String, Tensor)> = facestudio::model::named_vars(&loaded.varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    assert_eq!(checkpoint::to_safetensors(&named).unwrap(), original);
}

#[test]
fn resume_continues_steps_and_metrics_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut c = small_config();
    c.train.steps = 60;
    c.train.checkpoint_every = 10;

    // Stop after step 25 is logged: the trainer saves a checkpoint at 25 and ends.
    let (tx, rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let opts = train::Options {
        config: c.clone(),
        run: RunDir::new(&run),
        resume: false,
    };
    let worker =
        std::thread::spawn(move || train::run(opts, tx, cmd_rx, Arc::new(AtomicBool::new(false))));
    for e in rx.iter() {
        if let Event::Step(r) = e {
            if r.step == 25 {
                cmd_tx.send(Command::Stop).unwrap();
            }
        }
    }
    let first = worker.join().unwrap().unwrap();
    assert!(!first.completed);
    let stopped_at = first.step;
    assert!((25..=27).contains(&stopped_at), "stopped at {stopped_at}");
    assert_eq!(
        checkpoint::list(&run.join("checkpoints"))
            .last()
            .unwrap()
            .step,
        stopped_at
    );

    // Simulate a crash after the checkpoint: two more steps logged that must be dropped.
    let metrics = RunDir::new(&run).metrics();
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"kind\":\"train\",\"step\":999,\"epoch\":0,\"time\":0,\"total\":1,\"recon\":1,\"kl\":0,\"beta\":1,\"lr\":0.001,\"ips\":1}\n{\"kind\":\"tr");
    std::fs::write(&metrics, text).unwrap();

    let (second, _) = train_collect(c.clone(), &run, true);
    assert!(second.completed);
    assert_eq!(second.step, 60);
    let (records, torn) = read_metrics(&metrics).unwrap();
    assert_eq!(torn, 0, "the torn line was cut on resume");
    let steps: Vec<u64> = train_losses(&records).iter().map(|l| l.0).collect();
    assert_eq!(steps, (1..=60).collect::<Vec<_>>());

    // The resumed run trains exactly as one that never stopped.
    let straight = dir.path().join("straight");
    train_collect(c, &straight, false);
    let (records2, _) = read_metrics(&RunDir::new(&straight).metrics()).unwrap();
    let a = train_losses(&records);
    let b = train_losses(&records2);
    for ((s1, l1), (s2, l2)) in a.iter().zip(&b) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-3 * l2.abs(),
            "step {s1}: {l1} resumed vs {l2} straight"
        );
    }
}

#[test]
fn a_folder_with_bad_files_trains_on_the_good_images_and_lists_the_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    std::fs::create_dir_all(faces.join("sub")).unwrap();
    for i in 0..24u32 {
        let img = image::RgbImage::from_fn(40, 48, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 5) as u8, (i * 10) as u8])
        });
        let name = if i % 2 == 0 {
            format!("face{i:02}.png")
        } else {
            format!("sub/face{i:02}.jpg")
        };
        img.save(faces.join(name)).unwrap();
    }
    // A JPEG with a corrupt body, a truncated PNG and a text file.
    let mut jpeg = std::fs::read(faces.join("sub/face01.jpg")).unwrap();
    for b in jpeg.iter_mut().skip(200).take(400) {
        *b = 0xAA;
    }
    jpeg.truncate(jpeg.len() / 2);
    std::fs::write(faces.join("corrupt.jpg"), &jpeg).unwrap();
    let png = std::fs::read(faces.join("face00.png")).unwrap();
    std::fs::write(faces.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(faces.join("notes.txt"), "not a face").unwrap();

    let mut c = small_config();
    c.data.source = faces.to_string_lossy().into_owned();
    c.data.cache_dir = dir.path().join("cache").to_string_lossy().into_owned();
    c.data.val_fraction = 0.0;
    c.train.batch_size = 8;
    c.train.steps = 6;
    let (summary, events) = train_collect(c.clone(), &dir.path().join("run"), false);
    assert_eq!(summary.step, 6);
    let started = events
        .iter()
        .find_map(|e| {
            if let Event::Started(s) = e {
                Some(s.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(started.train_images, 24);
    assert_eq!(started.bad_files, 3);

    let data = facestudio::data::load(&c).unwrap();
    let mut bad: Vec<String> = data
        .bad_files
        .iter()
        .map(|b| b.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    bad.sort();
    assert_eq!(bad, ["corrupt.jpg", "notes.txt", "truncated.png"]);
    assert!(data.bad_files.iter().all(|b| !b.reason.is_empty()));
}

#[test]
fn an_empty_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small_config();
    c.data.source = dir.path().to_string_lossy().into_owned();
    let err = facestudio::data::load(&c).unwrap_err().to_string();
    assert!(err.contains(&*dir.path().to_string_lossy()), "{err}");
    assert!(err.contains("no "), "{err}");
}

#[test]
fn a_second_trainer_is_refused_by_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    run.create().unwrap();
    let _held = facestudio::run::RunLock::acquire(&run).unwrap();
    let (tx, _rx) = mpsc::channel();
    let (_cmd_tx, cmd_rx) = mpsc::channel();
    let opts = train::Options {
        config: small_config(),
        run: run.clone(),
        resume: false,
    };
    let err = train::run(opts, tx, cmd_rx, Arc::new(AtomicBool::new(false)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lock") || err.contains("in use"), "{err}");
}
