//! The official FHIRPath R4 test suite (`fhirpath-tests/tests-fhir-r4.xml`), one trial per
//! case. Inputs given as XML are converted to JSON by a test-only reader driven by the R4
//! model. Cases listed in `fhirpath_known_failures.txt` run as ignored trials; a listed case
//! that passes fails the run (remove it from the list), so the list only shrinks.
//!
//! Run: `cargo test -p fhirlake-schemas --test fhirpath_conformance`.

#[path = "support/fhir_xml.rs"]
mod fhir_xml;
#[path = "support/fixtures.rs"]
mod test_fixtures;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use fhirlake_schemas::Json;
use fhirlake_schemas::fhirpath::{Context, Expression, Node, NodeType, TemporalKind, Value, value};
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::model::Model;
use libtest_mimic::{Arguments, Failed, Trial};

/// At least this share of all cases must pass.
const THRESHOLD: f64 = 0.95;

fn fixtures() -> PathBuf {
    test_fixtures::root().join("fhirpath-tests")
}

struct Case {
    name: String,
    input: Option<String>,
    expression: String,
    invalid: bool,
    predicate: bool,
    ordered: bool,
    outputs: Vec<(Option<String>, String)>,
}

fn load_cases(xml: &str) -> Vec<Case> {
    let doc = roxmltree::Document::parse(xml).expect("tests-fhir-r4.xml parses");
    let mut cases = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in doc.descendants().filter(|n| n.has_tag_name("test")) {
        let Some(expr) = t.children().find(|c| c.has_tag_name("expression")) else { continue };
        let base = t.attribute("name").unwrap_or("unnamed").to_string();
        let n = seen.entry(base.clone()).or_insert(0);
        *n += 1;
        let name = if *n == 1 { base } else { format!("{base}#{n}") };
        cases.push(Case {
            name,
            input: t.attribute("inputfile").map(str::to_string),
            expression: expr.text().unwrap_or("").to_string(),
            invalid: expr.attribute("invalid").is_some(),
            predicate: t.attribute("predicate") == Some("true"),
            ordered: t.attribute("ordered") != Some("false"),
            outputs: t
                .children()
                .filter(|c| c.has_tag_name("output"))
                .map(|o| (o.attribute("type").map(str::to_string), o.text().unwrap_or("").to_string()))
                .collect(),
        });
    }
    cases
}

fn load_input(model: &Model, name: &str) -> Result<Json, String> {
    let path = fixtures().join("input").join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if name.ends_with(".xml") {
        fhir_xml::xml_to_json(model, &text)
    } else {
        Json::parse(text.as_bytes(), ParseLimits { max_depth: 200, ..Default::default() }).map_err(|e| e.to_string())
    }
}

/// (type, text) of a result item in the suite's notation.
fn render(v: &Value<'_>) -> (String, String) {
    if let Value::Node(n) = v {
        if let (NodeType::Primitive(_), Some(j)) = (n.ty, n.value) {
            let ty = n.type_name().unwrap_or("").to_string();
            let text = match j {
                Json::String(s) => s.clone(),
                Json::Number(x) => x.clone(),
                Json::Bool(b) => b.to_string(),
                other => other.to_json_string(),
            };
            let text = match ty.as_str() {
                "date" | "dateTime" | "instant" => format!("@{text}"),
                "time" => format!("@T{text}"),
                _ => text,
            };
            return (ty, text);
        }
        return (n.type_name().unwrap_or("").to_string(), n.value.map(Json::to_json_string).unwrap_or_default());
    }
    let ty = match v {
        Value::Temporal(t) => match t.kind {
            TemporalKind::Date => "date",
            TemporalKind::DateTime => "dateTime",
            TemporalKind::Time => "time",
        }
        .to_string(),
        Value::Quantity(_) => "Quantity".to_string(),
        other => other.system_type().unwrap_or("").to_lowercase(),
    };
    let text = value::to_string(v).unwrap_or_default();
    let text = match v {
        Value::Temporal(t) if t.kind == TemporalKind::Time => format!("@T{text}"),
        Value::Temporal(_) => format!("@{text}"),
        _ => text,
    };
    (ty, text)
}

fn system_equivalent(fhir: &str) -> &str {
    match fhir {
        "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" | "markdown" | "base64Binary" => "string",
        "positiveInt" | "unsignedInt" => "integer",
        "instant" => "dateTime",
        other => other,
    }
}

fn item_matches(expected: &(Option<String>, String), got: &(String, String)) -> bool {
    let type_ok = match &expected.0 {
        None => true,
        Some(t) => *t == got.0 || system_equivalent(&got.0) == t,
    };
    let text_ok = expected.1 == got.1
        || (expected.0.as_deref() == Some("decimal")
            && matches!((expected.1.parse::<f64>(), got.1.parse::<f64>()), (Ok(a), Ok(b)) if a == b));
    type_ok && text_ok
}

fn run_case(
    model: &'static Model,
    inputs: &HashMap<String, Result<Arc<Json>, String>>,
    case: &Case,
) -> Result<(), String> {
    let resource = match &case.input {
        Some(f) => Some(inputs.get(f).cloned().unwrap_or_else(|| Err(format!("input {f} not loaded")))?),
        None => None,
    };
    let parsed = Expression::parse(&case.expression);
    let expr = match parsed {
        Ok(e) => e,
        Err(_) if case.invalid => return Ok(()),
        Err(e) => return Err(format!("parse error: {e}")),
    };
    let ctx = Context::new(model, resource.as_deref()).strict(true);
    let input = resource.as_deref().map(|r| vec![Value::Node(Node::resource(model, r))]).unwrap_or_default();
    let result = expr.evaluate_in(&ctx, input);
    let result = match (result, case.invalid) {
        (Err(_), true) => return Ok(()),
        (Ok(r), true) => {
            return Err(format!(
                "expected an error, got {} items: {:?}",
                r.len(),
                r.iter().map(render).collect::<Vec<_>>()
            ));
        }
        (Err(e), false) => return Err(format!("evaluation error: {e}")),
        (Ok(r), false) => r,
    };
    let got: Vec<(String, String)> = if case.predicate {
        vec![("boolean".to_string(), (!result.is_empty()).to_string())]
    } else {
        result.iter().map(render).collect()
    };
    let ok = got.len() == case.outputs.len()
        && if case.ordered {
            case.outputs.iter().zip(&got).all(|(e, g)| item_matches(e, g))
        } else {
            case.outputs.iter().all(|e| got.iter().any(|g| item_matches(e, g)))
        };
    if ok { Ok(()) } else { Err(format!("expected {:?}\n     got {:?}", case.outputs, got)) }
}

fn main() {
    let args = Arguments::from_args();
    let model = Model::r4().expect("R4 model");
    let dir = fixtures();
    let xml = std::fs::read_to_string(dir.join("tests-fhir-r4.xml")).expect("fhirpath-tests fixture present");
    let cases = load_cases(&xml);
    let known_text = include_str!("fhirpath_known_failures.txt");
    let known: BTreeSet<&str> =
        known_text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let stale: Vec<&&str> = known.iter().filter(|k| !names.contains(**k)).collect();
    assert!(stale.is_empty(), "fhirpath_known_failures.txt names cases that do not exist: {stale:?}");

    let files: BTreeSet<&str> = cases.iter().filter_map(|c| c.input.as_deref()).collect();
    let inputs: HashMap<String, Result<Arc<Json>, String>> =
        files.iter().map(|f| (f.to_string(), load_input(model, f).map(Arc::new))).collect();
    let inputs = Arc::new(inputs);

    // Outcome of every case, computed once, for the printed counts and the threshold.
    let outcomes: Vec<bool> = cases.iter().map(|c| run_case(model, &inputs, c).is_ok()).collect();
    let passed = outcomes.iter().filter(|o| **o).count();
    let total = cases.len();
    let share = passed as f64 / total as f64;
    eprintln!(
        "FHIRPath R4 suite: {passed} of {total} cases pass ({:.1}%), {} listed as known failures, threshold {:.0}%",
        share * 100.0,
        known.len(),
        THRESHOLD * 100.0
    );

    let mut trials: Vec<Trial> = Vec::new();
    for (case, ok) in cases.into_iter().zip(outcomes) {
        let listed = known.contains(case.name.as_str());
        let inputs = Arc::clone(&inputs);
        let name = case.name.clone();
        let trial = Trial::test(name.clone(), move || {
            let r = run_case(model, &inputs, &case);
            match (r, listed) {
                (Ok(()), true) => Err(Failed::from(format!(
                    "{name} passes now: remove it from schemas/tests/fhirpath_known_failures.txt"
                ))),
                (Ok(()), false) => Ok(()),
                (Err(e), _) => Err(Failed::from(format!("{}\n  {e}", case.expression.trim()))),
            }
        });
        // A known failure that passes must still run (and fail the ratchet).
        trials.push(if listed && !ok { trial.with_ignored_flag(true) } else { trial });
    }
    trials.push(Trial::test("conformance_threshold", move || {
        if share >= THRESHOLD {
            Ok(())
        } else {
            Err(format!("{passed}/{total} = {:.1}% < {:.0}%", share * 100.0, THRESHOLD * 100.0).into())
        }
    }));
    trials.push(Trial::test("xml_reader_matches_official_json", move || xml_reader_check(model)));
    libtest_mimic::run(&args, trials).exit();
}

/// The XML reader gives the same JSON as the official JSON version of two inputs
/// (narrative and meta aside).
fn xml_reader_check(model: &Model) -> Result<(), Failed> {
    for name in ["patient-example", "questionnaire-example"] {
        let from_xml = load_input(model, &format!("{name}.xml")).map_err(Failed::from)?;
        let path = fixtures().join("input-json-equivalents").join(format!("{name}.json"));
        let text = std::fs::read(&path).map_err(|e| Failed::from(e.to_string()))?;
        let json =
            Json::parse(&text, ParseLimits { max_depth: 200, ..Default::default() }).map_err(|e| e.to_string())?;
        let strip = |j: &Json| -> Json {
            let mut j = j.clone();
            j.remove("text");
            j.remove("meta");
            normalize(&j)
        };
        if strip(&from_xml) != strip(&json) {
            return Err(format!(
                "{name}: XML reader differs from the JSON equivalent\nxml:  {}\njson: {}",
                strip(&from_xml).to_json_string(),
                strip(&json).to_json_string()
            )
            .into());
        }
    }
    Ok(())
}

/// Sorts object members so member order does not matter.
fn normalize(j: &Json) -> Json {
    match j {
        Json::Object(m) => {
            let mut m: Vec<(String, Json)> = m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect();
            m.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(m)
        }
        Json::Array(a) => Json::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}
