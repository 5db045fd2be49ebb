//! `fhirlake generate`: deterministic whatever the thread count (and pinned by a hash),
//! every resource valid by fhirlake's own validator, every reference resolving, and the
//! transaction-Bundle layout loading through the real API without duplicating the shared
//! Organizations and Practitioners.

use std::collections::{HashMap, HashSet};

use fhirlake::generate::{Format, GenerateOptions, Output, TYPES, Ty, generate};
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::validate::{ValidationOptions, validate_resource};
use fhirlake_schemas::{Json, Model};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::common::TestServer;

/// Keeps every byte written, per stream.
#[derive(Default)]
struct Collect(HashMap<usize, Vec<u8>>);

impl Output for Collect {
    fn write(&mut self, ty: Ty, bytes: &[u8]) -> std::io::Result<()> {
        self.0.entry(ty as usize).or_default().extend_from_slice(bytes);
        Ok(())
    }
}

impl Collect {
    /// SHA-256 over the streams in type order, each preceded by its name.
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (i, t) in TYPES.iter().enumerate() {
            h.update(t.as_bytes());
            h.update(self.0.get(&i).map(Vec::as_slice).unwrap_or_default());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn run(options: &GenerateOptions, threads: usize) -> (Collect, u64) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let mut out = Collect::default();
    let totals = pool.install(|| generate(options, &mut out, &mut |_, _| {})).expect("generate");
    (out, totals.total())
}

/// The hash of `--patients 1000 --seed 7`. A deliberate change to the generator changes
/// it: update it then, and say so in the commit.
const PINNED_1000_SEED_7: &str = "e9797378e3c00b56ce97d091dcd59f7d5d8aa43807e9e684a322c74cab82808f";

fn references(v: &Json, out: &mut Vec<String>) {
    if let Some(fields) = v.as_object() {
        for (k, x) in fields {
            match (k.as_str(), x.as_str()) {
                ("reference", Some(r)) => out.push(r.to_string()),
                _ => references(x, out),
            }
        }
    } else if let Some(items) = v.as_array() {
        items.iter().for_each(|x| references(x, out));
    }
}

#[test]
fn generate_1000_patients_is_deterministic_valid_and_referentially_whole() {
    let options = GenerateOptions { patients: 1000, seed: 7, format: Format::Ndjson };
    let (one, n1) = run(&options, 1);
    let (two, n2) = run(&options, 3);
    assert_eq!(n1, n2);
    let digest = one.digest();
    assert_eq!(digest, two.digest(), "output depends on the thread count");
    drop(two);
    assert_eq!(digest, PINNED_1000_SEED_7, "the generator's output changed");
    let other_seed = run(&GenerateOptions { seed: 8, ..options }, 2).0;
    assert_ne!(other_seed.digest(), digest, "the seed changes nothing");
    drop(other_seed);

    // Every line is a valid resource of its file's type; ids are unique.
    let model = Model::r4().expect("model");
    let mut ids: HashSet<String> = HashSet::new();
    let mut refs: Vec<String> = Vec::new();
    let mut per_type = [0u64; TYPES.len()];
    for (i, t) in TYPES.iter().enumerate() {
        let bytes = one.0.get(&i).unwrap_or_else(|| panic!("no {t} written"));
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let checked: Vec<(String, Vec<String>)> = lines
            .par_iter()
            .map(|line| {
                let json = Json::parse(line, ParseLimits::STORED).expect("generated JSON parses");
                let rt = validate_resource(model, &json, &ValidationOptions::default())
                    .unwrap_or_else(|issues| panic!("invalid {t}: {issues:?}\n{}", String::from_utf8_lossy(line)));
                assert_eq!(rt, *t);
                let mut r = Vec::new();
                references(&json, &mut r);
                (format!("{t}/{}", json.get("id").and_then(Json::as_str).expect("id")), r)
            })
            .collect();
        per_type[i] = checked.len() as u64;
        for (id, r) in checked {
            assert!(ids.insert(id.clone()), "duplicate id {id}");
            refs.extend(r);
        }
    }
    assert_eq!(per_type.iter().sum::<u64>(), n1);
    // Every reference names a generated resource.
    assert!(refs.len() as u64 > 2 * n1, "only {} references", refs.len());
    let dangling: Vec<&String> = refs.iter().filter(|r| !ids.contains(*r)).take(5).collect();
    assert!(dangling.is_empty(), "dangling references: {dangling:?}");

    // The mix follows the Synthea fixtures (per patient: ~26 encounters, ~136
    // observations, a claim per encounter and per medication request).
    let per_patient = |ty: Ty| per_type[ty as usize] as f64 / 1000.0;
    assert_eq!(per_type[Ty::Patient as usize], 1000);
    assert!((20.0..32.0).contains(&per_patient(Ty::Encounter)), "{}", per_patient(Ty::Encounter));
    assert!((100.0..170.0).contains(&per_patient(Ty::Observation)), "{}", per_patient(Ty::Observation));
    assert_eq!(
        per_type[Ty::Claim as usize],
        per_type[Ty::Encounter as usize] + per_type[Ty::MedicationRequest as usize]
    );
    assert_eq!(per_type[Ty::ExplanationOfBenefit as usize], per_type[Ty::Encounter as usize]);
    assert_eq!(per_type[Ty::Organization as usize], options.organizations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_transaction_bundles_load_without_duplicating_shared_resources() {
    let options = GenerateOptions { patients: 12, seed: 3, format: Format::Bundles };
    let (out, _) = run(&options, 2);
    let text = String::from_utf8(out.0[&(Ty::Patient as usize)].clone()).expect("utf-8");
    let bundles: Vec<&str> = text.lines().collect();
    assert_eq!(bundles.len(), 12);
    let s = TestServer::start().await;
    let mut expected_observations = 0;
    for b in &bundles {
        expected_observations += b.matches(r#""url":"Observation""#).count();
        let r = s.post("/fhir", b).await;
        assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(1500)]);
    }
    // The NDJSON layout of the same seed names the same shared resources.
    let (flat, _) = run(&GenerateOptions { format: Format::Ndjson, ..options }, 1);
    let orgs = String::from_utf8_lossy(&flat.0[&(Ty::Organization as usize)]).lines().count();
    let n = |rows: Vec<serde_json::Value>| rows[0]["n"].as_i64().expect("count");
    let stored_orgs = n(s.sql("SELECT count(*) AS n FROM organization").await);
    assert!(stored_orgs as usize <= orgs && stored_orgs >= 1, "{stored_orgs} organizations stored of {orgs}");
    assert_eq!(n(s.sql("SELECT count(DISTINCT id) AS n FROM organization").await), stored_orgs);
    assert_eq!(n(s.sql("SELECT count(*) AS n FROM patient").await), 12);
    assert_eq!(n(s.sql("SELECT count(*) AS n FROM observation").await) as usize, expected_observations);
    // Server-assigned ids replaced the urn:uuid references: every Observation's subject is
    // a stored Patient, every Encounter's provider a stored Organization.
    let orphans = "SELECT count(*) AS n FROM observation o LEFT JOIN patient p ON o._patient = p.id WHERE p.id IS NULL";
    assert_eq!(n(s.sql(orphans).await), 0);
    let orphans = "SELECT count(*) AS n FROM encounter e LEFT JOIN organization o \
                   ON get_field(e.\"serviceProvider\", 'reference') = concat('Organization/', o.id) WHERE o.id IS NULL";
    assert_eq!(n(s.sql(orphans).await), 0);
    s.stop().await;
}
