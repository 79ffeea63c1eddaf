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
    let ok_size = size.is_none_or(|s| s > 0 && s <= MAX_PAGE_SIZE as i64);
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

/// The order RabbitMQ sorts `items` in: by `sort` (when given), then by
/// the default keys, reversed with `sort_reverse=true`; `sort=` (empty)
/// leaves the order alone.
fn sort_order(items: &[J], q: &HashMap<String, String>, default_sort: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    let requested = q.get("sort");
    if requested.is_some_and(|s| s.is_empty()) {
        return order;
    }
    let keys = sort_keys(q, default_sort);
    let cached: Vec<Vec<Key<'_>>> = items
        .iter()
        .map(|it| keys.iter().map(|k| dotted(it, k)).collect())
        .collect();
    // Stable, so equal keys keep the natural order.
    order.sort_by(|&a, &b| {
        for (x, y) in cached[a].iter().zip(&cached[b]) {
            match x.cmp(y) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    });
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        order.reverse();
    }
    order
}

fn sort_keys<'a>(q: &'a HashMap<String, String>, default_sort: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut keys: Vec<Vec<&str>> = Vec::new();
    if let Some(s) = q.get("sort").filter(|s| !s.is_empty()) {
        keys.push(s.split('.').filter(|p| !p.is_empty()).collect());
    }
    keys.extend(default_sort.iter().map(|k| vec![*k]));
    keys
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

/// Whether an item's name passes the `name` (and `use_regex`) filter.
type NameFilter = Box<dyn Fn(&str) -> bool>;

fn name_filter(p: &Pagination) -> Result<Option<NameFilter>, ListError> {
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
    items: Vec<J>,
    q: &HashMap<String, String>,
    default_sort: &[&str],
) -> Result<J, ListError> {
    let page = pagination(q)?;
    let order = sort_order(&items, q, default_sort);
    // Sorting only borrowed the items; hand them out by index now.
    let mut owned: Vec<Option<J>> = items.into_iter().map(Some).collect();
    finish(order, &mut owned, q, page, |owned, i| {
        owned[i].take().unwrap_or(J::Null)
    })
}

/// [`reply`] for a JSON array (anything else is returned as it is).
pub fn reply_json(
    list: J,
    q: &HashMap<String, String>,
    default_sort: &[&str],
) -> Result<J, ListError> {
    match list {
        J::Array(items) => reply(items, q, default_sort),
        other => Ok(other),
    }
}

/// As [`reply`], for lists whose full JSON is costly: with a page asked
/// for, and when every field the request sorts or filters on is one
/// `light` can give (it is asked for exactly those top-level fields),
/// sorting and filtering run on the light objects and only the page's
/// items are rendered in full (`full`). 10,000 queues then cost 10,000
/// small objects and 100 full ones.
pub fn reply_lazy<T>(
    items: &[T],
    q: &HashMap<String, String>,
    default_sort: &[&str],
    light: impl Fn(&T, &[&str]) -> J,
    full: impl Fn(&T) -> J,
) -> Result<J, ListError> {
    let page = pagination(q)?;
    let mut roots: Vec<&str> = sort_keys(q, default_sort)
        .iter()
        .filter_map(|k| k.first().copied())
        .collect();
    roots.push("name");
    roots.sort_unstable();
    roots.dedup();
    let light_enough = page.is_some()
        && items.first().is_none_or(|first| {
            let probe = light(first, &roots);
            roots.iter().all(|r| probe.get(r).is_some())
        });
    if !light_enough {
        return reply(items.iter().map(full).collect(), q, default_sort);
    }
    let lights: Vec<J> = items.iter().map(|i| light(i, &roots)).collect();
    let order = sort_order(&lights, q, default_sort);
    let mut lights: Vec<Option<J>> = lights.into_iter().map(Some).collect();
    finish(order, &mut lights, q, page, |_, i| full(&items[i]))
}

/// Filters, pages and trims `order` (indices into `keys`, which hold at
/// least each item's `name`); `render` produces an item's reply JSON.
fn finish(
    order: Vec<usize>,
    keys: &mut [Option<J>],
    q: &HashMap<String, String>,
    page: Option<Pagination>,
    mut render: impl FnMut(&mut [Option<J>], usize) -> J,
) -> Result<J, ListError> {
    let cols = columns(q);
    let trim = |j: J| match &cols {
        Some(c) => extract(j, c),
        None => j,
    };
    let Some(p) = page else {
        let out = order.into_iter().map(|i| trim(render(keys, i))).collect();
        return Ok(J::Array(out));
    };
    let total = order.len();
    let kept: Vec<usize> = match name_filter(&p)? {
        Some(f) => order
            .into_iter()
            .filter(|&i| {
                f(keys[i]
                    .as_ref()
                    .and_then(|k| k.get("name"))
                    .and_then(J::as_str)
                    .unwrap_or(""))
            })
            .collect(),
        None => order,
    };
    let filtered = kept.len();
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
    let page_items: Vec<J> = kept
        .into_iter()
        .skip(offset)
        .take(p.page_size)
        .map(|i| trim(render(keys, i)))
        .collect();
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
