//! String values: normalized (lower case, accents removed) unless matched exactly.

use super::{Predicate, StringMatch, unescape};
use crate::search_index::normalize_string;

pub(super) fn parse(v: &str, mode: StringMatch) -> Predicate {
    let value = unescape(v);
    let value = if mode == StringMatch::Exact { value } else { normalize_string(&value) };
    Predicate::String { value, mode }
}
