//! Search-index extraction against the official examples: hand-written expectations from
//! the SearchParameter definitions for a sample of parameters, and, for every resource type
//! in `fhir-examples`, an independent JSON walk for every parameter whose expression is a
//! plain path.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fhirlake_schemas::datetime::{self, Temporal};
use fhirlake_schemas::json::ParseLimits;
#[path = "support/oracle.rs"]
mod oracle;
#[path = "support/fixtures.rs"]
mod test_fixtures;

use fhirlake_schemas::search_index::{IndexValue, SearchIndex, coverage};
use fhirlake_schemas::{Json, Model};
use oracle::{oracle_keys, plain_path, walk};

fn examples_dir() -> PathBuf {
    test_fixtures::root().join("fhir-examples/examples")
}

fn parse(text: &str) -> Json {
    Json::parse(text.as_bytes(), ParseLimits { max_depth: 200, ..Default::default() }).unwrap()
}

fn example(file: &str) -> Json {
    parse(&std::fs::read_to_string(examples_dir().join(file)).unwrap())
}

fn values(resource: &Json, code: &str) -> Vec<IndexValue> {
    let model = Model::r4().unwrap();
    let rt = resource.get("resourceType").and_then(Json::as_str).unwrap();
    let ix = SearchIndex::for_type(model, rt);
    let i = ix.params.iter().position(|p| p.code == code).unwrap_or_else(|| panic!("{rt} has no parameter {code}"));
    ix.extract(model, resource).into_iter().find(|(j, _)| *j == i).map(|(_, v)| v).unwrap_or_default()
}

fn us(instant: &str) -> i64 {
    datetime::parse(Temporal::Instant, instant).unwrap_or_else(|| panic!("bad instant {instant}"))
}

fn token(system: &str, code: &str, text: Option<&str>) -> IndexValue {
    IndexValue::Token { system: Some(system.into()), code: Some(code.into()), text: text.map(Into::into) }
}

fn date(start: &str, end: &str) -> IndexValue {
    IndexValue::Date { start: Some(us(start)), end: Some(us(end)) }
}

fn reference(r: &str, t: &str, id: &str) -> IndexValue {
    IndexValue::Reference {
        reference: Some(r.into()),
        target_type: Some(t.into()),
        target_id: Some(id.into()),
        url: None,
        identifier_system: None,
        identifier_value: None,
    }
}

#[test]
fn observation_code_value_subject_date() {
    let obs = example("Observation-example.json");
    let code = values(&obs, "code");
    assert_eq!(code.len(), 4, "{code:?}");
    assert_eq!(code[0], token("http://loinc.org", "29463-7", Some("Body Weight")));
    assert_eq!(code[2], token("http://snomed.info/sct", "27113001", Some("Body weight")));
    // value-quantity: 185 [lb_av] = 185 * 453.59237 g.
    match &values(&obs, "value-quantity")[..] {
        [IndexValue::Quantity { value, system, code, unit, canonical_value, canonical_code, .. }] => {
            assert_eq!(value.as_deref(), Some("185"));
            assert_eq!(system.as_deref(), Some("http://unitsofmeasure.org"));
            assert_eq!(code.as_deref(), Some("[lb_av]"));
            assert_eq!(unit.as_deref(), Some("lbs"));
            assert_eq!(canonical_value.as_deref(), Some("83914.58845"));
            assert_eq!(canonical_code.as_deref(), Some("g"));
        }
        other => panic!("value-quantity: {other:?}"),
    }
    assert_eq!(values(&obs, "subject"), [reference("Patient/example", "Patient", "example")]);
    assert_eq!(values(&obs, "patient"), [reference("Patient/example", "Patient", "example")]);
    // effectiveDateTime 2016-03-28: the whole day, in UTC.
    assert_eq!(values(&obs, "date"), [date("2016-03-28T00:00:00Z", "2016-03-28T23:59:59.999999Z")]);
    assert_eq!(values(&obs, "status"), [IndexValue::Token { system: None, code: Some("final".into()), text: None }]);
}

#[test]
fn patient_birthdate_name_identifier_telecom() {
    let p = example("Patient-example.json");
    assert_eq!(values(&p, "birthdate"), [date("1974-12-25T00:00:00Z", "1974-12-25T23:59:59.999999Z")]);
    let family: Vec<String> = values(&p, "family")
        .into_iter()
        .map(|v| match v {
            IndexValue::String { value, .. } => value,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(family, ["Chalmers", "Windsor"]);
    assert_eq!(values(&p, "identifier"), [token("urn:oid:1.2.36.146.595.217.0.1", "12345", None)]);
    assert_eq!(values(&p, "gender"), [IndexValue::Token { system: None, code: Some("male".into()), text: None }]);
    let phone = values(&p, "phone");
    assert_eq!(phone.len(), 3, "three phone numbers: {phone:?}");
    assert!(phone.contains(&token("phone", "(03) 3410 5613", Some("mobile"))));
    assert!(values(&p, "email").is_empty());
    assert_eq!(values(&p, "organization"), [reference("Organization/1", "Organization", "1")], "managingOrganization");
    assert_eq!(values(&p, "active"), [IndexValue::Token { system: None, code: Some("true".into()), text: None }]);
}

#[test]
fn encounter_date_is_the_period() {
    // A Period with zone offsets: start and end of the seconds stated, in UTC.
    let home = example("Encounter-home.json");
    assert_eq!(values(&home, "date"), [date("2015-01-17T06:00:00Z", "2015-01-17T06:30:00.999999Z")]);
    // A Period of dates: from the first day's start to the last day's end.
    let f203 = example("Encounter-f203.json");
    assert_eq!(values(&f203, "date"), [date("2013-03-11T00:00:00Z", "2013-03-20T23:59:59.999999Z")]);
    // An open period.
    let emerg = example("Encounter-emerg.json");
    assert_eq!(values(&emerg, "date"), [IndexValue::Date { start: Some(us("2017-01-31T21:15:00Z")), end: None }]);
}

#[test]
fn condition_subject_and_code() {
    let c = example("Condition-example.json");
    assert_eq!(values(&c, "subject"), [reference("Patient/example", "Patient", "example")]);
    assert_eq!(
        values(&c, "code"),
        [
            token("http://snomed.info/sct", "39065001", Some("Burn of ear")),
            IndexValue::Token { system: None, code: None, text: Some("Burnt Ear".into()) }
        ]
    );
    assert_eq!(values(&c, "onset-date"), [date("2012-05-24T00:00:00Z", "2012-05-24T23:59:59.999999Z")]);
}

#[test]
fn observation_component_code_value_quantity() {
    let bp = example("Observation-blood-pressure.json");
    let v = values(&bp, "component-code-value-quantity");
    // Systolic has three codings, diastolic one: 3 + 1 combinations with their quantity.
    assert_eq!(v.len(), 4, "{v:?}");
    let pairs: Vec<(String, String)> = v
        .iter()
        .map(|c| match c {
            IndexValue::Composite(parts) => match (&parts[0], &parts[1]) {
                (IndexValue::Token { code, .. }, IndexValue::Quantity { value, code: unit, .. }) => {
                    (code.clone().unwrap(), format!("{} {}", value.clone().unwrap(), unit.clone().unwrap()))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(pairs.contains(&("8480-6".into(), "107 mm[Hg]".into())), "{pairs:?}");
    assert!(pairs.contains(&("8462-4".into(), "60 mm[Hg]".into())), "{pairs:?}");
    assert!(!pairs.contains(&("8480-6".into(), "60 mm[Hg]".into())), "components must not mix");
    // The observation has no value of its own, so code-value-quantity on it is empty.
    assert!(values(&bp, "code-value-quantity").is_empty());
}

#[test]
fn partial_dates_and_dates_without_zone() {
    let p = parse(r#"{"resourceType":"Patient","birthDate":"2021-03"}"#);
    assert_eq!(values(&p, "birthdate"), [date("2021-03-01T00:00:00Z", "2021-03-31T23:59:59.999999Z")]);
    let p = parse(r#"{"resourceType":"Patient","birthDate":"2020"}"#);
    assert_eq!(values(&p, "birthdate"), [date("2020-01-01T00:00:00Z", "2020-12-31T23:59:59.999999Z")]);
    let o = parse(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2021-03-04T10:00"}"#,
    );
    assert_eq!(values(&o, "date"), [date("2021-03-04T10:00:00Z", "2021-03-04T10:00:59.999999Z")]);
    let o = parse(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveInstant":"2021-03-04T10:00:00.123+02:00"}"#,
    );
    assert_eq!(values(&o, "date"), [date("2021-03-04T08:00:00.123Z", "2021-03-04T08:00:00.123999Z")]);
}

#[test]
fn strings_are_normalized_for_accent_and_case_insensitive_matching() {
    let p = parse(r#"{"resourceType":"Patient","name":[{"family":"du Marché","given":["Bénédicte"]}]}"#);
    let v = values(&p, "name");
    assert!(v.contains(&IndexValue::String { value: "Bénédicte".into(), norm: "benedicte".into() }), "{v:?}");
    assert!(v.contains(&IndexValue::String { value: "du Marché".into(), norm: "du marche".into() }), "{v:?}");
}

#[test]
fn mg_per_dl_has_a_canonical_ucum_form() {
    let o = parse(
        r#"{"resourceType":"Observation","status":"final","code":{"text":"glucose"},
            "valueQuantity":{"value":95,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}"#,
    );
    match &values(&o, "value-quantity")[..] {
        [IndexValue::Quantity { canonical_value, canonical_code, .. }] => {
            assert_eq!(canonical_value.as_deref(), Some("950"));
            assert_eq!(canonical_code.as_deref(), Some("g.m-3"));
        }
        other => panic!("{other:?}"),
    }
}

fn extracted_keys(v: &IndexValue) -> Vec<String> {
    match v {
        IndexValue::Token { code, .. } => code.clone().into_iter().collect(),
        IndexValue::String { value, .. } => vec![value.clone()],
        IndexValue::Uri(u) => vec![u.clone()],
        IndexValue::Reference { reference, .. } => reference.clone().into_iter().collect(),
        _ => vec![],
    }
}

#[test]
fn every_example_type_agrees_with_a_json_walk_for_plain_path_parameters() {
    let model = Model::r4().unwrap();
    let mut types_checked = BTreeSet::new();
    let mut comparisons = 0usize;
    let mut files: Vec<_> = std::fs::read_dir(examples_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let all_types: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str()?.split('-').next().map(str::to_string))
        .filter(|t| model.is_resource_type(t))
        .collect();
    for file in &files {
        let r = parse(&std::fs::read_to_string(file).unwrap());
        let Some(rt) = r.get("resourceType").and_then(Json::as_str) else { continue };
        let ix = SearchIndex::for_type(model, rt);
        let extracted = ix.extract(model, &r);
        for (i, p) in ix.params.iter().enumerate() {
            let def = model.search_parameter(rt, &p.code).unwrap();
            if !matches!(def.param_type.as_str(), "token" | "string" | "uri" | "reference") {
                continue;
            }
            // Only branches of the form `Type.a.b` (no functions, no type tests).
            let Some(paths) = plain_path(model, rt, p.expression.source()) else { continue };
            let mut expected: BTreeSet<String> = BTreeSet::new();
            for path in &paths {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let mut found = Vec::new();
                walk(&r, &path, Some(rt), &mut found);
                for v in found {
                    expected.extend(oracle_keys(&def.param_type, v));
                }
            }
            let got: BTreeSet<String> = extracted
                .iter()
                .filter(|(j, _)| *j == i)
                .flat_map(|(_, vs)| vs.iter().flat_map(extracted_keys))
                .collect();
            assert_eq!(got, expected, "{} {} ({})", file.display(), p.code, p.expression.source());
            if !expected.is_empty() {
                types_checked.insert(rt.to_string());
                comparisons += 1;
            }
        }
    }
    eprintln!(
        "{comparisons} parameter values compared over {} of {} resource types",
        types_checked.len(),
        all_types.len()
    );
    let missing: Vec<_> = all_types.difference(&types_checked).collect();
    assert!(missing.is_empty(), "resource types with no value checked: {missing:?}");
}

#[test]
fn at_most_three_percent_of_the_registry_is_unsupported() {
    let model = Model::r4().unwrap();
    let cov = coverage(model);
    assert_eq!(cov.len(), 1375 + 6, "the official R4 registry and ViewDefinition's six");
    let unsupported: Vec<_> = cov.iter().filter(|c| c.3.is_some()).collect();
    for u in &unsupported {
        eprintln!("unsupported: {} ({}) {}", u.0, u.2, u.3.as_deref().unwrap_or(""));
    }
    assert!(unsupported.len() * 100 <= cov.len() * 3, "{} of {} unsupported", unsupported.len(), cov.len());
}

#[test]
fn every_parameter_evaluates_without_error_on_every_example() {
    let model = Model::r4().unwrap();
    let mut with_values = 0usize;
    let mut total = 0usize;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let r = parse(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        let Some(rt) = r.get("resourceType").and_then(Json::as_str) else { continue };
        let ix = SearchIndex::for_type(model, rt);
        total += 1;
        let errors = ix.errors(model, &r);
        assert!(errors.is_empty(), "{rt}/{:?}: {errors:?}", r.get("id"));
        // `_id` at least: every example has an id.
        if !ix.extract(model, &r).is_empty() {
            with_values += 1;
        }
    }
    assert_eq!(with_values, total);
}

/// The coverage table in ARCHITECTURE.md, between its markers. Regenerate with
/// `FHIRLAKE_UPDATE_DOCS=1 cargo test -p fhirlake-schemas --test search_index`.
fn coverage_markdown() -> String {
    let model = Model::r4().unwrap();
    let cov = coverage(model);
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for c in &cov {
        let e = by_type.entry(c.2.as_str()).or_default();
        if c.3.is_none() { e.0 += 1 } else { e.1 += 1 }
    }
    let mut md = String::from("| parameter type | extracted | not extracted |\n|---|---:|---:|\n");
    for (t, (ok, no)) in &by_type {
        md.push_str(&format!("| {t} | {ok} | {no} |\n"));
    }
    let ok: usize = by_type.values().map(|v| v.0).sum();
    let no: usize = by_type.values().map(|v| v.1).sum();
    md.push_str(&format!(
        "| **all {}** | **{ok}** | **{no}** ({:.1}%) |\n\n",
        cov.len(),
        no as f64 * 100.0 / cov.len() as f64
    ));
    md.push_str("| SearchParameter | type | why it is not extracted |\n|---|---|---|\n");
    for c in cov.iter().filter(|c| c.3.is_some()) {
        md.push_str(&format!("| `{}` (`{}`) | {} | {} |\n", c.0, c.1, c.2, c.3.as_deref().unwrap_or("")));
    }
    md
}

#[test]
fn architecture_md_lists_the_current_coverage() {
    const START: &str = "<!-- search-coverage:start (generated by schemas/tests/search_index.rs) -->\n";
    const END: &str = "<!-- search-coverage:end -->";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else {
        panic!("ARCHITECTURE.md lacks the coverage markers")
    };
    let current = &doc[a + START.len()..b];
    let fresh = coverage_markdown();
    if std::env::var_os("FHIRLAKE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{START}{fresh}{}", &doc[..a], &doc[b..])).unwrap();
        return;
    }
    assert_eq!(current, fresh, "ARCHITECTURE.md coverage table is stale: rerun with FHIRLAKE_UPDATE_DOCS=1");
}

#[test]
fn every_parameter_evaluates_without_error_on_the_synthea_data() {
    let model = Model::r4().unwrap();
    let dir = examples_dir().parent().unwrap().parent().unwrap().join("synthea/ndjson");
    let mut checked = 0usize;
    let mut with_values = 0usize;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        // A sample of each file keeps the debug-build test quick.
        for line in text.lines().filter(|l| !l.trim().is_empty()).step_by(7) {
            let r = parse(line);
            let rt = r.get("resourceType").and_then(Json::as_str).unwrap();
            let ix = SearchIndex::for_type(model, rt);
            let errors = ix.errors(model, &r);
            assert!(errors.is_empty(), "{rt}/{:?}: {errors:?}", r.get("id"));
            checked += 1;
            // Beyond `_id`: real resources have several indexed values.
            if ix.extract(model, &r).len() >= 3 {
                with_values += 1;
            }
        }
    }
    assert!(checked > 1500, "{checked}");
    assert_eq!(with_values, checked, "some Synthea resources have fewer than 3 indexed parameters");
}
