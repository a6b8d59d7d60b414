//! Batches: a stable validation split, a per-epoch shuffle from the seed, and a prefetch
//! thread that turns u8 images into f32 batches ahead of the model.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Dataset;
use crate::rng::Rng;

/// Training and validation image indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices used for training, ascending.
    pub train: Vec<usize>,
    /// Indices held out for validation, ascending.
    pub val: Vec<usize>,
}

/// Holds out `fraction` of `n` images, chosen by the seed alone so that it never changes
/// between runs, resumes or batch sizes.
pub fn split(n: usize, fraction: f64, seed: u64) -> Split {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::keyed(seed, "split", 0).shuffle(&mut order);
    let n_val = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Split { train, val }
}

/// Where a batch sits in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Batch within the epoch, from 0.
    pub batch: usize,
}

/// A batch of images as f32 in [0, 1], NCHW.
#[derive(Debug)]
pub struct Batch {
    /// Where this batch is in the run.
    pub position: Position,
    /// Batches in this epoch.
    pub batches_in_epoch: usize,
    /// Images in the batch.
    pub len: usize,
    /// `len * C * H * W` values.
    pub xs: Vec<f32>,
}

/// Settings the prefetcher reads at the start of each epoch.
#[derive(Debug)]
pub struct EpochSettings {
    /// Images per batch.
    pub batch_size: AtomicUsize,
    /// Whether half the images are flipped.
    pub flip: AtomicBool,
}

impl EpochSettings {
    /// Settings with these initial values.
    pub fn new(batch_size: usize, flip: bool) -> Self {
        Self {
            batch_size: AtomicUsize::new(batch_size),
            flip: AtomicBool::new(flip),
        }
    }
}

/// Builds batches on a thread of its own, a few ahead of the trainer.
pub struct Prefetcher {
    rx: Receiver<Batch>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts at `start`, with at most `depth` batches waiting.
    pub fn start(
        data: Arc<Dataset>,
        indices: Arc<Vec<usize>>,
        settings: Arc<EpochSettings>,
        seed: u64,
        start: Position,
        depth: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let mut pos = start;
                while !stop_flag.load(Ordering::Relaxed) {
                    let batch_size = settings.batch_size.load(Ordering::Relaxed).max(1);
                    let flip = settings.flip.load(Ordering::Relaxed);
                    let order = epoch_order(indices.len(), seed, pos.epoch);
                    let batches = batches_per_epoch(indices.len(), batch_size);
                    while pos.batch < batches {
                        let chunk = &order[pos.batch * batch_size
                            ..((pos.batch + 1) * batch_size).min(order.len())];
                        let ids: Vec<usize> = chunk.iter().map(|&k| indices[k]).collect();
                        let flips = flip_mask(&ids, seed, pos.epoch, flip);
                        let xs = to_f32(&data, &ids, &flips);
                        let batch = Batch {
                            position: pos,
                            batches_in_epoch: batches,
                            len: ids.len(),
                            xs,
                        };
                        if tx.send(batch).is_err() {
                            return;
                        }
                        pos.batch += 1;
                    }
                    pos = Position {
                        epoch: pos.epoch + 1,
                        batch: 0,
                    };
                }
            })
            .expect("spawning the prefetch thread");
        Self {
            rx,
            stop,
            handle: Some(handle),
        }
    }

    /// The next batch; blocks only when the prefetcher has fallen behind.
    pub fn next(&self) -> Batch {
        self.rx
            .recv()
            .expect("the prefetch thread runs until dropped")
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so a sender blocked on a full channel wakes up and sees the flag.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}

/// Batches per epoch: the last partial batch is dropped unless it would be the only one.
pub fn batches_per_epoch(n: usize, batch_size: usize) -> usize {
    (n / batch_size.max(1)).max(1)
}

/// The shuffled order of positions `0..n` for one epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::keyed(seed, "epoch", epoch).shuffle(&mut order);
    order
}

fn flip_mask(ids: &[usize], seed: u64, epoch: u64, enabled: bool) -> Vec<bool> {
    let mut rng = Rng::keyed(seed, "flip", epoch);
    ids.iter()
        .map(|&i| enabled && Rng::keyed(rng.next_u64(), "img", i as u64).uniform() < 0.5)
        .collect()
}

/// Converts images to f32 in [0, 1], optionally mirrored left to right.
pub fn to_f32(data: &Dataset, ids: &[usize], flips: &[bool]) -> Vec<f32> {
    let (h, w) = (data.height, data.width);
    let mut xs = Vec::with_capacity(ids.len() * data.image_len());
    for (k, &i) in ids.iter().enumerate() {
        let img = data.image(i);
        let flip = flips.get(k).copied().unwrap_or(false);
        for row in img.chunks_exact(w) {
            if flip {
                xs.extend(row.iter().rev().map(|&v| v as f32 / 255.0));
            } else {
                xs.extend(row.iter().map(|&v| v as f32 / 255.0));
            }
        }
        debug_assert_eq!(xs.len(), (k + 1) * data.channels * h * w);
    }
    xs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Dataset {
        Dataset {
            name: "t".into(),
            channels: 1,
            height: 2,
            width: 2,
            pixels: (0..n * 4).map(|i| (i % 256) as u8).collect(),
            labels: (0..n).map(|i| i.to_string()).collect(),
            bad_files: vec![],
        }
    }

    #[test]
    fn split_is_stable_and_disjoint() {
        let a = split(1000, 0.1, 5);
        assert_eq!(a, split(1000, 0.1, 5));
        assert_eq!(a.val.len(), 100);
        assert!(a.val.iter().all(|v| a.train.binary_search(v).is_err()));
        assert_ne!(a, split(1000, 0.1, 6));
    }

    #[test]
    fn prefetcher_walks_epochs_in_seeded_order() {
        let data = Arc::new(tiny(10));
        let idx = Arc::new((0..10).collect::<Vec<_>>());
        let settings = Arc::new(EpochSettings {
            batch_size: 4.into(),
            flip: false.into(),
        });
        let p = Prefetcher::start(
            data.clone(),
            idx.clone(),
            settings.clone(),
            1,
            Position::default(),
            2,
        );
        let got: Vec<Position> = (0..5).map(|_| p.next().position).collect();
        assert_eq!(got[2], Position { epoch: 1, batch: 0 });
        drop(p);
        // Starting mid-run gives the same batch as walking there.
        let q = Prefetcher::start(
            data.clone(),
            idx.clone(),
            settings.clone(),
            1,
            Position { epoch: 1, batch: 1 },
            2,
        );
        let p = Prefetcher::start(data, idx, settings, 1, Position::default(), 2);
        let walked: Vec<f32> = (0..4).map(|_| p.next()).last().unwrap().xs;
        assert_eq!(q.next().xs, walked);
    }

    #[test]
    fn flip_mirrors_rows() {
        let data = tiny(1);
        assert_eq!(
            to_f32(&data, &[0], &[true]),
            vec![1.0 / 255.0, 0.0, 3.0 / 255.0, 2.0 / 255.0]
        );
    }
}
