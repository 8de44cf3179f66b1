//! The pieces of the Shakespeare example: the plays, a character-level MLP language model with
//! a hand-written backward pass, the three optimizers over borrowed buffers, the training loop
//! and the plot.

pub mod data;
pub mod linalg;
pub mod model;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod train;
