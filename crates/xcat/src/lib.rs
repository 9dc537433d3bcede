//! placeholder
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
pub mod db;
pub mod rules;
pub mod table;
pub mod tabdump;
