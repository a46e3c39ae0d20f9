//! Training the embedded default model: the procedural data set (and, as it lands, the
//! trainer on candle's autograd).

pub mod dataset;
