//! The text every masked secret prints as, shared by the secret types and the connection-string
//! rendering (its own module, so neither has to import the other for it).

/// What a masked secret prints as.
pub const MASK: &str = "********";
