pub mod golden;
pub mod reference;
