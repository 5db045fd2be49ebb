//! PATCH documents: JSON Patch (RFC 6902) and FHIRPath Patch (FHIR R4 `Parameters`).
//!
//! Owns: applying a patch to a resource's [`Json`] tree, all or nothing (the input is
//! cloned; on any error the caller keeps the original). Errors name the operation
//! (`operation 2 (replace /name/0/family): ...`). Must not: validate the result (the caller
//! validates it like any other write) or know about versions.

use std::collections::HashMap;

use crate::Json;
use crate::Model;
use crate::fhirpath::{Expression, Value};

/// Why a patch could not be applied. Always the client's fault (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError(pub String);

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatchError {}

/// One step of a location in a JSON tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Applies a patch carried as a resource, the form a Bundle entry uses: a `Binary` holding
/// a JSON Patch (`contentType` `application/json-patch+json`, base64 `data`) or a
/// FHIRPath Patch `Parameters`.
pub fn apply_patch_resource(model: &'static Model, target: &Json, patch: &Json) -> Result<Json, PatchError> {
    use base64::Engine as _;
    match patch.get("resourceType").and_then(Json::as_str) {
        Some("Parameters") => fhirpath_patch(model, target, patch),
        Some("Binary") => {
            let ct = patch.get("contentType").and_then(Json::as_str).unwrap_or("");
            if !ct.starts_with("application/json-patch+json") {
                return Err(PatchError(format!(
                    "a Binary patch must have contentType application/json-patch+json, not '{ct}'"
                )));
            }
            let data = patch.get("data").and_then(Json::as_str).unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| PatchError(format!("Binary.data is not base64: {e}")))?;
            let doc = Json::parse(&bytes, crate::json::ParseLimits::default())
                .map_err(|e| PatchError(format!("the JSON Patch is not JSON: {e}")))?;
            json_patch(target, &doc)
        }
        _ => Err(PatchError("a patch entry's resource is a Binary (JSON Patch) or Parameters (FHIRPath Patch)".into())),
    }
}

// ---------------------------------------------------------------------------------------
// JSON Patch

/// Applies a JSON Patch document (an array of operations) to `target`.
pub fn json_patch(target: &Json, patch: &Json) -> Result<Json, PatchError> {
    let Some(ops) = patch.as_array() else {
        return Err(PatchError("a JSON Patch document is an array of operations".into()));
    };
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Json::as_str).unwrap_or("");
        let path = op.get("path").and_then(Json::as_str);
        let label = format!("operation {i} ({name} {})", path.unwrap_or("?"));
        let fail = |m: &str| PatchError(format!("{label}: {m}"));
        let path = path.ok_or_else(|| fail("'path' is required"))?;
        let steps = parse_pointer(path).map_err(|m| fail(&m))?;
        let value = || op.get("value").cloned().ok_or_else(|| fail("'value' is required"));
        let from = || -> Result<Vec<String>, PatchError> {
            let f = op.get("from").and_then(Json::as_str).ok_or_else(|| fail("'from' is required"))?;
            parse_pointer(f).map_err(|m| fail(&m))
        };
        match name {
            "add" => pointer_add(&mut doc, &steps, value()?).map_err(|m| fail(&m))?,
            "remove" => {
                pointer_remove(&mut doc, &steps).map_err(|m| fail(&m))?;
            }
            "replace" => {
                let slot = pointer_get_mut(&mut doc, &steps).ok_or_else(|| fail("the path does not exist"))?;
                *slot = value()?;
            }
            "move" => {
                let from = from()?;
                if steps.len() > from.len() && steps[..from.len()] == from[..] {
                    return Err(fail("cannot move a value into one of its own children"));
                }
                let v = pointer_remove(&mut doc, &from).map_err(|m| fail(&format!("from: {m}")))?;
                pointer_add(&mut doc, &steps, v).map_err(|m| fail(&m))?;
            }
            "copy" => {
                let from = from()?;
                let v = pointer_get(&doc, &from).cloned().ok_or_else(|| fail("'from' does not exist"))?;
                pointer_add(&mut doc, &steps, v).map_err(|m| fail(&m))?;
            }
            "test" => {
                let expected = value()?;
                let actual = pointer_get(&doc, &steps).ok_or_else(|| fail("the path does not exist"))?;
                if !json_equal(actual, &expected) {
                    return Err(fail("the value is not the expected one"));
                }
            }
            "" => return Err(fail("'op' is required")),
            other => return Err(fail(&format!("unknown op '{other}' (add, remove, replace, move, copy, test)"))),
        }
    }
    Ok(doc)
}

/// RFC 6901 pointer tokens (`""` is the whole document).
fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("'{p}' is not a JSON pointer (it must start with '/')"));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{token}' is not an array index"));
    }
    let i: usize = token.parse().map_err(|_| format!("'{token}' is not an array index"))?;
    let max = if allow_end { len } else { len.saturating_sub(1) };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("index {i} is out of bounds (the array has {len} items)"));
    }
    Ok(i)
}

fn pointer_get<'a>(doc: &'a Json, steps: &[String]) -> Option<&'a Json> {
    let mut cur = doc;
    for t in steps {
        cur = match cur {
            Json::Object(_) => cur.get(t)?,
            Json::Array(items) => items.get(array_index(t, items.len(), false).ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn pointer_get_mut<'a>(doc: &'a mut Json, steps: &[String]) -> Option<&'a mut Json> {
    let mut cur = doc;
    for t in steps {
        cur = match cur {
            Json::Object(_) => cur.get_mut(t)?,
            Json::Array(items) => {
                let i = array_index(t, items.len(), false).ok()?;
                items.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn pointer_add(doc: &mut Json, steps: &[String], value: Json) -> Result<(), String> {
    let Some((last, parent)) = steps.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_get_mut(doc, parent) {
        Some(obj @ Json::Object(_)) => {
            obj.set(last, value);
            Ok(())
        }
        Some(Json::Array(items)) => {
            let i = array_index(last, items.len(), true)?;
            items.insert(i, value);
            Ok(())
        }
        Some(other) => Err(format!("the parent is a {}, not an object or array", other.kind())),
        None => Err("the parent of the path does not exist".into()),
    }
}

fn pointer_remove(doc: &mut Json, steps: &[String]) -> Result<Json, String> {
    let Some((last, parent)) = steps.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match pointer_get_mut(doc, parent) {
        Some(obj @ Json::Object(_)) => obj.remove(last).ok_or_else(|| "the path does not exist".to_string()),
        Some(Json::Array(items)) => {
            let i = array_index(last, items.len(), false)?;
            Ok(items.remove(i))
        }
        _ => Err("the path does not exist".into()),
    }
}

/// JSON equality with numbers compared by value (`1.0` equals `1`).
fn json_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            x == y
                || matches!((x.parse::<rust_decimal::Decimal>(), y.parse::<rust_decimal::Decimal>()), (Ok(p), Ok(q)) if p == q)
        }
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)),
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| b.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------
// FHIRPath Patch

/// Whether `body` is a FHIRPath Patch document (`Parameters` with `operation` parameters).
pub fn is_fhirpath_patch(body: &Json) -> bool {
    body.get("resourceType").and_then(Json::as_str) == Some("Parameters")
}

/// Applies a FHIRPath Patch (`Parameters` with one `operation` parameter per step) to the
/// resource `target`.
pub fn fhirpath_patch(model: &'static Model, target: &Json, patch: &Json) -> Result<Json, PatchError> {
    if !is_fhirpath_patch(patch) {
        return Err(PatchError("a FHIRPath Patch document is a Parameters resource".into()));
    }
    let params = patch.get("parameter").and_then(Json::as_array).unwrap_or(&[]);
    let mut doc = target.clone();
    for (i, p) in params.iter().enumerate() {
        if p.get("name").and_then(Json::as_str) != Some("operation") {
            return Err(PatchError(format!("parameter {i}: only 'operation' parameters are allowed")));
        }
        let parts = part_map(p).map_err(|m| PatchError(format!("operation {i}: {m}")))?;
        let kind = parts.get("type").and_then(|v| v.as_str()).unwrap_or("");
        let path = parts.get("path").and_then(|v| v.as_str()).unwrap_or("");
        let fail = |m: &str| PatchError(format!("operation {i} ({kind} {path}): {m}"));
        if path.is_empty() {
            return Err(fail("'path' is required"));
        }
        let int_part = |name: &str| -> Result<usize, PatchError> {
            match parts.get(name) {
                Some(Json::Number(n)) => {
                    n.parse().map_err(|_| fail(&format!("'{name}' must be a non-negative integer")))
                }
                _ => Err(fail(&format!("'{name}' is required"))),
            }
        };
        let value = || parts.get("value").cloned().ok_or_else(|| fail("'value' is required"));
        match kind {
            "add" => {
                let name = parts.get("name").and_then(|v| v.as_str()).ok_or_else(|| fail("'name' is required"))?;
                let at = single_location(model, &doc, path).map_err(|m| fail(&m))?;
                let value = value()?;
                let Some(Json::Object(_)) = get_at(&doc, &at) else {
                    return Err(fail("the path must select one element with children"));
                };
                let many = repeats(model, &doc, &at, name);
                let container = get_at_mut(&mut doc, &at).expect("located above");
                match container.get_mut(name) {
                    Some(Json::Array(items)) => items.push(value),
                    Some(_) => return Err(fail(&format!("'{name}' already has a value (use replace)"))),
                    None if many => container.set(name, Json::Array(vec![value])),
                    None => container.set(name, value),
                }
            }
            "insert" => {
                let index = int_part("index")?;
                let (items_at, len) = list_location(model, &doc, path).map_err(|m| fail(&m))?;
                if index > len {
                    return Err(fail(&format!("index {index} is out of bounds (the list has {len} items)")));
                }
                let value = value()?;
                insert_into_list(&mut doc, &items_at, index, value).map_err(|m| fail(&m))?;
            }
            "delete" => {
                let locs = locations(model, &doc, path).map_err(|m| fail(&m))?;
                match locs.len() {
                    0 => {}
                    1 => remove_at(&mut doc, &locs[0]).map_err(|m| fail(&m))?,
                    n => return Err(fail(&format!("the path selects {n} elements; delete takes one"))),
                }
            }
            "replace" => {
                let at = single_location(model, &doc, path).map_err(|m| fail(&m))?;
                let value = value()?;
                if at.is_empty() {
                    return Err(fail("cannot replace the whole resource"));
                }
                *get_at_mut(&mut doc, &at).expect("located above") = value;
            }
            "move" => {
                let source = int_part("source")?;
                let destination = int_part("destination")?;
                let (items_at, len) = list_location(model, &doc, path).map_err(|m| fail(&m))?;
                if source >= len || destination >= len {
                    return Err(fail(&format!("source and destination must be below {len}")));
                }
                let Some(Json::Array(items)) = get_at_mut(&mut doc, &items_at) else {
                    return Err(fail("the path does not select a list"));
                };
                let v = items.remove(source);
                items.insert(destination, v);
            }
            "" => return Err(fail("'type' is required")),
            other => return Err(fail(&format!("unknown type '{other}' (add, insert, delete, replace, move)"))),
        }
    }
    Ok(doc)
}

/// The parts of one `operation` parameter by name; `value` is the JSON value of its
/// `value[x]`, or an object built from nested parts.
fn part_map(p: &Json) -> Result<HashMap<String, Json>, String> {
    let mut out = HashMap::new();
    for part in p.get("part").and_then(Json::as_array).unwrap_or(&[]) {
        let Some(name) = part.get("name").and_then(Json::as_str) else {
            return Err("every part needs a name".into());
        };
        let v = part_value(part)?;
        if out.insert(name.to_string(), v).is_some() {
            return Err(format!("part '{name}' appears twice"));
        }
    }
    Ok(out)
}

fn part_value(part: &Json) -> Result<Json, String> {
    let name = part.get("name").and_then(Json::as_str).unwrap_or("");
    if let Some((_, v)) = part.as_object().into_iter().flatten().find(|(k, _)| k.starts_with("value")) {
        return Ok(v.clone());
    }
    let Some(children) = part.get("part").and_then(Json::as_array) else {
        return Err(format!("part '{name}' has neither a value[x] nor parts"));
    };
    // A complex value given as parts: one member per part (repeated names make arrays).
    let mut obj = Json::Object(Vec::new());
    for c in children {
        let Some(cn) = c.get("name").and_then(Json::as_str) else {
            return Err(format!("a part of '{name}' has no name"));
        };
        let v = part_value(c)?;
        match obj.get_mut(cn) {
            Some(Json::Array(items)) => items.push(v),
            Some(existing) => {
                let first = std::mem::replace(existing, Json::Null);
                *existing = Json::Array(vec![first, v]);
            }
            None => obj.set(cn, v),
        }
    }
    Ok(obj)
}

/// Every location (steps from the root) of the nodes `path` selects. Only elements of the
/// resource can be located; computed values (`1 + 1`, strings) are an error.
fn locations(model: &'static Model, doc: &Json, path: &str) -> Result<Vec<Vec<Step>>, String> {
    let expr = Expression::parse(path).map_err(|e| format!("the path does not parse: {e}"))?;
    let values = expr.evaluate(model, doc).map_err(|e| format!("the path cannot be evaluated: {e}"))?;
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_address: HashMap<*const Json, Vec<Step>> = HashMap::new();
    index_addresses(doc, &mut Vec::new(), &mut by_address);
    values
        .iter()
        .map(|v| match v {
            Value::Node(n) => n
                .value
                .and_then(|j| by_address.get(&(j as *const Json)).cloned())
                .ok_or_else(|| "the path selects something that is not an element of the resource".to_string()),
            _ => Err("the path selects a computed value, not an element of the resource".to_string()),
        })
        .collect()
}

fn index_addresses(v: &Json, at: &mut Vec<Step>, out: &mut HashMap<*const Json, Vec<Step>>) {
    out.insert(v as *const Json, at.clone());
    match v {
        Json::Object(members) => {
            for (k, c) in members {
                at.push(Step::Key(k.clone()));
                index_addresses(c, at, out);
                at.pop();
            }
        }
        Json::Array(items) => {
            for (i, c) in items.iter().enumerate() {
                at.push(Step::Index(i));
                index_addresses(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn single_location(model: &'static Model, doc: &Json, path: &str) -> Result<Vec<Step>, String> {
    let mut locs = locations(model, doc, path)?;
    match locs.len() {
        1 => Ok(locs.pop().expect("one")),
        0 => Err("the path selects nothing".into()),
        n => Err(format!("the path selects {n} elements; this operation takes exactly one")),
    }
}

/// For `insert`/`move`: the location of the JSON array the path names and its length. A
/// path that selects nothing names an absent list when it ends in `.name` under one
/// element (the array is then created on insert).
fn list_location(model: &'static Model, doc: &Json, path: &str) -> Result<(Vec<Step>, usize), String> {
    let locs = locations(model, doc, path)?;
    if let Some(first) = locs.first() {
        let Some((Step::Index(_), parent)) = first.split_last() else {
            return Err("the path does not select a list (a repeating element)".into());
        };
        let len = match get_at(doc, parent) {
            Some(Json::Array(items)) => items.len(),
            _ => return Err("the path does not select a list".into()),
        };
        if locs.len() != len || locs.iter().any(|l| l.len() != first.len() || l[..parent.len()] != parent[..]) {
            return Err("the path must select a whole list (all items of one repeating element)".into());
        }
        return Ok((parent.to_vec(), len));
    }
    let (parent_path, name) = path
        .rsplit_once('.')
        .filter(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .ok_or_else(|| "the path selects nothing".to_string())?;
    let mut parent = single_location(model, doc, parent_path)?;
    if !repeats(model, doc, &parent, name) {
        return Err(format!("'{name}' is not a repeating element"));
    }
    parent.push(Step::Key(name.to_string()));
    Ok((parent, 0))
}

fn insert_into_list(doc: &mut Json, items_at: &[Step], index: usize, value: Json) -> Result<(), String> {
    if get_at(doc, items_at).is_none() {
        let Some((Step::Key(name), parent)) = items_at.split_last() else {
            return Err("the list cannot be created here".into());
        };
        let container = get_at_mut(doc, parent).ok_or("the list's parent does not exist")?;
        container.set(name, Json::Array(vec![value]));
        return Ok(());
    }
    match get_at_mut(doc, items_at) {
        Some(Json::Array(items)) => {
            items.insert(index, value);
            Ok(())
        }
        _ => Err("the path does not select a list".into()),
    }
}

/// Whether element `name` of the element at `at` repeats (max `*`), from the model; when
/// the element's type is not known, whether the JSON already holds an array.
fn repeats(model: &'static Model, doc: &Json, at: &[Step], name: &str) -> bool {
    use crate::model::TypeRef;
    let Some(rt) = doc.get("resourceType").and_then(Json::as_str) else { return false };
    // Walk the model along the object keys of `at` (array indexes do not change the type).
    let Some(mut structure) = model.structure_of_type(rt) else { return false };
    for step in at {
        let Step::Key(k) = step else { continue };
        let Some(&(e, v)) = structure.by_json_name.get(k.as_str()) else { return false };
        let TypeRef::Struct(key) = &structure.elements[e].variants[v].1 else { return false };
        let Some(next) = model.structure_of_type(key) else { return false };
        structure = next;
    }
    structure.by_json_name.get(name).is_some_and(|&(e, _)| structure.elements[e].many)
}

fn remove_at(doc: &mut Json, at: &[Step]) -> Result<(), String> {
    let Some((last, parent)) = at.split_last() else {
        return Err("cannot delete the whole resource".into());
    };
    let container = get_at_mut(doc, parent).ok_or("the element's parent does not exist")?;
    match (last, container) {
        (Step::Key(k), c @ Json::Object(_)) => {
            c.remove(k);
            let companion = format!("_{k}");
            c.remove(&companion);
        }
        (Step::Index(i), Json::Array(items)) => {
            items.remove(*i);
            // FHIR has no empty arrays: an emptied list goes.
            if items.is_empty()
                && let Some((Step::Key(k), grand)) = parent.split_last()
                && let Some(g) = get_at_mut(doc, grand)
            {
                g.remove(k);
            }
        }
        _ => return Err("the element cannot be removed".into()),
    }
    Ok(())
}

fn get_at<'a>(doc: &'a Json, at: &[Step]) -> Option<&'a Json> {
    let mut cur = doc;
    for s in at {
        cur = match (s, cur) {
            (Step::Key(k), c) => c.get(k)?,
            (Step::Index(i), Json::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn get_at_mut<'a>(doc: &'a mut Json, at: &[Step]) -> Option<&'a mut Json> {
    let mut cur = doc;
    for s in at {
        cur = match (s, cur) {
            (Step::Key(k), c) => c.get_mut(k)?,
            (Step::Index(i), Json::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::ParseLimits;

    fn j(s: &str) -> Json {
        Json::parse(s.as_bytes(), ParseLimits::default()).unwrap()
    }

    const PATIENT: &str = r#"{"resourceType":"Patient","id":"p","active":true,
        "name":[{"family":"Doe","given":["Jo","Ann"]}],"identifier":[{"value":"a"},{"value":"b"}]}"#;

    #[test]
    fn json_patch_operations() {
        let p = j(PATIENT);
        let out = json_patch(
            &p,
            &j(r#"[{"op":"replace","path":"/name/0/family","value":"Roe"},
                  {"op":"add","path":"/name/0/given/-","value":"Zed"},
                  {"op":"add","path":"/birthDate","value":"1970-01-01"},
                  {"op":"remove","path":"/active"},
                  {"op":"move","from":"/identifier/1","path":"/identifier/0"},
                  {"op":"copy","from":"/name/0/family","path":"/name/0/given/0"},
                  {"op":"test","path":"/identifier/0/value","value":"b"}]"#),
        )
        .unwrap();
        assert_eq!(
            out.get("name").unwrap().as_array().unwrap()[0],
            j(r#"{"family":"Roe","given":["Roe","Jo","Ann","Zed"]}"#)
        );
        assert_eq!(out.get("birthDate").unwrap().as_str(), Some("1970-01-01"));
        assert!(out.get("active").is_none());
        assert_eq!(out.get("identifier").unwrap(), &j(r#"[{"value":"b"},{"value":"a"}]"#));
    }

    #[test]
    fn json_patch_errors_name_the_operation_and_change_nothing() {
        let p = j(PATIENT);
        let e =
            json_patch(&p, &j(r#"[{"op":"replace","path":"/active","value":false},{"op":"remove","path":"/gender"}]"#))
                .unwrap_err();
        assert!(e.0.starts_with("operation 1 (remove /gender)"), "{e}");
        let e = json_patch(&p, &j(r#"[{"op":"test","path":"/active","value":false}]"#)).unwrap_err();
        assert!(e.0.contains("not the expected"), "{e}");
        let e = json_patch(&p, &j(r#"[{"op":"add","path":"/name/5","value":{}}]"#)).unwrap_err();
        assert!(e.0.contains("out of bounds"), "{e}");
        let e = json_patch(&p, &j(r#"[{"op":"frobnicate","path":"/a"}]"#)).unwrap_err();
        assert!(e.0.contains("unknown op"), "{e}");
        assert!(json_patch(&p, &j(r#"{"op":"add"}"#)).is_err());
        assert!(json_patch(&p, &j(r#"[{"op":"add","path":"name","value":1}]"#)).is_err());
        // ~1 and ~0 escapes; numbers compare by value.
        let q = j(r#"{"a/b":{"m~n":1.0}}"#);
        assert!(json_patch(&q, &j(r#"[{"op":"test","path":"/a~1b/m~0n","value":1}]"#)).is_ok());
    }

    fn op(parts: &str) -> String {
        format!(r#"{{"name":"operation","part":[{parts}]}}"#)
    }

    fn fp(ops: &[String]) -> Json {
        j(&format!(r#"{{"resourceType":"Parameters","parameter":[{}]}}"#, ops.join(",")))
    }

    #[test]
    fn fhirpath_patch_operations() {
        let model = Model::r4().unwrap();
        let p = j(PATIENT);
        let patch = fp(&[
            op(
                r#"{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.name.family"},{"name":"value","valueString":"Roe"}"#,
            ),
            op(
                r#"{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},{"name":"name","valueString":"birthDate"},{"name":"value","valueDate":"1970-01-01"}"#,
            ),
            op(
                r#"{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},{"name":"name","valueString":"telecom"},{"name":"value","part":[{"name":"system","valueCode":"phone"},{"name":"value","valueString":"555"}]}"#,
            ),
            op(
                r#"{"name":"type","valueCode":"insert"},{"name":"path","valueString":"Patient.identifier"},{"name":"index","valueInteger":0},{"name":"value","valueIdentifier":{"value":"z"}}"#,
            ),
            op(
                r#"{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.identifier.where(value='a')"}"#,
            ),
            op(
                r#"{"name":"type","valueCode":"move"},{"name":"path","valueString":"Patient.name.given"},{"name":"source","valueInteger":1},{"name":"destination","valueInteger":0}"#,
            ),
            op(r#"{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.gender"}"#),
            op(
                r#"{"name":"type","valueCode":"insert"},{"name":"path","valueString":"Patient.address"},{"name":"index","valueInteger":0},{"name":"value","valueAddress":{"city":"X"}}"#,
            ),
        ]);
        let out = fhirpath_patch(model, &p, &patch).unwrap();
        assert_eq!(out.get("name").unwrap(), &j(r#"[{"family":"Roe","given":["Ann","Jo"]}]"#));
        assert_eq!(out.get("birthDate").unwrap().as_str(), Some("1970-01-01"));
        assert_eq!(out.get("telecom").unwrap(), &j(r#"[{"system":"phone","value":"555"}]"#));
        assert_eq!(out.get("identifier").unwrap(), &j(r#"[{"value":"z"},{"value":"b"}]"#));
        assert_eq!(out.get("address").unwrap(), &j(r#"[{"city":"X"}]"#));
        // Deleting the last item of a list removes the list.
        let del = fp(&[op(r#"{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.name"}"#)]);
        assert!(fhirpath_patch(model, &p, &del).unwrap().get("name").is_none());
    }

    #[test]
    fn fhirpath_patch_errors() {
        let model = Model::r4().unwrap();
        let p = j(PATIENT);
        let cases = [
            (
                op(r#"{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.identifier"}"#),
                "selects 2",
            ),
            (
                op(
                    r#"{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.gender"},{"name":"value","valueCode":"x"}"#,
                ),
                "selects nothing",
            ),
            (
                op(
                    r#"{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},{"name":"name","valueString":"active"},{"name":"value","valueBoolean":false}"#,
                ),
                "already has",
            ),
            (
                op(
                    r#"{"name":"type","valueCode":"insert"},{"name":"path","valueString":"Patient.identifier"},{"name":"index","valueInteger":9},{"name":"value","valueIdentifier":{}}"#,
                ),
                "out of bounds",
            ),
            (
                op(
                    r#"{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.name.("},{"name":"value","valueString":"x"}"#,
                ),
                "does not parse",
            ),
            (
                op(
                    r#"{"name":"type","valueCode":"replace"},{"name":"path","valueString":"1 + 1"},{"name":"value","valueString":"x"}"#,
                ),
                "computed value",
            ),
            (op(r#"{"name":"type","valueCode":"wiggle"},{"name":"path","valueString":"Patient"}"#), "unknown type"),
        ];
        for (o, needle) in cases {
            let e = fhirpath_patch(model, &p, &fp(&[o])).unwrap_err();
            assert!(e.0.contains(needle), "{e} (wanted {needle})");
        }
    }
}
