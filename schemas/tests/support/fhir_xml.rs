//! Test-only FHIR XML -> JSON conversion, driven by the R4 model (which elements repeat,
//! which primitive types are numbers or booleans, where resources nest).

use fhirlake_schemas::Json;
use fhirlake_schemas::model::{Model, Primitive, Structure, TypeRef};

pub fn xml_to_json(model: &Model, xml: &str) -> Result<Json, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    resource(model, xml, doc.root_element())
}

fn resource(model: &Model, src: &str, el: roxmltree::Node) -> Result<Json, String> {
    let t = el.tag_name().name();
    let s = model.structure(t).ok_or_else(|| format!("unknown resource type {t}"))?;
    let mut members = vec![("resourceType".to_string(), Json::String(t.to_string()))];
    members.extend(object(model, src, el, s)?);
    Ok(Json::Object(members))
}

/// Per element name: (name, repeats, values, primitive companions).
type Collected = (String, bool, Vec<Option<Json>>, Vec<Option<Json>>);

fn object(model: &Model, src: &str, el: roxmltree::Node, s: &Structure) -> Result<Vec<(String, Json)>, String> {
    let mut out: Vec<(String, Json)> = Vec::new();
    if let Some(id) = el.attribute("id") {
        out.push(("id".into(), Json::String(id.into())));
    }
    if let Some(url) = el.attribute("url") {
        out.push(("url".into(), Json::String(url.into())));
    }
    // Values and companions per element name, in document order of first appearance.
    let mut values: Vec<Collected> = Vec::new();
    for child in el.children().filter(|c| c.is_element()) {
        let name = child.tag_name().name();
        let Some(&(ei, vi)) = s.by_json_name.get(name) else {
            return Err(format!("{} has no element {name}", s.key));
        };
        let element = &s.elements[ei];
        let (value, companion) = match &element.variants[vi].1 {
            TypeRef::Primitive(p) => primitive(model, src, child, *p)?,
            TypeRef::Resource => {
                let inner = child.children().find(|c| c.is_element()).ok_or("empty resource element")?;
                (Some(resource(model, src, inner)?), None)
            }
            TypeRef::Extension => {
                (Some(Json::Object(object(model, src, child, model.structure("Extension").unwrap())?)), None)
            }
            TypeRef::Struct(key) => {
                let st = model.structure_of_type(key).ok_or_else(|| format!("no structure {key}"))?;
                (Some(Json::Object(object(model, src, child, st)?)), None)
            }
        };
        let entry = match values.iter_mut().find(|v| v.0 == name) {
            Some(e) => e,
            None => {
                values.push((name.to_string(), element.many, Vec::new(), Vec::new()));
                values.last_mut().unwrap()
            }
        };
        entry.2.push(value);
        entry.3.push(companion);
    }
    for (name, many, vals, comps) in values {
        let has_values = vals.iter().any(Option::is_some);
        let has_comps = comps.iter().any(Option::is_some);
        if many {
            if has_values {
                out.push((name.clone(), Json::Array(vals.iter().map(|v| v.clone().unwrap_or(Json::Null)).collect())));
            }
            if has_comps {
                out.push((
                    format!("_{name}"),
                    Json::Array(comps.into_iter().map(|c| c.unwrap_or(Json::Null)).collect()),
                ));
            }
        } else {
            if let Some(Some(v)) = vals.into_iter().next() {
                out.push((name.clone(), v));
            }
            if let Some(Some(c)) = comps.into_iter().next() {
                out.push((format!("_{name}"), c));
            }
        }
    }
    Ok(out)
}

fn primitive(
    model: &Model,
    src: &str,
    el: roxmltree::Node,
    p: Primitive,
) -> Result<(Option<Json>, Option<Json>), String> {
    if p == Primitive::Xhtml {
        return Ok((Some(Json::String(src[el.range()].to_string())), None));
    }
    let value = el.attribute("value").map(|v| match p {
        Primitive::Boolean => Json::Bool(v == "true"),
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt | Primitive::Decimal => {
            Json::Number(v.trim().to_string())
        }
        _ => Json::String(v.to_string()),
    });
    let element = model.structure("Extension").unwrap();
    let mut companion = Vec::new();
    if let Some(id) = el.attribute("id") {
        companion.push(("id".to_string(), Json::String(id.into())));
    }
    let exts: Result<Vec<Json>, String> = el
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "extension")
        .map(|c| object(model, src, c, element).map(Json::Object))
        .collect();
    let exts = exts?;
    if !exts.is_empty() {
        companion.push(("extension".to_string(), Json::Array(exts)));
    }
    Ok((value, (!companion.is_empty()).then_some(Json::Object(companion))))
}
