//! The pieces of the Shakespeare example: the plays, a character-level MLP language model with
//! a hand-written backward pass, the three optimizers (the crate's owned ones), the training
//! loop written once against the `came::Optimizer` trait, and the plot.

pub mod data;
pub mod linalg;
pub mod model;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod train;
