//! facestudio: a terminal studio for variational autoencoders that dream up faces.
//!
//! The library is the engine (configuration, data, model, training, run directories) and the
//! studio built on it; the `facestudio` binary is a thin command line over both.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod imageio;
pub mod model;
pub mod optim;
pub mod rng;
pub mod run;
pub mod train;
pub mod cli;

/// Opens the studio on the given options (the default command).
///
/// Until a terminal can host it, training runs headless with a progress line.
pub fn studio_entry(args: cli::TrainArgs, _theme: Option<String>, _graphics: Option<String>) -> anyhow::Result<()> {
    cli::headless(&args)
}
