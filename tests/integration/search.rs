//! FHIR search over the Synthea NDJSON fixtures (40 patients), each result compared with
//! the set of ids computed here directly from the JSON; paging over one snapshot while
//! writes continue; bad searches are 400s.

use std::collections::{BTreeSet, HashMap};

use fhirlake_ingest::import::{ImportOptions, import_paths};
use serde_json::Value;

use crate::common::{TestServer, fixtures, next_link, search_ids as all_ids};

fn load(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("synthea/ndjson").join(name)).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids<'a>(rs: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    rs.into_iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn codings(v: &Value) -> Vec<(&str, &str)> {
    v["coding"]
        .as_array()
        .map(|cs| cs.iter().map(|c| (c["system"].as_str().unwrap_or(""), c["code"].as_str().unwrap_or(""))).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::vec_init_then_push)] // one commented case per push reads better
async fn searches_match_the_ids_computed_from_the_json() {
    let server = TestServer::start().await;
    let summary = import_paths(&server.state.writer, &[fixtures().join("synthea/ndjson")], ImportOptions::default())
        .await
        .expect("import");
    assert_eq!(summary.rejected, 0);
    let patients = load("Patient.ndjson");
    let observations = load("Observation.ndjson");
    let conditions = load("Condition.ndjson");
    let by_id: HashMap<&str, &Value> = patients.iter().map(|p| (p["id"].as_str().unwrap(), p)).collect();
    let subject =
        |o: &Value| o["subject"]["reference"].as_str().unwrap_or("").trim_start_matches("Patient/").to_string();

    let mut cases: Vec<(String, BTreeSet<String>)> = Vec::new();
    // token
    cases.push((
        "/fhir/Patient?gender=female&_count=100".into(),
        ids(patients.iter().filter(|p| p["gender"] == "female")),
    ));
    cases.push((
        "/fhir/Observation?code=http://loinc.org|8302-2&_count=500".into(),
        ids(observations.iter().filter(|o| codings(&o["code"]).contains(&("http://loinc.org", "8302-2")))),
    ));
    cases.push((
        "/fhir/Observation?code=8302-2,8462-4&_count=500".into(),
        ids(observations.iter().filter(|o| codings(&o["code"]).iter().any(|(_, c)| *c == "8302-2" || *c == "8462-4"))),
    ));
    cases.push((
        "/fhir/Patient?gender:not=female&_count=100".into(),
        ids(patients.iter().filter(|p| p["gender"] != "female")),
    ));
    // date: ranges and prefixes (birthDate is a full date)
    let born = |p: &Value| p["birthDate"].as_str().unwrap().to_string();
    cases.push((
        "/fhir/Patient?birthdate=ge1970-01-01&birthdate=lt1990&_count=100".into(),
        ids(patients.iter().filter(|p| born(p).as_str() >= "1970-01-01" && born(p).as_str() < "1990-01-01")),
    ));
    cases.push((
        "/fhir/Patient?birthdate=1985&_count=100".into(),
        ids(patients.iter().filter(|p| born(p).starts_with("1985"))),
    ));
    // string: case- and accent-insensitive prefix; exact
    let family = |p: &Value| p["name"][0]["family"].as_str().unwrap_or("").to_string();
    let some_family = family(&patients[3]);
    let prefix: String = some_family.chars().take(3).collect::<String>().to_uppercase();
    cases.push((
        format!("/fhir/Patient?family={prefix}&_count=100"),
        ids(patients.iter().filter(|p| {
            p["name"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["family"].as_str().is_some_and(|f| f.to_lowercase().starts_with(&prefix.to_lowercase())))
        })),
    ));
    cases.push((
        format!("/fhir/Patient?family:exact={}&_count=100", some_family),
        ids(patients
            .iter()
            .filter(|p| p["name"].as_array().unwrap().iter().any(|n| n["family"] == some_family.as_str()))),
    ));
    // reference
    let pid = patients[0]["id"].as_str().unwrap();
    cases.push((
        format!("/fhir/Observation?subject=Patient/{pid}&_count=1000"),
        ids(observations.iter().filter(|o| subject(o) == pid)),
    ));
    cases.push((
        format!("/fhir/Condition?patient={pid}&_count=1000"),
        ids(conditions.iter().filter(|c| subject(c) == pid)),
    ));
    // quantity with a prefix
    cases.push((
        "/fhir/Observation?code=http://loinc.org|8302-2&value-quantity=gt170&_count=500".into(),
        ids(observations.iter().filter(|o| {
            codings(&o["code"]).contains(&("http://loinc.org", "8302-2"))
                && o["valueQuantity"]["value"].as_f64().is_some_and(|v| v > 170.0)
        })),
    ));
    // chain and reverse chain
    cases.push((
        "/fhir/Observation?code=8302-2&subject:Patient.gender=male&_count=500".into(),
        ids(observations.iter().filter(|o| {
            codings(&o["code"]).iter().any(|(_, c)| *c == "8302-2")
                && by_id.get(subject(o).as_str()).is_some_and(|p| p["gender"] == "male")
        })),
    ));
    let with_a1c: BTreeSet<String> =
        observations.iter().filter(|o| codings(&o["code"]).iter().any(|(_, c)| *c == "4548-4")).map(subject).collect();
    cases.push(("/fhir/Patient?_has:Observation:patient:code=4548-4&_count=100".into(), with_a1c));
    // :of-type on identifiers: the type coding and the value of one Identifier.
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    let of_type = |p: &Value, code: &str, value: &str| {
        p["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["value"] == value && codings(&i["type"]).iter().any(|(s, c)| *s == v2 && *c == code))
    };
    let ssn = patients[5]["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| codings(&i["type"]).iter().any(|(_, c)| *c == "SS"))
        .expect("an SSN")["value"]
        .as_str()
        .unwrap()
        .to_string();
    cases.push((
        format!("/fhir/Patient?identifier:of-type={v2}|SS|{ssn}&_count=100"),
        ids(patients.iter().filter(|p| of_type(p, "SS", &ssn))),
    ));
    // The same value under another type matches nothing; ORed triples match either.
    let other = patients[6]["identifier"][2]["value"].as_str().unwrap().to_string();
    assert!(all_ids(&server, &format!("/fhir/Patient?identifier:of-type={v2}|DL|{ssn}")).await.is_empty());
    cases.push((
        format!("/fhir/Patient?identifier:of-type={v2}|SS|{ssn},{v2}|SS|{other}&_count=100"),
        ids(patients.iter().filter(|p| of_type(p, "SS", &ssn) || of_type(p, "SS", &other))),
    ));
    // missing
    cases.push((
        "/fhir/Patient?death-date:missing=false&_count=100".into(),
        ids(patients.iter().filter(|p| p.get("deceasedDateTime").is_some())),
    ));

    for (uri, expected) in &cases {
        assert!(!expected.is_empty() || uri.contains("missing"), "{uri}: the expectation is empty, pick another value");
        let got = all_ids(&server, uri).await;
        assert_eq!(&got, expected, "{uri}");
    }

    // Paging in small pages finds the same set once each.
    let got = all_ids(&server, "/fhir/Observation?code=http://loinc.org|8302-2&_count=7").await;
    assert_eq!(got, cases[1].1);

    // Paging over a 5,000+ result while another client keeps writing matches: each match of
    // the first page's snapshot exactly once, none of the new ones.
    let expected_final: BTreeSet<String> = ids(observations.iter().filter(|o| o["status"] == "final"));
    assert!(expected_final.len() >= 5000, "{}", expected_final.len());
    let done = std::sync::atomic::AtomicBool::new(false);
    let walk = async {
        let got = all_ids(&server, "/fhir/Observation?status=final&_count=1000").await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        got
    };
    let writes = async {
        let mut n = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let body = format!(
                r#"{{"resourceType":"Observation","id":"new-{n}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/concurrent-writer"}}}}"#
            );
            let r = server.put(&format!("/fhir/Observation/new-{n}"), &body).await;
            assert!(r.status.is_success(), "{}", r.body);
            n += 1;
        }
        n
    };
    let (walked, written) = tokio::join!(walk, writes);
    assert!(written > 0, "no write happened during the walk");
    assert_eq!(walked, expected_final, "the walk saw the snapshot of its first page ({written} writes meanwhile)");
    let now = all_ids(&server, "/fhir/Observation?status=final&_count=1000").await;
    assert_eq!(now.len(), expected_final.len() + written);

    // _summary=count and _total
    let r = server.get("/fhir/Patient?gender=female&_summary=count").await;
    let b: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(b["total"], cases[0].1.len());
    assert!(b["entry"].as_array().unwrap().is_empty());

    // _sort by birthdate, descending
    let r = server.get("/fhir/Patient?_sort=-birthdate&_count=100").await;
    let b: Value = serde_json::from_str(&r.body).unwrap();
    let dates: Vec<String> = b["entry"].as_array().unwrap().iter().map(|e| born(&e["resource"])).collect();
    let mut sorted = dates.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(dates, sorted);
    assert_eq!(dates.len(), patients.len());

    // Unknown parameters: an outcome entry by default, 400 when strict.
    let r = server.get("/fhir/Patient?nonsense=1&gender=female&_count=100").await;
    let b: Value = serde_json::from_str(&r.body).unwrap();
    assert!(b["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "outcome"), "{}", r.body);
    let r = server
        .request(axum::http::Method::GET, "/fhir/Patient?nonsense=1", None, &[("prefer", "handling=strict")])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Bad values and types are 400 OperationOutcomes.
    for bad in [
        "/fhir/Patient?birthdate=notadate",
        "/fhir/Patient?birthdate=xx2020",
        "/fhir/Observation?value-quantity=abc",
        "/fhir/Observation?subject.name=x",
        "/fhir/Patient?_sort=nope",
        "/fhir/Patient?_count=-1",
        "/fhir/Observation?code:in=http://hl7.org/fhir/ValueSet/x",
        "/fhir/Patient?name:fuzzy=x",
        "/fhir/Observation?subject:Nope.name=x",
        "/fhir/Observation?_include=Nope:patient",
        "/fhir/Patient?_has:Nope:patient:code=x",
        "/fhir/Observation?date=2020-13",
        "/fhir/Observation?date=xx2020",
    ] {
        let r = server.get(bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("OperationOutcome"), "{bad}: {}", r.body);
    }
    let r = server.get("/fhir/NotAType?x=1").await;
    assert_eq!(r.status, 404, "{}", r.body);
    // _include / _revinclude (and :iterate).
    let entries = |body: &str, mode: &str| -> BTreeSet<String> {
        let b: Value = serde_json::from_str(body).unwrap();
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| {
                format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
            })
            .collect()
    };
    let r = server
        .get(&format!("/fhir/Observation?patient={pid}&code=8302-2&_include=Observation:patient&_count=500"))
        .await;
    assert_eq!(entries(&r.body, "include"), BTreeSet::from([format!("Patient/{pid}")]), "{}", r.body);
    let r = server.get(&format!("/fhir/Patient?_id={pid}&_revinclude=Observation:patient&_count=5")).await;
    let expected: BTreeSet<String> = observations
        .iter()
        .filter(|o| subject(o) == pid)
        .map(|o| format!("Observation/{}", o["id"].as_str().unwrap()))
        .collect();
    assert_eq!(entries(&r.body, "match"), BTreeSet::from([format!("Patient/{pid}")]));
    assert_eq!(entries(&r.body, "include"), expected);
    let obs = observations.iter().find(|o| subject(o) == pid && o["encounter"]["reference"].is_string()).unwrap();
    let enc = obs["encounter"]["reference"].as_str().unwrap().to_string();
    let r = server
        .get(&format!(
            "/fhir/Observation?_id={}&_include=Observation:encounter&_include:iterate=Encounter:patient",
            obs["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(entries(&r.body, "include"), BTreeSet::from([enc, format!("Patient/{pid}")]), "{}", r.body);

    // Patient/{id}/$everything: the patient and its compartment, paged.
    let r = server.get(&format!("/fhir/Patient/{pid}/$everything?_count=50")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b: Value = serde_json::from_str(&r.body).unwrap();
    let own_obs = observations.iter().filter(|o| subject(o) == pid).count();
    let own_cond = conditions.iter().filter(|c| subject(c) == pid).count();
    assert!(b["total"].as_u64().unwrap() as usize >= 1 + own_obs + own_cond, "{}", b["total"]);
    let mut everything = BTreeSet::new();
    let mut next = Some(format!("/fhir/Patient/{pid}/$everything?_count=50"));
    while let Some(u) = next.take() {
        let b: Value = serde_json::from_str(&server.get(&u.replace("http://fhirlake.test", "")).await.body).unwrap();
        for e in b["entry"].as_array().unwrap() {
            assert!(everything.insert(format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )));
        }
        next = next_link(&b);
    }
    assert_eq!(everything.len() as u64, b["total"].as_u64().unwrap());
    assert!(everything.contains(&format!("Patient/{pid}")));
    assert_eq!(everything.iter().filter(|k| k.starts_with("Observation/")).count(), own_obs);
    assert!(server.get("/fhir/Patient/nope/$everything").await.status == 404);
    // Instance history of a Patient still routes.
    assert_eq!(server.get(&format!("/fhir/Patient/{pid}/_history")).await.status, 200);

    // _elements and _summary=data subset the matches.
    let r = server.get(&format!("/fhir/Patient?_id={pid}&_elements=gender")).await;
    let b: Value = serde_json::from_str(&r.body).unwrap();
    let res = &b["entry"][0]["resource"];
    assert!(res.get("gender").is_some() && res.get("birthDate").is_none() && res.get("name").is_none(), "{res}");
    assert!(res["meta"]["tag"].to_string().contains("SUBSETTED"));

    // System search over several types.
    let cond_id = conditions.iter().find(|c| subject(c) == pid).unwrap()["id"].as_str().unwrap().to_string();
    let got = all_ids(&server, &format!("/fhir?_type=Patient,Condition&_id={pid},{cond_id}&_count=1")).await;
    assert_eq!(got, BTreeSet::from([pid.to_string(), cond_id.clone()]));
    assert_eq!(server.get("/fhir?_id=x").await.status, 400);
    assert_eq!(server.get("/fhir?_type=Nope").await.status, 400);

    // The CapabilityStatement lists the parameters.
    let cs: Value = serde_json::from_str(&server.get("/fhir/metadata").await.body).unwrap();
    let patient = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(patient["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "birthdate" && p["type"] == "date"));
    assert!(patient["interaction"].as_array().unwrap().iter().any(|i| i["code"] == "search-type"));

    // _explain shows the plan: a scan with `fhir_match` filters, or the postings path.
    let r = server.get("/fhir/Patient?birthdate=ge1950&_explain=true").await;
    assert!(r.body.contains("fhir_match"), "{}", r.body);
    let r = server.get("/fhir/Patient?gender=female&_explain=true").await;
    assert!(r.body.contains("Page: from token postings"), "{}", r.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sequence_reads_one_snapshot_while_writes_continue() {
    let server = TestServer::start().await;
    for i in 0..30 {
        let r = server
            .put(
                &format!("/fhir/Patient/p{i:02}"),
                &format!(r#"{{"resourceType":"Patient","id":"p{i:02}","gender":"other"}}"#),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    let first = server.get("/fhir/Patient?gender=other&_count=10").await;
    let b: Value = serde_json::from_str(&first.body).unwrap();
    let mut seen: BTreeSet<String> =
        b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    let mut next = next_link(&b);
    // Writes between pages: new matches sort first (ids "a.."), one match is updated away.
    for i in 0..5 {
        let r = server
            .put(
                &format!("/fhir/Patient/a{i}"),
                &format!(r#"{{"resourceType":"Patient","id":"a{i}","gender":"other"}}"#),
            )
            .await;
        assert!(r.status.is_success());
    }
    let r = server.put("/fhir/Patient/p25", r#"{"resourceType":"Patient","id":"p25","gender":"male"}"#).await;
    assert!(r.status.is_success());
    while let Some(u) = next.take() {
        let r = server.get(&u.replace("http://fhirlake.test", "")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b: Value = serde_json::from_str(&r.body).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let id = e["resource"]["id"].as_str().unwrap().to_string();
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        next = next_link(&b);
    }
    let expected: BTreeSet<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected, "the snapshot of the first page");
    // A new search sees the writes.
    let now = all_ids(&server, "/fhir/Patient?gender=other&_count=100").await;
    assert_eq!(now.len(), 30 - 1 + 5);
    // `_lastUpdated` is the server's meta, indexed like any date; `_tag`/`_profile` are absent.
    assert_eq!(all_ids(&server, "/fhir/Patient?_lastUpdated=ge2020-01-01&_count=100").await.len(), 35);
    assert!(all_ids(&server, "/fhir/Patient?_lastUpdated=lt2020-01-01").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_cursors_pin_every_table_the_search_reads() {
    let server = TestServer::start().await;
    let put = |path: String, body: String| {
        let s = &server;
        async move {
            let r = s.put(&path, &body).await;
            assert!(r.status.is_success(), "{path}: {}", r.body);
        }
    };
    for p in ["pa", "pb"] {
        put(
            format!("/fhir/Patient/{p}"),
            format!(r#"{{"resourceType":"Patient","id":"{p}","name":[{{"family":"Before"}}]}}"#),
        )
        .await;
    }
    for i in 0..6 {
        let p = if i < 3 { "pa" } else { "pb" };
        put(
            format!("/fhir/Observation/o{i}"),
            format!(
                r#"{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"text":"t"}},"subject":{{"reference":"Patient/{p}"}}}}"#
            ),
        )
        .await;
    }
    let entries = |b: &Value, mode: &str| -> Vec<Value> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| e["resource"].clone())
            .collect()
    };
    // A chain (reads Patient) with an include (reads Patient again), 2 matches a page.
    let first =
        server.get("/fhir/Observation?subject:Patient.family=Before&_include=Observation:subject&_count=2").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let b: Value = serde_json::from_str(&first.body).unwrap();
    let mut seen: BTreeSet<String> =
        entries(&b, "match").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let mut next = next_link(&b);
    assert!(next.as_deref().is_some_and(|u| u.contains("Patient%3A") && u.contains("Observation%3A")), "{next:?}");
    // Between pages: both patients renamed (the chain would no longer match), a new match.
    for p in ["pa", "pb"] {
        put(
            format!("/fhir/Patient/{p}"),
            format!(r#"{{"resourceType":"Patient","id":"{p}","name":[{{"family":"After"}}]}}"#),
        )
        .await;
    }
    put(
        "/fhir/Observation/o9".into(),
        r#"{"resourceType":"Observation","id":"o9","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/pa"}}"#.into(),
    )
    .await;
    while let Some(u) = next.take() {
        let r = server.get(&u.replace("http://fhirlake.test", "")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b: Value = serde_json::from_str(&r.body).unwrap();
        for m in entries(&b, "match") {
            assert!(seen.insert(m["id"].as_str().unwrap().to_string()), "{m} twice");
        }
        for p in entries(&b, "include") {
            assert_eq!(p["name"][0]["family"], "Before", "an included Patient of a later snapshot: {p}");
        }
        next = next_link(&b);
    }
    let expected: BTreeSet<String> = (0..6).map(|i| format!("o{i}")).collect();
    assert_eq!(seen, expected, "the pages of the first page's snapshot");
    // A new search sees the renames.
    assert!(all_ids(&server, "/fhir/Observation?subject:Patient.family=Before").await.is_empty());
    // A cursor naming an unknown table, or not a cursor, is a 400.
    let r = server.get("/fhir/Observation?code=t&_snapshot=Nope:3&_offset=2").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = server.get("/fhir/Observation?code=t&_snapshot=Observation:x&_offset=2").await;
    assert_eq!(r.status, 400, "{}", r.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_default_and_maximum_are_configurable() {
    let config = fhirlake::config::ApiConfig {
        search: fhirlake::config::SearchSettings { search_default_count: 3, search_max_count: 5, ..Default::default() },
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    for i in 0..8 {
        let r = server
            .put(
                &format!("/fhir/Patient/c{i}"),
                &format!(r#"{{"resourceType":"Patient","id":"c{i}","gender":"other"}}"#),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    let page = |uri: &'static str| {
        let s = &server;
        async move {
            let b: Value = serde_json::from_str(&s.get(uri).await.body).unwrap();
            b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match").count()
        }
    };
    assert_eq!(page("/fhir/Patient?gender=other").await, 3, "the configured default");
    assert_eq!(page("/fhir/Patient?gender=other&_count=100").await, 5, "lowered to the configured maximum");
    assert_eq!(page("/fhir/Patient?gender=other&_count=2").await, 2);
    assert_eq!(
        all_ids(&server, "/fhir/Patient?gender=other&_count=100").await.len(),
        8,
        "paging still reaches every match"
    );
    server.stop().await;
}

/// Counts of token searches come from per-file postings (no rows read) and equal what the
/// scan returns, as files come and go: new group commits, an update and a delete that
/// rewrite files, a full compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_from_postings_equal_the_scan_while_files_change() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let queries = [
        ("Observation?code=http://loinc.org|8302-2", true),
        ("Observation?code=8302-2,8462-4", true),
        ("Observation?code=|8302-2", true),
        ("Observation?code=http://loinc.org|", true),
        ("Observation?code:not=http://loinc.org|8302-2", true),
        ("Observation?value-concept:missing=false", true),
        ("Observation?category=vital-signs&code=8302-2", true),
        ("Patient?gender=female", true),
        ("Observation", true),
        ("Observation?code=8302-2&date=ge2015", false),
        ("Observation?code:text=height", false),
    ];
    // (ids in page order, included keys) over every page of a search.
    let walk = |first: String| {
        let server = &server;
        async move {
            let (mut ids, mut included, mut next, mut explained) = (Vec::new(), BTreeSet::new(), Some(first), None);
            while let Some(u) = next.take() {
                let r = server.get(&u.replace("http://fhirlake.test", "")).await;
                assert_eq!(r.status, 200, "{u}: {}", r.body);
                let b: Value = serde_json::from_str(&r.body).unwrap();
                for e in b["entry"].as_array().unwrap() {
                    let res = &e["resource"];
                    match e["search"]["mode"].as_str().unwrap() {
                        "match" => ids.push(res["id"].as_str().unwrap().to_string()),
                        "include" => {
                            included.insert(format!("{}/{}", res["resourceType"].as_str().unwrap(), res["id"]));
                        }
                        _ => explained = Some(e["resource"].to_string()),
                    }
                }
                next = next_link(&b);
            }
            (ids, included, explained.unwrap_or_default())
        }
    };
    let check = |stage: &'static str| {
        let server = &server;
        async move {
            // Counted first over the Delta files unioned with the writes not flushed yet
            // (postings index files only), then from postings once everything is flushed.
            let mut live = Vec::new();
            for (q, _) in queries {
                let sep = if q.contains('?') { '&' } else { '?' };
                let r = server.get(&format!("/fhir/{q}{sep}_summary=count")).await;
                live.push(serde_json::from_str::<Value>(&r.body).unwrap()["total"].as_u64().unwrap());
            }
            server.flushed().await;
            let mut totals = Vec::new();
            for (q, indexed) in queries {
                let sep = if q.contains('?') { '&' } else { '?' };
                let r = server.get(&format!("/fhir/{q}{sep}_summary=count&_explain=true")).await;
                assert_eq!(r.status, 200, "{q}: {}", r.body);
                let b: Value = serde_json::from_str(&r.body).unwrap();
                let total = b["total"].as_u64().unwrap();
                assert_eq!(r.body.contains("token postings"), indexed, "{stage}: {q}: {}", r.body);
                // `_sort=_id` is the default order, planned as a scan: the reference.
                let (scanned, scanned_inc, _) = walk(format!("/fhir/{q}{sep}_sort=_id&_count=1000")).await;
                assert_eq!(total, scanned.len() as u64, "{stage}: {q}");
                // Pages in the default order come from postings for token-only searches.
                let include = if q.starts_with("Observation") { "&_include=Observation:patient" } else { "" };
                let (paged, paged_inc, explained) =
                    walk(format!("/fhir/{q}{sep}_count=331&_explain=true{include}")).await;
                assert_eq!(paged, scanned, "{stage}: {q}: pages of 331 in id order");
                assert_eq!(
                    explained.contains("Page: from token postings"),
                    indexed && q.contains('?'),
                    "{stage}: {q}: {explained}"
                );
                if !include.is_empty() {
                    let (_, sorted_inc, _) = walk(format!("/fhir/{q}{sep}_sort=_id&_count=331{include}")).await;
                    assert_eq!(paged_inc, sorted_inc, "{stage}: {q}: included patients");
                    assert!(scanned.is_empty() || !paged_inc.is_empty(), "{stage}: {q}: nothing included");
                }
                let _ = scanned_inc;
                totals.push(total);
            }
            assert!(totals[0] > 0 && totals[4] > 0 && totals[7] > 0, "{stage}: weak queries {totals:?}");
            assert_eq!(live, totals, "{stage}: counts before and after the flush");
            totals
        }
    };
    let before = check("loaded").await;
    let obs = |id: &str, code: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"{code}"}}]}}}}"#
        )
    };
    for i in 0..3 {
        let r = server.put(&format!("/fhir/Observation/new{i}"), &obs(&format!("new{i}"), "8302-2")).await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    let added = check("three new heights").await;
    assert_eq!(added[0], before[0] + 3);
    // One existing height becomes a weight; another is deleted.
    let heights = all_ids(&server, "/fhir/Observation?code=http://loinc.org|8302-2&_count=1000").await;
    let mut old = heights.iter().filter(|id| !id.starts_with("new"));
    let (changed, deleted) = (old.next().unwrap().clone(), old.next().unwrap().clone());
    let r = server.put(&format!("/fhir/Observation/{changed}"), &obs(&changed, "29463-7")).await;
    assert!(r.status.is_success(), "{}", r.body);
    let r = server.request(axum::http::Method::DELETE, &format!("/fhir/Observation/{deleted}"), None, &[]).await;
    assert!(r.status.is_success(), "{}", r.body);
    let after = check("update and delete").await;
    assert_eq!(after[0], added[0] - 2);
    let opts = fhirlake_ingest::compact::CompactOptions { full: true, ..Default::default() };
    server.state.writer.compact(opts, &mut |_| {}).await.expect("compact");
    assert_eq!(check("compacted").await, after);
    server.stop().await;
}
