//! RabbitMQ's list query parameters: `sort`/`sort_reverse`, `columns`, and
//! with `page` the paginated envelope (`page_size`, `name`, `use_regex`),
//! with its 400 errors worded as RabbitMQ words them.
//!
//! As in RabbitMQ, sorting compares values in Erlang term order (numbers,
//! then atoms such as `true`/`null`, then objects and arrays, then
//! strings), a missing sort field counts as 0, the requested sort key comes
//! before the list's default keys, and the name filter applies only when a
//! page is asked for.

use serde_json::{Map, Value as J};
use std::cmp::Ordering;
use std::collections::HashMap;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 500;

/// A list request's rejection: (error, reason), always a 400.
#[derive(Debug)]
pub struct ListError(pub &'static str, pub String);

fn invalid() -> ListError {
    ListError("bad_request", "Pagination parameters are invalid".into())
}

struct Pagination {
    page: usize,
    page_size: usize,
    name: Option<String>,
    use_regex: bool,
}

fn int_param(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ListError> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| invalid()),
    }
}

fn pagination(q: &HashMap<String, String>) -> Result<Option<Pagination>, ListError> {
    let page = int_param(q, "page")?;
    let size = int_param(q, "page_size")?;
    let Some(page) = page else {
        return Ok(None);
    };
    let ok_size = size.map_or(true, |s| s > 0 && s <= MAX_PAGE_SIZE as i64);
    if page <= 0 || !ok_size {
        return Err(ListError(
            "invalid_pagination_parameters",
            format!(
                "Invalid pagination parameters: page number {page}, page size {}",
                size.map_or("undefined".to_owned(), |s| s.to_string())
            ),
        ));
    }
    Ok(Some(Pagination {
        page: page as usize,
        page_size: size.map_or(DEFAULT_PAGE_SIZE, |s| s as usize),
        name: q.get("name").filter(|n| !n.is_empty()).cloned(),
        use_regex: q.get("use_regex").is_some_and(|v| v == "true"),
    }))
}

/// One sort value in Erlang term order.
#[derive(Debug, PartialEq)]
enum Key<'a> {
    Num(f64),
    Atom(&'static str),
    Compound,
    Str(&'a str),
}

impl Key<'_> {
    fn rank(&self) -> u8 {
        match self {
            Key::Num(_) => 0,
            Key::Atom(_) => 1,
            Key::Compound => 2,
            Key::Str(_) => 3,
        }
    }

    fn cmp(&self, other: &Key<'_>) -> Ordering {
        match (self, other) {
            (Key::Num(a), Key::Num(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (Key::Atom(a), Key::Atom(b)) => a.cmp(b),
            (Key::Str(a), Key::Str(b)) => a.as_bytes().cmp(b.as_bytes()),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn dotted<'a>(item: &'a J, path: &[&str]) -> Key<'a> {
    let mut v = item;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return Key::Num(0.0),
        }
    }
    match v {
        J::Number(n) => Key::Num(n.as_f64().unwrap_or(0.0)),
        J::Bool(true) => Key::Atom("true"),
        J::Bool(false) => Key::Atom("false"),
        J::Null => Key::Atom("null"),
        J::String(s) => Key::Str(s),
        _ => Key::Compound,
    }
}

/// Sorts `items` as RabbitMQ does: by `sort` (when given), then by the
/// default keys; `sort=` (empty) leaves the order alone.
fn sort(items: &mut Vec<J>, q: &HashMap<String, String>, default_sort: &[&str]) {
    let requested = q.get("sort");
    if requested.is_some_and(|s| s.is_empty()) {
        return;
    }
    let mut keys: Vec<Vec<&str>> = Vec::new();
    if let Some(s) = requested {
        keys.push(s.split('.').filter(|p| !p.is_empty()).collect());
    }
    keys.extend(default_sort.iter().map(|k| vec![*k]));
    let mut order: Vec<usize> = (0..items.len()).collect();
    {
        let cached: Vec<Vec<Key<'_>>> = items
            .iter()
            .map(|it| keys.iter().map(|k| dotted(it, k)).collect())
            .collect();
        order.sort_by(|&a, &b| {
            for (x, y) in cached[a].iter().zip(&cached[b]) {
                match x.cmp(y) {
                    Ordering::Equal => continue,
                    o => return o,
                }
            }
            Ordering::Equal
        });
    }
    let mut taken: Vec<Option<J>> = std::mem::take(items).into_iter().map(Some).collect();
    *items = order
        .into_iter()
        .map(|i| taken[i].take().expect("each index once"))
        .collect();
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
}

/// The `columns` parameter as paths.
fn columns(q: &HashMap<String, String>) -> Option<Vec<Vec<String>>> {
    let c = q.get("columns")?;
    Some(
        c.split(',')
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.split('.')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect(),
    )
}

/// Keeps only the wanted columns of an object (recursively into arrays).
fn extract(item: J, cols: &[Vec<String>]) -> J {
    match item {
        J::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let mut wanted = false;
                let mut all = false;
                let mut deeper: Vec<Vec<String>> = Vec::new();
                for c in cols {
                    if c.first() == Some(&k) {
                        wanted = true;
                        if c.len() == 1 {
                            all = true;
                        } else {
                            deeper.push(c[1..].to_vec());
                        }
                    }
                }
                if wanted {
                    let v = if all { v } else { extract(v, &deeper) };
                    out.insert(k, v);
                }
            }
            J::Object(out)
        }
        J::Array(a) => J::Array(a.into_iter().map(|i| extract(i, cols)).collect()),
        other => other,
    }
}

fn name_filter(p: &Pagination) -> Result<Option<Box<dyn Fn(&str) -> bool>>, ListError> {
    let Some(name) = p.name.clone() else {
        return Ok(None);
    };
    if p.use_regex {
        let re = regex::RegexBuilder::new(&name)
            .case_insensitive(true)
            .build()
            .map_err(|_| invalid())?;
        Ok(Some(Box::new(move |s: &str| re.is_match(s))))
    } else {
        let needle = name.to_lowercase();
        Ok(Some(Box::new(move |s: &str| {
            s.to_lowercase().contains(&needle)
        })))
    }
}

/// Applies the list parameters to `items` (already in their natural order):
/// a plain array without `page`, RabbitMQ's envelope with it.
pub fn reply(
    mut items: Vec<J>,
    q: &HashMap<String, String>,
    default_sort: &[&str],
) -> Result<J, ListError> {
    let page = pagination(q)?;
    let filter = match &page {
        Some(p) => name_filter(p)?,
        None => None,
    };
    sort(&mut items, q, default_sort);
    let cols = columns(q);
    let Some(p) = page else {
        if let Some(cols) = &cols {
            items = items.into_iter().map(|i| extract(i, cols)).collect();
        }
        return Ok(J::Array(items));
    };
    let total = items.len();
    if let Some(f) = filter {
        items.retain(|i| f(i.get("name").and_then(J::as_str).unwrap_or("")));
    }
    let filtered = items.len();
    let offset = (p.page - 1).saturating_mul(p.page_size);
    if offset > filtered {
        return Err(ListError(
            "page_out_of_range",
            format!(
                "Page out of range, page: {} page size: {}, len: {filtered}",
                p.page, p.page_size
            ),
        ));
    }
    let mut page_items: Vec<J> = items.into_iter().skip(offset).take(p.page_size).collect();
    if let Some(cols) = &cols {
        page_items = page_items.into_iter().map(|i| extract(i, cols)).collect();
    }
    Ok(serde_json::json!({
        "filtered_count": filtered,
        "item_count": page_items.len(),
        "items": page_items,
        "page": p.page,
        "page_count": filtered.div_ceil(p.page_size),
        "page_size": p.page_size,
        "total_count": total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sorts_in_erlang_term_order_with_missing_as_zero() {
        let items = vec![
            json!({"name": "b", "n": "x"}),
            json!({"name": "a", "n": 5}),
            json!({"name": "c"}),
            json!({"name": "d", "n": true}),
        ];
        let out = reply(items, &q(&[("sort", "n"), ("columns", "name")]), &["name"]).unwrap();
        assert_eq!(
            out,
            json!([{"name": "c"}, {"name": "a"}, {"name": "d"}, {"name": "b"}])
        );
    }

    #[test]
    fn pages_filter_and_reject_as_rabbitmq() {
        let items: Vec<J> = (0..5).map(|i| json!({"name": format!("q{i}")})).collect();
        let out = reply(
            items.clone(),
            &q(&[("page", "2"), ("page_size", "2")]),
            &["name"],
        )
        .unwrap();
        assert_eq!(out["items"], json!([{"name": "q2"}, {"name": "q3"}]));
        assert_eq!(out["page_count"], 3);
        let e = reply(
            items.clone(),
            &q(&[("page", "1"), ("page_size", "501")]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.1,
            "Invalid pagination parameters: page number 1, page size 501"
        );
        let e = reply(items.clone(), &q(&[("page", "4"), ("page_size", "2")]), &[]).unwrap_err();
        assert_eq!(e.0, "page_out_of_range");
        let e = reply(
            items,
            &q(&[("page", "1"), ("name", "("), ("use_regex", "true")]),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.1, "Pagination parameters are invalid");
    }
}
