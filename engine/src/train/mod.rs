//! Training the embedded default model on the engine's own networks (candle autograd): the
//! procedural data set, trainable parameters, the architecture and the two objectives.

pub mod adamw;
pub mod dataset;
pub mod lora;
pub mod model;
pub mod params;
pub mod run;
pub mod trainer;
