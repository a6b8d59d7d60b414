//! Evaluation against a direct computation on a tiny model: the ELBO, the importance-weighted
//! bound (never looser than the ELBO), determinism, and the AE's prior gap.

mod common;

use candle_core::{Device, Tensor};
use facestudio::checkpoint;
use facestudio::config::Config;
use facestudio::data::{self, batcher};
use facestudio::eval::evaluate;
use facestudio::rng::Rng;

fn tiny(dir: &std::path::Path, kind: &str, steps: u64) -> (checkpoint::Loaded, Config) {
    let mut c = common::small_config();
    c.model.kind = if kind == "ae" {
        facestudio::config::ModelKind::Ae
    } else {
        facestudio::config::ModelKind::Vae
    };
    c.train.steps = steps;
    c.train.checkpoint_every = steps;
    let run = dir.join(kind);
    common::train_collect(c.clone(), &run, false);
    (
        checkpoint::load_model(run.to_str().unwrap(), &Device::Cpu).unwrap(),
        c,
    )
}

fn log_sigmoid(x: f64) -> f64 {
    -((-x).exp().ln_1p())
}

#[test]
fn elbo_and_iwae_match_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (loaded, config) = tiny(dir.path(), "vae", 30);
    let model = &loaded.model;
    let ds = data::load(&config).unwrap();
    let ids: Vec<usize> = (0..6).collect();
    let k = 16;
    let report = evaluate(model, &ds, &ids, k, 5).unwrap();

    // The same draws, scored here in f64 from the model's raw outputs.
    let s = model.shape;
    let xs_flat = batcher::to_f32(&ds, &ids, &[]);
    let xs = Tensor::from_vec(
        xs_flat.clone(),
        (ids.len(), s.channels, s.height, s.width),
        &Device::Cpu,
    )
    .unwrap();
    let enc = model.encode(&xs).unwrap();
    let mu: Vec<Vec<f32>> = enc.mu.to_vec2().unwrap();
    let logvar: Vec<Vec<f32>> = enc.logvar.as_ref().unwrap().to_vec2().unwrap();
    let (n, d, px) = (ids.len(), mu[0].len(), s.numel());
    let mut rng = Rng::keyed(5, "eval", 0);
    let log_px = |z: &[f64], img: usize| -> f64 {
        let zt = Tensor::from_vec(
            z.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (1, d),
            &Device::Cpu,
        )
        .unwrap();
        let dec = model.decode_params(&zt).unwrap();
        let logits: Vec<f32> = dec.out.flatten_all().unwrap().to_vec1().unwrap();
        let x = &xs_flat[img * px..(img + 1) * px];
        logits
            .iter()
            .zip(x)
            .map(|(&l, &t)| {
                f64::from(t) * log_sigmoid(f64::from(l))
                    + (1.0 - f64::from(t)) * log_sigmoid(-f64::from(l))
            })
            .sum()
    };
    let draw = |rng: &mut Rng| -> Vec<Vec<f64>> {
        let eps = rng.normals(n * d);
        (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| {
                        f64::from(mu[i][j])
                            + (0.5 * f64::from(logvar[i][j])).exp() * f64::from(eps[i * d + j])
                    })
                    .collect()
            })
            .collect()
    };

    let z = draw(&mut rng);
    let mut recon = 0.0;
    let mut kl = 0.0;
    for i in 0..n {
        recon -= log_px(&z[i], i);
        for j in 0..d {
            let (m, lv) = (f64::from(mu[i][j]), f64::from(logvar[i][j]));
            kl += 0.5 * (m * m + lv.exp() - 1.0 - lv);
        }
    }
    let (recon, kl) = (recon / n as f64, kl / n as f64);
    let tol = |v: f64| 1e-3 * v.abs().max(1.0);
    assert!(
        (report.recon - recon).abs() < tol(recon),
        "recon {} vs {recon}",
        report.recon
    );
    assert!((report.kl - kl).abs() < tol(kl), "kl {} vs {kl}", report.kl);
    assert!((report.neg_elbo - (recon + kl)).abs() < tol(recon));

    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let mut log_w = vec![Vec::new(); n];
    for _ in 0..k {
        let z = draw(&mut rng);
        for i in 0..n {
            let mut log_pz = 0.0;
            let mut log_qz = 0.0;
            for j in 0..d {
                let (m, lv) = (f64::from(mu[i][j]), f64::from(logvar[i][j]));
                log_pz += -0.5 * (z[i][j] * z[i][j] + ln2pi);
                log_qz += -0.5 * ((z[i][j] - m).powi(2) / lv.exp() + lv + ln2pi);
            }
            log_w[i].push(log_px(&z[i], i) + log_pz - log_qz);
        }
    }
    let iwae: f64 = log_w
        .iter()
        .map(|w| {
            let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            -(max + (w.iter().map(|v| (v - max).exp()).sum::<f64>() / k as f64).ln())
        })
        .sum::<f64>()
        / n as f64;
    let got = report.iwae_nll.unwrap();
    assert!((got - iwae).abs() < tol(iwae), "iwae {got} vs {iwae}");
    assert!(
        got <= report.neg_elbo + 1e-6 * report.neg_elbo.abs(),
        "IWAE {got} looser than the ELBO {}",
        report.neg_elbo
    );
}

#[test]
fn eval_is_deterministic_for_a_seed_and_the_bound_tightens() {
    let dir = tempfile::tempdir().unwrap();
    let (loaded, config) = tiny(dir.path(), "vae", 30);
    let ds = data::load(&config).unwrap();
    let ids: Vec<usize> = (0..64).collect();
    let a = evaluate(&loaded.model, &ds, &ids, 8, 1).unwrap();
    let b = evaluate(&loaded.model, &ds, &ids, 8, 1).unwrap();
    assert_eq!(a, b);
    let many = evaluate(&loaded.model, &ds, &ids, 64, 1).unwrap();
    assert!(
        many.iwae_nll.unwrap() <= a.neg_elbo,
        "{:?} vs {}",
        many.iwae_nll,
        a.neg_elbo
    );
    let bpd = a.neg_elbo / (a.dims as f64 * std::f64::consts::LN_2);
    assert!((a.neg_elbo_bpd - bpd).abs() < 1e-9);
}

#[test]
fn a_plain_autoencoder_has_no_kl_and_its_codes_sit_further_from_the_prior() {
    let dir = tempfile::tempdir().unwrap();
    let (ae, config) = tiny(dir.path(), "ae", 60);
    let (vae, _) = tiny(dir.path(), "vae", 60);
    let ds = data::load(&config).unwrap();
    let ids: Vec<usize> = (0..128).collect();
    let ae_report = evaluate(&ae.model, &ds, &ids, 0, 0).unwrap();
    let vae_report = evaluate(&vae.model, &ds, &ids, 0, 0).unwrap();
    assert_eq!(ae_report.kl, 0.0);
    assert!(vae_report.kl > 0.0);
    assert!(
        ae_report.prior_gap > vae_report.prior_gap,
        "AE gap {} vs VAE gap {}",
        ae_report.prior_gap,
        vae_report.prior_gap
    );
}
