//! hookstream processor.
pub mod decide;
pub mod input;
pub mod model;
pub mod store;
