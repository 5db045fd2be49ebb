use super::*;

fn q(pairs: &[(&str, &str)]) -> Result<SearchRequest, SearchError> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    parse(Model::r4().unwrap(), pairs.first().map_or("Patient", |_| "Patient"), &pairs)
}

fn q_type(t: &str, pairs: &[(&str, &str)]) -> Result<SearchRequest, SearchError> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    parse(Model::r4().unwrap(), t, &pairs)
}

#[test]
fn escaping_splits_only_on_unescaped_separators() {
    assert_eq!(split_escaped(r"a\,b,c", ','), ["a,b", "c"]);
    assert_eq!(split_escaped(r"s\|x|c", '|'), ["s|x", "c"]);
    assert_eq!(split_escaped(r"a\$b$c", '$'), ["a$b", "c"]);
    assert_eq!(unescape(r"s\|x"), "s|x");
}

#[test]
fn tokens_with_and_without_system() {
    let r = q_type("Observation", &[("code", "http://loinc.org|8302-2,|abc,http://x|,plain")]).unwrap();
    assert_eq!(
        r.clauses[0].values,
        [
            Predicate::Token { system: Some(Some("http://loinc.org".into())), code: Some("8302-2".into()) },
            Predicate::Token { system: Some(None), code: Some("abc".into()) },
            Predicate::Token { system: Some(Some("http://x".into())), code: None },
            Predicate::Token { system: None, code: Some("plain".into()) },
        ]
    );
    let r = q_type("Observation", &[("code:not", "x")]).unwrap();
    assert!(r.clauses[0].negated);
    let r = q_type("Observation", &[("code:text", "Bódy")]).unwrap();
    assert_eq!(r.clauses[0].values, [Predicate::TokenText("body".into())]);
}

#[test]
fn dates_carry_their_precision_range_in_utc() {
    let r = q(&[("birthdate", "ge2021-03")]).unwrap();
    match &r.clauses[0].values[0] {
        Predicate::Date { prefix: Prefix::Ge, range } => {
            assert_eq!(*range, DateRange::of("2021-03").unwrap());
            assert_eq!(range.end - range.start + 1, 31 * 86_400_000_000);
        }
        other => panic!("{other:?}"),
    }
    let e = q(&[("birthdate", "2021-13-01")]).unwrap_err();
    assert!(e.message.contains("not a FHIR date"), "{e}");
    let e = q(&[("birthdate", "xx2021")]).unwrap_err();
    assert!(e.message.contains("not a FHIR date"), "{e}");
}

#[test]
fn numbers_and_quantities_have_implicit_ranges() {
    let r = q_type("RiskAssessment", &[("probability", "gt0.80")]).unwrap();
    assert_eq!(
        r.clauses[0].values,
        [Predicate::Number { prefix: Prefix::Gt, value: "0.8".into(), low: "0.795".into(), high: "0.805".into() }]
    );
    let r = q_type("Observation", &[("value-quantity", "5.4|http://unitsofmeasure.org|mg/dL")]).unwrap();
    match &r.clauses[0].values[0] {
        Predicate::Quantity { value, low, high, code, canonical, .. } => {
            assert_eq!((value.as_str(), low.as_str(), high.as_str()), ("5.4", "5.35", "5.45"));
            assert_eq!(code.as_deref(), Some("mg/dL"));
            assert_eq!(canonical, &Some(("53.5".into(), "54.5".into(), "g.m-3".into())));
        }
        other => panic!("{other:?}"),
    }
    assert!(q_type("Observation", &[("value-quantity", "abc")]).is_err());
}

#[test]
fn references_ids_types_and_urls() {
    let r = q_type("Observation", &[("subject", "Patient/123,456,http://x.org/fhir/Patient/7")]).unwrap();
    assert_eq!(
        r.clauses[0].values,
        [
            Predicate::Reference { target_type: Some("Patient".into()), id: Some("123".into()), url: None },
            Predicate::Reference { target_type: None, id: Some("456".into()), url: None },
            Predicate::Reference {
                target_type: Some("Patient".into()),
                id: Some("7".into()),
                url: Some("http://x.org/fhir/Patient/7".into())
            },
        ]
    );
    let r = q_type("Observation", &[("subject:Patient", "123")]).unwrap();
    assert_eq!(
        r.clauses[0].values[0],
        Predicate::Reference { target_type: Some("Patient".into()), id: Some("123".into()), url: None }
    );
    assert!(q_type("Observation", &[("subject", "Nope/1")]).is_err());
}

#[test]
fn chains_and_has() {
    let r = q_type("Observation", &[("subject:Patient.name", "peter")]).unwrap();
    let chain = r.clauses[0].chain.as_ref().unwrap();
    assert_eq!(chain.target_type, "Patient");
    assert_eq!(chain.clause.values, [Predicate::String { value: "peter".into(), mode: StringMatch::Prefix }]);
    // `patient` points to Patient or Group; only Patient has `birthdate`: no type needed.
    let r = q_type("Observation", &[("patient.birthdate", "1974")]).unwrap();
    assert_eq!(r.clauses[0].chain.as_ref().unwrap().target_type, "Patient");
    // `subject` can point to many types.
    assert!(q_type("Observation", &[("subject.name", "x")]).unwrap_err().message.contains("several types"));
    let r = q(&[("_has:Observation:patient:code", "1234-5")]).unwrap();
    assert_eq!(r.has[0].source_type, "Observation");
    assert_eq!(r.has[0].reference_column, "_sp_patient");
    assert!(q(&[("_has:Observation:nope:code", "1")]).is_err());
}

#[test]
fn composite_values_split_on_dollar() {
    let r = q_type("Observation", &[("component-code-value-quantity", "http://loinc.org|8480-6$gt100")]).unwrap();
    match &r.clauses[0].values[0] {
        Predicate::Composite(parts) => {
            assert_eq!(
                parts[0],
                Predicate::Token { system: Some(Some("http://loinc.org".into())), code: Some("8480-6".into()) }
            );
            assert!(matches!(parts[1], Predicate::Quantity { prefix: Prefix::Gt, .. }));
        }
        other => panic!("{other:?}"),
    }
    assert!(q_type("Observation", &[("component-code-value-quantity", "http://loinc.org|8480-6")]).is_err());
}

#[test]
fn unknown_parameters_are_ignorable_bad_values_and_modifiers_are_not() {
    let r = q(&[("nonsense", "1"), ("nonsense:exact", "x"), ("family", "chalmers")]).unwrap();
    assert_eq!(r.ignored.len(), 2);
    assert_eq!(r.clauses.len(), 1);
    // An unsupported modifier on a known parameter would widen the answer if ignored.
    let e = q(&[("name:fuzzy", "x")]).unwrap_err();
    assert!(e.to_string().contains("':fuzzy' is not supported"), "{e}");
    assert!(q_type("Observation", &[("code:in", "http://hl7.org/fhir/ValueSet/x")]).is_err());
    assert!(q(&[("gender:missing", "maybe")]).is_err());
    assert!(q(&[("family", "")]).is_err());
    assert!(parse(Model::r4().unwrap(), "NotAType", &[]).is_err());
}

#[test]
fn result_parameters() {
    let r = q(&[
        ("_count", "10"),
        ("_sort", "-birthdate,family"),
        ("_summary", "count"),
        ("_include", "Patient:organization"),
        ("_revinclude:iterate", "Observation:patient"),
    ])
    .unwrap();
    assert_eq!(r.count, Some(10));
    assert_eq!(r.sort.len(), 2);
    assert!(r.sort[0].descending && !r.sort[1].descending);
    assert_eq!(r.summary, Some(Summary::Count));
    assert_eq!(r.includes[0].param.as_deref(), Some("organization"));
    assert!(r.revincludes[0].iterate);
    assert!(q(&[("_count", "-1")]).is_err());
    assert!(q(&[("_sort", "nope")]).is_err());
    assert!(q(&[("_include", "Patient:family")]).is_err());
}

#[test]
fn summary_and_elements_subset_the_resource() {
    let m = Model::r4().unwrap();
    let raw = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div/>"},"gender":"male","birthDate":"1970","photo":[{"url":"x"}],"name":[{"family":"A"}]}"#;
    let s = subset(m, raw, Some(Summary::True), &[]).unwrap();
    assert!(s.contains("birthDate") && s.contains("name") && !s.contains("photo") && !s.contains("\"text\""), "{s}");
    assert!(s.contains("SUBSETTED"), "{s}");
    let s = subset(m, raw, Some(Summary::Data), &[]).unwrap();
    assert!(!s.contains("generated") && s.contains("photo"), "{s}");
    let s = subset(m, raw, Some(Summary::Text), &[]).unwrap();
    assert!(s.contains("generated") && !s.contains("gender"), "{s}");
    let s = subset(m, raw, None, &["gender".to_string()]).unwrap();
    assert!(s.contains("gender") && !s.contains("birthDate") && s.contains(r#""id":"p""#), "{s}");
    assert_eq!(subset(m, raw, None, &[]), None);
}
