//! hookstream processor.
pub mod decide;
pub mod input;
pub mod model;
