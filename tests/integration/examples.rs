//! Every official R4 example: PUT, read back JSON-equal, typed columns filled.

use std::collections::HashMap;

use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use futures::StreamExt;

use crate::common::{TestServer, fixtures, same_resource, search_ids, sql_rows};

#[path = "../../schemas/tests/support/oracle.rs"]
mod oracle;

/// Examples that are invalid against the R4 definitions themselves (at most 5 allowed).
const MAX_INVALID_EXAMPLES: usize = 5;

struct Example {
    file: String,
    rt: String,
    id: String,
    text: String,
    json: Json,
}

fn load_examples() -> Vec<Example> {
    let dir = fixtures().join("fhir-examples/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let json = Json::parse(text.as_bytes(), ParseLimits { max_depth: 200, max_string_bytes: usize::MAX })
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let rt = json.get("resourceType").and_then(Json::as_str).expect("resourceType").to_string();
            let id = json.get("id").and_then(Json::as_str).expect("every official example has an id").to_string();
            Example { file: p.file_name().unwrap().to_string_lossy().into_owned(), rt, id, text, json }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_official_example_round_trips_and_fills_typed_columns() {
    let examples = load_examples();
    assert!(examples.len() >= 700, "expected the 731 official examples, found {}", examples.len());
    let server = TestServer::start().await;
    let started = std::time::Instant::now();

    // PUT everything, 32 requests in flight (group commit batches them).
    let results: Vec<(usize, u16, String)> = futures::stream::iter(examples.iter().enumerate())
        .map(|(i, e)| {
            let server = &server;
            async move {
                let r = server.put(&format!("/fhir/{}/{}", e.rt, e.id), &e.text).await;
                (i, r.status.as_u16(), r.body)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut invalid = Vec::new();
    let mut stored = Vec::new();
    for (i, status, body) in results {
        match status {
            200 | 201 => stored.push(i),
            422 | 400 => invalid.push(format!("{}: {status} {body}", examples[i].file)),
            other => panic!("{}: unexpected status {other}: {body}", examples[i].file),
        }
    }
    println!("{:?} stored", started.elapsed());
    for m in &invalid {
        println!("official example rejected by the validator: {m}");
    }
    assert!(invalid.len() <= MAX_INVALID_EXAMPLES, "{} examples rejected:\n{}", invalid.len(), invalid.join("\n"));

    // Read each back: JSON-equal apart from server meta, decimals as written.
    let reads: Vec<(usize, u16, String)> = futures::stream::iter(stored.iter().copied())
        .map(|i| {
            let server = &server;
            let e = &examples[i];
            async move {
                let r = server.get(&format!("/fhir/{}/{}", e.rt, e.id)).await;
                (i, r.status.as_u16(), r.body)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (i, status, body) in reads {
        let e = &examples[i];
        assert_eq!(status, 200, "{}: {body}", e.file);
        let back = Json::parse(body.as_bytes(), ParseLimits { max_depth: 200, max_string_bytes: usize::MAX }).unwrap();
        if let Err(diff) = same_resource(&e.json, &back) {
            panic!("{} did not round-trip: {diff}", e.file);
        }
    }

    // Typed columns: every stored resource's row has its top-level elements in typed form.
    let mut by_type: HashMap<&str, Vec<&Example>> = HashMap::new();
    for &i in &stored {
        by_type.entry(examples[i].rt.as_str()).or_default().push(&examples[i]);
    }
    let mut checked_columns = 0usize;
    let session = server.session().await;
    println!("{:?} stored, read back", started.elapsed());
    for (rt, list) in &by_type {
        let rows = sql_rows(&session, &format!("SELECT * FROM \"{rt}\"")).await;
        let rows: HashMap<String, &serde_json::Value> =
            rows.iter().map(|r| (r["id"].as_str().expect("id column").to_string(), r)).collect();
        for e in list {
            let row =
                rows.get(&e.id).unwrap_or_else(|| panic!("{}: no row for {rt}/{} in the current table", e.file, e.id));
            checked_columns += check_row(&e.file, &e.json, row);
        }
    }
    println!("checked {checked_columns} typed columns of {} resources in {} types", stored.len(), by_type.len());
    assert!(by_type.len() >= 130, "only {} types stored", by_type.len());

    // Search-index columns are stored in the Delta tables and queryable by SQL.
    let r = sql_rows(&session, "SELECT _sp_birthdate FROM patient WHERE id = 'example'").await;
    let text = r[0]["_sp_birthdate"].to_string();
    assert!(text.contains("1974-12-25T00:00:00") && text.contains("1974-12-25T23:59:59.999999"), "{text}");
    let r = sql_rows(&session, "SELECT _sp_value_quantity FROM observation WHERE id = 'example'").await;
    assert_eq!(r[0]["_sp_value_quantity"][0]["canonical_code"], "g", "{r:?}");
    assert!(r[0]["_sp_value_quantity"][0]["canonical_value"].to_string().contains("83914.58845"), "{r:?}");
    let with_subject = stored
        .iter()
        .filter(|&&i| {
            // A subject with only a display has nothing to search on.
            let s = examples[i].json.get("subject");
            examples[i].rt == "Observation"
                && s.is_some_and(|s| s.get("reference").is_some() || s.get("identifier").is_some())
        })
        .count();
    let r = sql_rows(&session, "SELECT count(*) AS n FROM observation WHERE array_length(_sp_subject) > 0").await;
    assert_eq!(r[0]["n"], with_subject, "Observations with a subject reference or identifier");
    let r = sql_rows(
        &session,
        "SELECT count(*) AS n FROM (SELECT unnest(_sp_code) AS c FROM observation) WHERE c['system'] = 'http://loinc.org' AND c['code'] = '29463-7'",
    )
    .await;
    assert!(r[0]["n"].as_u64().unwrap() >= 1, "body weight by LOINC code: {r:?}");

    // With the Synthea data loaded too: a generated table of searches, each against the ids
    // a plain JSON walk finds.
    let summary = fhirlake_ingest::import::import_paths(
        &server.state.writer,
        &[fixtures().join("synthea/ndjson")],
        fhirlake_ingest::import::ImportOptions::default(),
    )
    .await
    .expect("import");
    assert_eq!(summary.rejected, 0);
    let mut all: Vec<(String, String, Json)> =
        stored.iter().map(|&i| (examples[i].rt.clone(), examples[i].id.clone(), examples[i].json.clone())).collect();
    for entry in std::fs::read_dir(fixtures().join("synthea/ndjson")).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path()).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let j = Json::parse(line.as_bytes(), ParseLimits { max_depth: 200, max_string_bytes: usize::MAX }).unwrap();
            let rt = j.get("resourceType").and_then(Json::as_str).unwrap().to_string();
            let id = j.get("id").and_then(Json::as_str).unwrap().to_string();
            all.push((rt, id, j));
        }
    }
    let searches = generated_searches(&all);
    let mut per_type: HashMap<&str, usize> = HashMap::new();
    for (rt, code, value, expected) in &searches {
        let uri = format!("/fhir/{rt}?{}&_count=1000", url_pair(code, value));
        let got = search_ids(&server, &uri).await;
        assert_eq!(&got, expected, "{uri}");
        *per_type.entry(rt.as_str()).or_default() += 1;
    }
    println!("{} generated searches over {} types matched the JSON walk", searches.len(), per_type.len());
    assert!(searches.len() >= 150, "only {} searches generated", searches.len());
    server.stop().await;
}

/// Compares top-level elements of `json` with the typed columns of `row`; returns how many
/// columns were compared.
fn check_row(file: &str, json: &Json, row: &serde_json::Value) -> usize {
    let mut n = 0;
    for (k, v) in json.as_object().expect("object") {
        if k == "resourceType" || k.starts_with('_') || k == "contained" {
            continue;
        }
        let col = &row[k.as_str()];
        match v {
            Json::String(s) => {
                assert_eq!(col.as_str(), Some(s.as_str()), "{file}: column {k}");
                if fhirlake_schemas::datetime::parse(fhirlake_schemas::datetime::Temporal::DateTime, s).is_some()
                    && row.get(format!("_{k}_ts")).is_some()
                {
                    assert!(!row[format!("_{k}_ts")].is_null(), "{file}: timestamp companion of {k} is empty");
                }
            }
            Json::Bool(b) => assert_eq!(col.as_bool(), Some(*b), "{file}: column {k}"),
            Json::Number(t) => {
                let got = match col {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(
                    fhirlake_ingest::flatten::normalize_decimal(&got),
                    fhirlake_ingest::flatten::normalize_decimal(t),
                    "{file}: column {k}"
                );
            }
            Json::Object(_) => assert!(col.is_object() || col.is_string(), "{file}: column {k} is {col}"),
            Json::Array(items) => {
                let arr = col.as_array().unwrap_or_else(|| panic!("{file}: column {k} is {col}, expected a list"));
                assert_eq!(arr.len(), items.len(), "{file}: column {k} length");
            }
            Json::Null => {}
        }
        n += 1;
    }
    n
}

fn url_pair(k: &str, v: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new()).append_pair(k, v).finish()
}

/// `Type/id` of a literal reference (base URL and `_history` removed).
fn reference_key(r: &str) -> Option<String> {
    let path = r.split("/_history/").next()?;
    let mut parts = path.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    (t.starts_with(|c: char| c.is_ascii_uppercase()) && !id.is_empty()).then(|| format!("{t}/{id}"))
}

/// For every type, up to three plain-path token/string/reference/uri parameters: a value
/// that occurs in the data, and the ids of the resources whose walked values match it.
fn generated_searches(
    all: &[(String, String, Json)],
) -> Vec<(String, String, String, std::collections::BTreeSet<String>)> {
    use fhirlake_schemas::search_index::{SearchIndex, normalize_string};
    let model = fhirlake_schemas::Model::r4().unwrap();
    let mut types: Vec<&str> = all.iter().map(|(t, _, _)| t.as_str()).collect();
    types.sort();
    types.dedup();
    let safe = |v: &str| !v.is_empty() && v.len() < 200 && !v.contains([',', '|', '$', '\\']) && v.is_ascii();
    let mut out = Vec::new();
    for rt in types {
        let rows: Vec<&(String, String, Json)> = all.iter().filter(|(t, _, _)| t == rt).collect();
        let ix = SearchIndex::for_type(model, rt);
        let mut made = 0;
        for p in &ix.params {
            if made == 3 {
                break;
            }
            let def = model.search_parameter(rt, &p.code).unwrap();
            let kind = def.param_type.as_str();
            if !matches!(kind, "token" | "string" | "reference" | "uri") {
                continue;
            }
            let Some(paths) = oracle::plain_path(model, rt, p.expression.source()) else { continue };
            // The walked values of each resource.
            let values: Vec<(&str, Vec<String>)> = rows
                .iter()
                .map(|(_, id, j)| {
                    let mut keys = Vec::new();
                    for path in &paths {
                        let path: Vec<&str> = path.iter().map(String::as_str).collect();
                        let mut found = Vec::new();
                        oracle::walk(j, &path, Some(rt), &mut found);
                        for v in found {
                            keys.extend(oracle::oracle_keys(kind, v));
                        }
                    }
                    (id.as_str(), keys)
                })
                .collect();
            let Some(pick) = values.iter().flat_map(|(_, ks)| ks.iter()).filter(|k| safe(k)).min().cloned() else {
                continue;
            };
            let (search_value, expected): (String, std::collections::BTreeSet<String>) = match kind {
                "token" | "uri" => (
                    pick.clone(),
                    values.iter().filter(|(_, ks)| ks.contains(&pick)).map(|(id, _)| id.to_string()).collect(),
                ),
                "string" => {
                    let prefix: String = normalize_string(&pick).chars().take(3).collect();
                    let matching = values
                        .iter()
                        .filter(|(_, ks)| ks.iter().any(|k| normalize_string(k).starts_with(&prefix)))
                        .map(|(id, _)| id.to_string())
                        .collect();
                    (prefix, matching)
                }
                _ => {
                    let Some(key) = values
                        .iter()
                        .flat_map(|(_, ks)| ks.iter())
                        .filter_map(|k| reference_key(k))
                        .filter(|k| safe(k))
                        .min()
                    else {
                        continue;
                    };
                    let matching = values
                        .iter()
                        .filter(|(_, ks)| ks.iter().any(|k| reference_key(k).as_ref() == Some(&key)))
                        .map(|(id, _)| id.to_string())
                        .collect();
                    (key, matching)
                }
            };
            if expected.is_empty() || search_value.is_empty() {
                continue;
            }
            out.push((rt.to_string(), p.code.clone(), search_value, expected));
            made += 1;
        }
    }
    out
}
