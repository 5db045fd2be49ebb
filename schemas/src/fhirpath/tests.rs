use super::*;
use crate::json::{Json, ParseLimits};

fn eval(expr: &str, resource: &str) -> Vec<String> {
    let model = Model::r4().unwrap();
    let json = Json::parse(resource.as_bytes(), ParseLimits::default()).unwrap();
    let e = Expression::parse(expr).unwrap();
    e.evaluate(model, &json).unwrap().iter().map(|v| value::to_string(v).unwrap_or_else(|| "<node>".into())).collect()
}

#[test]
fn choice_navigation_and_polymorphic_types() {
    let obs = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
        "valueQuantity":{"value":72.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}"#;
    assert_eq!(eval("Observation.value.value", obs), ["72.50"]);
    assert_eq!(eval("Observation.value.ofType(Quantity).code", obs), ["kg"]);
    assert_eq!(eval("(Observation.value as Quantity).unit", obs), ["kg"]);
    assert_eq!(eval("Observation.value is Quantity", obs), ["true"]);
    assert_eq!(eval("Observation.value > 72000 'g'", obs), ["true"]);
    assert_eq!(eval("Observation.value.ofType(string)", obs), Vec::<String>::new());
}

#[test]
fn syntax_errors_are_located() {
    let e = Expression::parse("Patient.name.where(").unwrap_err();
    assert!(matches!(e, FhirPathError::Syntax { offset: 19, .. }), "{e}");
    assert!(Expression::parse("1 +").is_err());
    assert!(Expression::parse("'unterminated").is_err());
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = "(".repeat(5000) + "1" + &")".repeat(5000);
    assert!(Expression::parse(&deep).is_err());
}
