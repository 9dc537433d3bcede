//! Checked names and paths while decoding. postcard drops a serde error's message, so the reason a
//! name or path is refused is kept here for [`crate::decode`] to report: a hostile `Open` gets "has
//! a `..` component", not "serde error".

use serde::{Deserialize, Deserializer};
use std::cell::RefCell;

thread_local! {
    static WHY: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs one decode, returning its error with the refusal reason recorded during it, if any.
pub(crate) fn decoding<T>(
    f: impl FnOnce() -> Result<T, postcard::Error>,
) -> Result<T, (postcard::Error, Option<String>)> {
    WHY.with(|w| w.borrow_mut().take());
    f().map_err(|e| (e, WHY.with(|w| w.borrow_mut().take())))
}

fn checked<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(|e| {
        let why = format!("{what} refused: {e}");
        WHY.with(|w| *w.borrow_mut() = Some(why.clone()));
        serde::de::Error::custom(why)
    })
}

pub(crate) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<model::Name, D::Error> {
    checked(d, "name", model::Name::parse)
}

pub(crate) fn rel_path<'de, D: Deserializer<'de>>(d: D) -> Result<model::RelPath, D::Error> {
    checked(d, "path", model::RelPath::parse)
}

pub(crate) fn abs_path<'de, D: Deserializer<'de>>(d: D) -> Result<model::AbsPath, D::Error> {
    checked(d, "path", model::AbsPath::parse)
}

/// A service address with its prefix length (`10.0.1.101/24`, `fd00::65/64`), kept as sent.
pub(crate) fn address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, "address", |s| match s.parse::<ipnet::IpNet>() {
        Ok(_) => Ok(s.to_string()),
        // Not echoed when long: a hostile peer's megabyte stays out of the logs.
        Err(_) if s.len() > 64 => Err(format!("{} bytes are not an IP address with a prefix length", s.len())),
        Err(_) => Err(format!("`{s}` is not an IP address with a prefix length (10.0.1.101/24, fd00::65/64)")),
    })
}
