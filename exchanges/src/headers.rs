//! Headers-exchange matching: `x-match` all/any (and the -with-x variants).
//!
//! A binding argument with a void value matches on the header's presence.
//! Arguments starting with `x-` are ignored unless the mode is `*-with-x`.

use crate::value::{Table, Value};
use crate::BindError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// A compiled headers binding.
#[derive(Clone, Debug)]
pub struct HeadersMatcher {
    mode: Mode,
    arguments: Table,
}

impl HeadersMatcher {
    pub fn new(arguments: &Table) -> Result<Self, BindError> {
        let mode = match arguments.get("x-match") {
            None => Mode::All,
            Some(v) => match v.as_str() {
                Some("all") => Mode::All,
                Some("any") => Mode::Any,
                Some("all-with-x") => Mode::AllWithX,
                Some("any-with-x") => Mode::AnyWithX,
                _ => return Err(BindError::InvalidXMatch(v.to_string())),
            },
        };
        Ok(HeadersMatcher {
            mode,
            arguments: arguments.clone(),
        })
    }

    pub fn arguments(&self) -> &Table {
        &self.arguments
    }

    pub fn matches(&self, headers: &Table) -> bool {
        let with_x = matches!(self.mode, Mode::AllWithX | Mode::AnyWithX);
        let all = matches!(self.mode, Mode::All | Mode::AllWithX);
        let mut considered = self
            .arguments
            .iter()
            .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")));
        let hit = |(k, v): (&str, &Value)| match headers.get(k) {
            None => false,
            Some(_) if *v == Value::Void => true,
            Some(h) => h == v,
        };
        if all {
            considered.all(hit)
        } else {
            considered.any(hit)
        }
    }
}
