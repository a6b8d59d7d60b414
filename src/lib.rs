//! facestudio: a terminal studio for variational autoencoders that dream up faces.
//!
//! The library is the engine (configuration, data, model, training, run directories) and the
//! studio built on it; the `facestudio` binary is a thin command line over both.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod device;
pub mod eval;
pub mod gallery;
pub mod imageio;
pub mod latent;
pub mod model;
pub mod ops;
pub mod optim;
pub mod reload;
pub mod rng;
pub mod run;
pub mod train;
pub mod tui;
