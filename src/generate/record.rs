//! One patient's record, written straight to JSON text (the catalog's strings need no
//! escaping), and the shared Organizations and Practitioners.

use std::fmt::Write as _;

use super::catalog::{self, Concept, Measure};
use super::{Format, GenerateOptions, Output, TYPES, Totals, Ty};

/// SplitMix64 (Steele, Lea, Flood 2014): a fixed, portable stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream of `(seed, key)`.
    pub fn new(seed: u64, key: u64) -> Self {
        Rng(mix(seed.wrapping_add(GAMMA)) ^ mix(key.wrapping_mul(GAMMA).wrapping_add(1)))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A UUID-shaped id (version 4 layout) hashed from `(seed, owner, serial)`.
fn uuid(seed: u64, owner: u64, serial: u64) -> String {
    let a = mix(seed ^ mix(owner.wrapping_add(GAMMA)) ^ mix(serial.wrapping_mul(GAMMA) ^ 0x5151));
    let b = mix(a ^ mix(serial.wrapping_add(owner.rotate_left(32)).wrapping_add(seed)));
    let hi = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    let lo = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// `(year, month, day)` of a day count from 1970-01-01 (Hinnant's civil-from-days).
fn days_to_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// 2020-01-01: "today" of the generated world, in days since 1970-01-01.
const END_DAY: i64 = 18_262;
/// 1920-01-01.
const FIRST_BIRTH_DAY: i64 = -18_262;
const DAY: i64 = 86_400;

fn push_date(s: &mut String, day: i64) {
    let (y, m, d) = days_to_date(day);
    let _ = write!(s, "{y:04}-{m:02}-{d:02}");
}

/// `YYYY-MM-DDThh:mm:ss+00:00` of seconds since 1970.
fn push_instant(s: &mut String, secs: i64) {
    push_date(s, secs.div_euclid(DAY));
    let t = secs.rem_euclid(DAY);
    let _ = write!(s, "T{:02}:{:02}:{:02}+00:00", t / 3600, t / 60 % 60, t % 60);
}

/// Per-type byte buffers of one chunk of patients (Bundles go to the Patient buffer).
pub struct Buffers {
    bufs: Vec<String>,
    counts: [u64; TYPES.len()],
    scratch: String,
}

impl Buffers {
    pub fn new() -> Self {
        Buffers { bufs: vec![String::new(); TYPES.len()], counts: [0; TYPES.len()], scratch: String::new() }
    }

    pub fn drain_into(&mut self, out: &mut dyn Output, totals: &mut Totals) -> std::io::Result<()> {
        for (i, b) in self.bufs.iter_mut().enumerate() {
            if !b.is_empty() {
                out.write(Ty::ALL[i], b.as_bytes())?;
                totals.bytes += b.len() as u64;
                b.clear();
            }
            totals.resources[i] += self.counts[i];
            self.counts[i] = 0;
        }
        Ok(())
    }
}

/// The shared Organizations and their Practitioners.
pub struct Shared {
    seed: u64,
    orgs: Vec<String>,
    practitioners: Vec<String>,
}

const SHARED_OWNER: u64 = u64::MAX;

impl Shared {
    pub fn new(options: &GenerateOptions) -> Self {
        let n = options.organizations();
        Shared {
            seed: options.seed,
            orgs: (0..n).map(|k| uuid(options.seed, SHARED_OWNER, 2 * k)).collect(),
            practitioners: (0..n).map(|k| uuid(options.seed, SHARED_OWNER, 2 * k + 1)).collect(),
        }
    }

    /// Writes every shared resource (NDJSON layout).
    pub fn write_all(&self, b: &mut Buffers) {
        for k in 0..self.orgs.len() {
            self.write_org(k, b, None);
        }
        for k in 0..self.orgs.len() {
            self.write_practitioner(k, b, None);
        }
    }

    fn write_org(&self, k: usize, b: &mut Buffers, bundle: Option<&mut String>) {
        let mut rng = Rng::new(self.seed, SHARED_OWNER - 1 - k as u64);
        let id = &self.orgs[k];
        let s = &mut b.scratch;
        s.clear();
        let (city, zip) = *rng.pick(catalog::CITIES);
        let word = rng.pick(catalog::HOSPITAL_WORDS);
        let _ = write!(
            s,
            r#"{{"resourceType":"Organization","id":"{id}","identifier":[{{"system":"https://github.com/synthetichealth/synthea","value":"{id}"}}],"active":true,"type":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"prov","display":"Healthcare Provider"}}],"text":"Healthcare Provider"}}],"name":"{city} {word} Hospital","telecom":[{{"system":"phone","value":"617{:07}"}}],"address":[{{"line":["{} {}"],"city":"{city}","state":"MA","postalCode":"{zip}","country":"US"}}]}}"#,
            rng.below(10_000_000),
            1 + rng.below(900),
            rng.pick(catalog::STREETS),
        );
        emit(b, Ty::Organization, id, bundle, true);
    }

    fn write_practitioner(&self, k: usize, b: &mut Buffers, bundle: Option<&mut String>) {
        let mut rng = Rng::new(self.seed, SHARED_OWNER - 1_000_000_000 - k as u64);
        let id = &self.practitioners[k];
        let s = &mut b.scratch;
        s.clear();
        let female = rng.chance(0.5);
        let given = rng.pick(if female { catalog::FEMALE_GIVEN } else { catalog::MALE_GIVEN });
        let _ = write!(
            s,
            r#"{{"resourceType":"Practitioner","id":"{id}","identifier":[{{"system":"http://hl7.org/fhir/sid/us-npi","value":"{}"}}],"active":true,"name":[{{"family":"{}","given":["{given}"],"prefix":["Dr."]}}],"gender":"{}"}}"#,
            1_000_000_000 + k as u64,
            rng.pick(catalog::FAMILY_NAMES),
            if female { "female" } else { "male" },
        );
        emit(b, Ty::Practitioner, id, bundle, true);
    }
}

/// Adds the resource in `b.scratch`: a line of its type's NDJSON stream, or an entry of
/// the Bundle being written (`entries`): `PUT Type/id` for a shared resource (`put`),
/// else `POST Type`.
fn emit(b: &mut Buffers, ty: Ty, id: &str, entries: Option<&mut String>, put: bool) {
    b.counts[ty as usize] += 1;
    match entries {
        None => {
            let buf = &mut b.bufs[ty as usize];
            buf.push_str(&b.scratch);
            buf.push('\n');
        }
        Some(entries) => {
            let (method, url) = if put { ("PUT", format!("{}/{id}", ty.name())) } else { ("POST", ty.name().into()) };
            let _ = write!(
                entries,
                r#"{{"fullUrl":"urn:uuid:{id}","resource":{},"request":{{"method":"{method}","url":"{url}"}}}},"#,
                b.scratch
            );
        }
    }
}

/// State while writing one patient.
struct Record<'a> {
    options: &'a GenerateOptions,
    rng: Rng,
    index: u64,
    serial: u64,
    patient: String,
    org: &'a str,
    practitioner: &'a str,
    /// Bundle entries (Bundles layout).
    entries: String,
}

impl Record<'_> {
    fn bundles(&self) -> bool {
        self.options.format == Format::Bundles
    }

    fn new_id(&mut self) -> String {
        self.serial += 1;
        uuid(self.options.seed, self.index, self.serial)
    }

    /// Starts a resource of the patient in `s`: `{"resourceType":..,"id":..` (no id in a
    /// Bundle: POST entries get server ids).
    fn begin(&self, s: &mut String, ty: Ty, id: &str) {
        s.clear();
        let _ = write!(s, r#"{{"resourceType":"{}""#, ty.name());
        if !self.bundles() {
            let _ = write!(s, r#","id":"{id}""#);
        }
    }

    /// A reference to one of the patient's own resources.
    fn reference(&self, s: &mut String, ty: Ty, id: &str) {
        if self.bundles() {
            let _ = write!(s, r#"{{"reference":"urn:uuid:{id}"}}"#);
        } else {
            let _ = write!(s, r#"{{"reference":"{}/{id}"}}"#, ty.name());
        }
    }

    fn subject(&self, s: &mut String, element: &str, encounter: Option<&str>) {
        let _ = write!(s, r#","{element}":"#);
        self.reference(s, Ty::Patient, &self.patient);
        if let Some(e) = encounter {
            s.push_str(r#","encounter":"#);
            self.reference(s, Ty::Encounter, e);
        }
    }

    /// Ends the resource in `s` and adds it.
    fn finish(&mut self, b: &mut Buffers, ty: Ty, id: &str) {
        b.scratch.push('}');
        let entries = if self.bundles() { Some(&mut self.entries) } else { None };
        emit(b, ty, id, entries, false);
    }
}

fn coding(s: &mut String, system: &str, c: Concept) {
    let _ =
        write!(s, r#"{{"coding":[{{"system":"{system}","code":"{}","display":"{}"}}],"text":"{}"}}"#, c.0, c.1, c.1);
}

fn quantity(s: &mut String, value: f64, unit: &str) {
    let _ = write!(s, r#"{{"value":{value:.2},"unit":"{unit}","system":"{}","code":"{unit}"}}"#, catalog::UCUM);
}

fn money(s: &mut String, value: f64) {
    let _ = write!(s, r#"{{"value":{value:.2},"currency":"USD"}}"#);
}

/// An encounter as written, for what happens in it.
struct Visit {
    id: String,
    kind: usize,
    start: i64,
    end: i64,
    /// Conditions diagnosed (id, concept) and procedures done, for the claim.
    conditions: Vec<(String, Concept)>,
    procedures: Vec<Concept>,
}

/// Writes patient `index` (its resources, or its transaction Bundle) into `b`.
pub fn patient(options: &GenerateOptions, shared: &Shared, index: u64, b: &mut Buffers) {
    let mut rng = Rng::new(options.seed, index);
    let k = rng.below(shared.orgs.len() as u64) as usize;
    let mut r = Record {
        options,
        // The record's own stream; `rng` above keeps the patient's demographics.
        rng: Rng::new(options.seed ^ 0xA5A5, index),
        index,
        serial: 0,
        patient: String::new(),
        org: &shared.orgs[k],
        practitioner: &shared.practitioners[k],
        entries: String::new(),
    };
    r.patient = r.new_id();
    if r.bundles() {
        shared.write_org(k, b, Some(&mut r.entries));
        shared.write_practitioner(k, b, Some(&mut r.entries));
    }
    let birth = FIRST_BIRTH_DAY + rng.below((END_DAY - 200 - FIRST_BIRTH_DAY) as u64) as i64;
    let female = rng.chance(0.5);
    let deceased = birth < -7305 && rng.chance(0.3);
    write_patient(&mut r, b, birth, female);

    // Encounters over (at most) the last 40 years of the patient's life.
    let first = birth.max(END_DAY - 40 * 365) + 1;
    let n = 3 + r.rng.below(46);
    let mut days: Vec<i64> = (0..n).map(|_| first + r.rng.below((END_DAY - first).max(1) as u64) as i64).collect();
    days.sort_unstable();
    let mut chronic: Vec<(String, Concept, Option<Concept>)> = Vec::new();
    let mut last_end = 0;
    for day in days {
        let age = (day - birth) / 365;
        let mut kind = weighted_kind(&mut r.rng);
        if kind == catalog::PRENATAL && !(female && (16..46).contains(&age)) {
            kind = 1;
        }
        let start = day * DAY + 6 * 3600 + r.rng.below(12 * 3600) as i64;
        let minutes = catalog::ENCOUNTERS[kind].minutes as i64;
        let end = start + 60 * (minutes / 2 + r.rng.below(minutes as u64) as i64);
        last_end = end;
        let mut v = Visit { id: r.new_id(), kind, start, end, conditions: Vec::new(), procedures: Vec::new() };
        write_encounter(&mut r, b, &v);
        match kind {
            catalog::CHECK_UP => check_up(&mut r, b, &mut v, age, &mut chronic),
            catalog::PRENATAL => {
                for _ in 0..2 {
                    let p = *r.rng.pick(catalog::PRENATAL_PROCEDURES);
                    write_procedure(&mut r, b, &mut v, p);
                }
            }
            4 => {
                for _ in 0..1 + r.rng.below(3) {
                    let p = *r.rng.pick(catalog::OUTPATIENT_PROCEDURES);
                    write_procedure(&mut r, b, &mut v, p);
                }
            }
            catalog::EMERGENCY | catalog::INPATIENT => {
                if r.rng.chance(0.7) {
                    let c = *r.rng.pick(catalog::ACUTE_CONDITIONS);
                    write_condition(&mut r, b, &mut v, c, false);
                }
                let procs = if kind == catalog::INPATIENT { 1 + r.rng.below(3) } else { r.rng.below(2) };
                for _ in 0..procs {
                    let p = *r.rng.pick(catalog::HOSPITAL_PROCEDURES);
                    write_procedure(&mut r, b, &mut v, p);
                }
                write_measure(&mut r, b, &v, &catalog::TEMPERATURE);
                write_blood_pressure(&mut r, b, &v);
                if r.rng.chance(0.4) {
                    let m = *r.rng.pick(catalog::ACUTE_MEDICATIONS);
                    write_medication(&mut r, b, &v, m, None);
                }
            }
            _ => sick_visit(&mut r, b, &mut v),
        }
        write_claim_and_eob(&mut r, b, &v);
    }
    if deceased {
        // The death is recorded on the Patient written first; patch the date in.
        let date = last_end.div_euclid(DAY) + 1 + r.rng.below(60) as i64;
        mark_deceased(&mut r, b, date);
    }
    if r.bundles() {
        r.entries.pop(); // the trailing comma
        let s = &mut b.bufs[Ty::Patient as usize];
        let _ = writeln!(s, r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#, r.entries);
    }
}

fn weighted_kind(rng: &mut Rng) -> usize {
    let total: u32 = catalog::ENCOUNTERS.iter().map(|k| k.weight).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (i, k) in catalog::ENCOUNTERS.iter().enumerate() {
        if x < k.weight {
            return i;
        }
        x -= k.weight;
    }
    0
}

/// The marker the deceased date replaces (it is written as part of the Patient).
const DECEASED_MARK: &str = r#","deceasedBoolean":false"#;

fn write_patient(r: &mut Record, b: &mut Buffers, birth: i64, female: bool) {
    let id = r.patient.clone();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Patient, &id);
    let rng = &mut r.rng;
    let race = *rng.pick(catalog::RACES);
    let family = rng.pick(catalog::FAMILY_NAMES);
    let given = rng.pick(if female { catalog::FEMALE_GIVEN } else { catalog::MALE_GIVEN });
    let (city, zip) = *rng.pick(catalog::CITIES);
    let _ = write!(
        s,
        r#","extension":[{{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[{{"url":"ombCategory","valueCoding":{{"system":"urn:oid:2.16.840.1.113883.6.238","code":"{}","display":"{}"}}}},{{"url":"text","valueString":"{}"}}]}},{{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex","valueCode":"{}"}}]"#,
        race.0,
        race.1,
        race.1,
        if female { "F" } else { "M" }
    );
    let _ = write!(
        s,
        r#","identifier":[{{"system":"https://github.com/synthetichealth/synthea","value":"{id}"}},{{"type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}}],"text":"Medical Record Number"}},"system":"http://hospital.smarthealthit.org","value":"{id}"}},{{"type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security Number"}}],"text":"Social Security Number"}},"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-{:02}-{:04}"}}]"#,
        10 + rng.below(90),
        rng.below(10_000)
    );
    let _ = write!(
        s,
        r#","name":[{{"use":"official","family":"{family}","given":["{given}"],"prefix":["{}"]}}],"telecom":[{{"system":"phone","value":"555-{:03}-{:04}","use":"home"}}],"gender":"{}","birthDate":""#,
        if female { "Ms." } else { "Mr." },
        rng.below(1000),
        rng.below(10_000),
        if female { "female" } else { "male" }
    );
    push_date(&mut s, birth);
    let _ = write!(
        s,
        r#""{DECEASED_MARK},"address":[{{"line":["{} {}"],"city":"{city}","state":"Massachusetts","postalCode":"{zip}","country":"US"}}],"maritalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"{}"}}]}},"communication":[{{"language":{{"coding":[{{"system":"urn:ietf:bcp:47","code":"en-US","display":"English"}}],"text":"English"}}}}],"generalPractitioner":[{{"reference":"Practitioner/{}"}}],"managingOrganization":{{"reference":"Organization/{}"}}"#,
        1 + rng.below(999),
        rng.pick(catalog::STREETS),
        if rng.chance(0.55) { "M" } else { "S" },
        r.practitioner,
        r.org,
    );
    b.scratch = s;
    r.finish(b, Ty::Patient, &id);
}

/// Replaces the Patient's `deceasedBoolean: false` by a `deceasedDateTime`.
fn mark_deceased(r: &mut Record, b: &mut Buffers, day: i64) {
    let mut date = String::from(r#","deceasedDateTime":""#);
    push_instant(&mut date, day * DAY + 3600 * 10);
    date.push('"');
    let target = if r.bundles() { &mut r.entries } else { &mut b.bufs[Ty::Patient as usize] };
    // The patient is the last one written to its stream before its other resources, so
    // the last marker in the Patient stream (or the Bundle) is this patient's.
    if let Some(at) = target.rfind(DECEASED_MARK) {
        target.replace_range(at..at + DECEASED_MARK.len(), &date);
    }
}

fn write_encounter(r: &mut Record, b: &mut Buffers, v: &Visit) {
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Encounter, &v.id);
    let kind = &catalog::ENCOUNTERS[v.kind];
    let _ = write!(
        s,
        r#","status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"{}"}},"type":["#,
        kind.class
    );
    coding(&mut s, catalog::SNOMED, kind.code);
    s.push(']');
    r.subject(&mut s, "subject", None);
    let _ = write!(
        s,
        r#","participant":[{{"individual":{{"reference":"Practitioner/{}"}}}}],"period":{{"start":""#,
        r.practitioner
    );
    push_instant(&mut s, v.start);
    s.push_str(r#"","end":""#);
    push_instant(&mut s, v.end);
    let _ = write!(s, r#""}},"serviceProvider":{{"reference":"Organization/{}"}}"#, r.org);
    b.scratch = s;
    r.finish(b, Ty::Encounter, &v.id);
}

fn observation_head(r: &mut Record, s: &mut String, id: &str, v: &Visit, category: &str, code: Concept) {
    r.begin(s, Ty::Observation, id);
    let _ = write!(
        s,
        r#","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{category}","display":"{category}"}}]}}],"code":"#
    );
    coding(s, catalog::LOINC, code);
    r.subject(s, "subject", Some(&v.id));
    s.push_str(r#","effectiveDateTime":""#);
    push_instant(s, v.start);
    s.push_str(r#"","issued":""#);
    push_instant(s, v.start + 600);
    s.push('"');
}

/// A value in the measure's range, towards its low end for children's height and weight.
fn draw(rng: &mut Rng, m: &Measure) -> f64 {
    m.4 + (m.5 - m.4) * rng.unit()
}

fn write_measure(r: &mut Record, b: &mut Buffers, v: &Visit, m: &Measure) -> String {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    observation_head(r, &mut s, &id, v, m.2, (m.0, m.1));
    let value = draw(&mut r.rng, m);
    s.push_str(r#","valueQuantity":"#);
    quantity(&mut s, value, m.3);
    b.scratch = s;
    r.finish(b, Ty::Observation, &id);
    id
}

fn write_blood_pressure(r: &mut Record, b: &mut Buffers, v: &Visit) {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    observation_head(r, &mut s, &id, v, "vital-signs", catalog::BLOOD_PRESSURE);
    s.push_str(r#","component":["#);
    for (i, m) in [catalog::DIASTOLIC, catalog::SYSTOLIC].iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"code":"#);
        coding(&mut s, catalog::LOINC, (m.0, m.1));
        s.push_str(r#","valueQuantity":"#);
        let value = draw(&mut r.rng, m);
        quantity(&mut s, value, m.3);
        s.push('}');
    }
    s.push(']');
    b.scratch = s;
    r.finish(b, Ty::Observation, &id);
}

fn write_smoking(r: &mut Record, b: &mut Buffers, v: &Visit) {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    observation_head(r, &mut s, &id, v, "survey", catalog::SMOKING);
    let answer = *r.rng.pick(catalog::SMOKING_ANSWERS);
    s.push_str(r#","valueCodeableConcept":"#);
    coding(&mut s, catalog::SNOMED, answer);
    b.scratch = s;
    r.finish(b, Ty::Observation, &id);
}

fn write_panel(r: &mut Record, b: &mut Buffers, v: &Visit, panel: &catalog::Panel) {
    let results: Vec<&Measure> = panel.results.iter().flat_map(|group| group.iter()).collect();
    let ids: Vec<String> = results.iter().map(|m| write_measure(r, b, v, m)).collect();
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::DiagnosticReport, &id);
    s.push_str(
        r#","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0074","code":"LAB","display":"Laboratory"}]}],"code":"#,
    );
    coding(&mut s, catalog::LOINC, panel.code);
    r.subject(&mut s, "subject", Some(&v.id));
    s.push_str(r#","effectiveDateTime":""#);
    push_instant(&mut s, v.start);
    s.push_str(r#"","issued":""#);
    push_instant(&mut s, v.start + 600);
    s.push_str(r#"","result":["#);
    for (i, (oid, m)) in ids.iter().zip(results).enumerate() {
        if i > 0 {
            s.push(',');
        }
        r.reference(&mut s, Ty::Observation, oid);
        s.pop();
        let _ = write!(s, r#","display":"{}"}}"#, m.1);
    }
    s.push(']');
    b.scratch = s;
    r.finish(b, Ty::DiagnosticReport, &id);
}

fn write_condition(r: &mut Record, b: &mut Buffers, v: &mut Visit, c: Concept, is_chronic: bool) -> String {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Condition, &id);
    let status = if is_chronic { "active" } else { "resolved" };
    let _ = write!(
        s,
        r#","clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"{status}"}}]}},"verificationStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}}]}},"code":"#
    );
    coding(&mut s, catalog::SNOMED, c);
    r.subject(&mut s, "subject", Some(&v.id));
    s.push_str(r#","onsetDateTime":""#);
    push_instant(&mut s, v.start);
    if !is_chronic {
        s.push_str(r#"","abatementDateTime":""#);
        push_instant(&mut s, v.start + DAY * (7 + r.rng.below(21) as i64));
    }
    s.push_str(r#"","recordedDate":""#);
    push_instant(&mut s, v.start);
    s.push('"');
    b.scratch = s;
    r.finish(b, Ty::Condition, &id);
    v.conditions.push((id.clone(), c));
    id
}

fn write_procedure(r: &mut Record, b: &mut Buffers, v: &mut Visit, c: Concept) {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Procedure, &id);
    s.push_str(r#","status":"completed","code":"#);
    coding(&mut s, catalog::SNOMED, c);
    r.subject(&mut s, "subject", Some(&v.id));
    s.push_str(r#","performedPeriod":{"start":""#);
    push_instant(&mut s, v.start);
    s.push_str(r#"","end":""#);
    push_instant(&mut s, v.start + 60 * (10 + r.rng.below(50) as i64));
    s.push_str(r#""}"#);
    b.scratch = s;
    r.finish(b, Ty::Procedure, &id);
    v.procedures.push(c);
}

/// A MedicationRequest and its pharmacy Claim.
fn write_medication(r: &mut Record, b: &mut Buffers, v: &Visit, m: Concept, reason: Option<&str>) {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::MedicationRequest, &id);
    let status = if v.start / DAY > END_DAY - 365 { "active" } else { "stopped" };
    let _ = write!(s, r#","status":"{status}","intent":"order","medicationCodeableConcept":"#);
    coding(&mut s, catalog::RXNORM, m);
    r.subject(&mut s, "subject", Some(&v.id));
    s.push_str(r#","authoredOn":""#);
    push_instant(&mut s, v.start);
    let _ = write!(s, r#"","requester":{{"reference":"Practitioner/{}"}}"#, r.practitioner);
    if let Some(cond) = reason {
        s.push_str(r#","reasonReference":["#);
        r.reference(&mut s, Ty::Condition, cond);
        s.push(']');
    }
    b.scratch = s;
    r.finish(b, Ty::MedicationRequest, &id);

    let claim = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Claim, &claim);
    claim_head(r, &mut s, "pharmacy", v);
    s.push_str(r#","prescription":"#);
    r.reference(&mut s, Ty::MedicationRequest, &id);
    s.push_str(r#","item":[{"sequence":1,"productOrService":"#);
    coding(&mut s, catalog::RXNORM, m);
    s.push_str(r#"}],"total":"#);
    let total = 5.0 + 300.0 * r.rng.unit();
    money(&mut s, total);
    b.scratch = s;
    r.finish(b, Ty::Claim, &claim);
}

fn claim_head(r: &Record, s: &mut String, kind: &str, v: &Visit) {
    let _ = write!(
        s,
        r#","status":"active","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"{kind}"}}]}},"use":"claim""#
    );
    r.subject(s, "patient", None);
    billing_period(s, v);
    let _ = write!(
        s,
        r#","provider":{{"reference":"Organization/{}"}},"priority":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/processpriority","code":"normal"}}]}},"insurance":[{{"sequence":1,"focal":true,"coverage":{{"display":"private"}}}}]"#,
        r.org
    );
}

/// `,"billablePeriod":{..the encounter..},"created":"<its end>"` of a Claim or EOB.
fn billing_period(s: &mut String, v: &Visit) {
    s.push_str(r#","billablePeriod":{"start":""#);
    push_instant(s, v.start);
    s.push_str(r#"","end":""#);
    push_instant(s, v.end);
    s.push_str(r#""},"created":""#);
    push_instant(s, v.end);
    s.push('"');
}

fn write_immunization(r: &mut Record, b: &mut Buffers, v: &Visit, c: Concept) {
    let id = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Immunization, &id);
    s.push_str(r#","status":"completed","vaccineCode":"#);
    coding(&mut s, catalog::CVX, c);
    r.subject(&mut s, "patient", Some(&v.id));
    s.push_str(r#","occurrenceDateTime":""#);
    push_instant(&mut s, v.start);
    s.push_str(r#"","primarySource":true"#);
    b.scratch = s;
    r.finish(b, Ty::Immunization, &id);
}

fn check_up(
    r: &mut Record,
    b: &mut Buffers,
    v: &mut Visit,
    age: i64,
    chronic: &mut Vec<(String, Concept, Option<Concept>)>,
) {
    for m in catalog::VITALS {
        write_measure(r, b, v, m);
    }
    write_blood_pressure(r, b, v);
    if age >= 12 {
        write_smoking(r, b, v);
    }
    if age >= 18 {
        for (p, panel) in catalog::PANELS {
            if r.rng.chance(*p) {
                write_panel(r, b, v, panel);
            }
        }
        if r.rng.chance(0.25) {
            write_measure(r, b, v, &catalog::A1C);
        }
    }
    if r.rng.chance(0.75) {
        write_immunization(r, b, v, catalog::FLU_VACCINE);
    }
    if r.rng.chance(0.2) {
        let c = *r.rng.pick(catalog::OTHER_VACCINES);
        write_immunization(r, b, v, c);
    }
    if r.rng.chance(0.6) {
        let p = *r.rng.pick(catalog::CHECK_UP_PROCEDURES);
        write_procedure(r, b, v, p);
    }
    if age >= 18 && chronic.len() < 6 && r.rng.chance(0.1) {
        let c = *r.rng.pick(catalog::CHRONIC_CONDITIONS);
        if !chronic.iter().any(|(_, k, _)| k.0 == c.0) {
            let id = write_condition(r, b, v, c, true);
            let med = r.rng.chance(0.6).then(|| *r.rng.pick(catalog::CHRONIC_MEDICATIONS));
            chronic.push((id, c, med));
        }
    }
    // Renewals of chronic medications.
    for (cond, _, med) in chronic.iter() {
        if let Some(m) = *med
            && r.rng.chance(0.5)
        {
            write_medication(r, b, v, m, Some(cond));
        }
    }
}

fn sick_visit(r: &mut Record, b: &mut Buffers, v: &mut Visit) {
    if r.rng.chance(0.5) {
        write_measure(r, b, v, &catalog::VITALS[3]);
    }
    if r.rng.chance(0.2) {
        write_measure(r, b, v, &catalog::TEMPERATURE);
    }
    if r.rng.chance(0.45) {
        let c = *r.rng.pick(catalog::ACUTE_CONDITIONS);
        let cond = write_condition(r, b, v, c, false);
        if r.rng.chance(0.5) {
            let m = *r.rng.pick(catalog::ACUTE_MEDICATIONS);
            write_medication(r, b, v, m, Some(&cond));
        }
    }
    if r.rng.chance(0.3) {
        let p = *r.rng.pick(catalog::SICK_VISIT_PROCEDURES);
        write_procedure(r, b, v, p);
    }
}

fn write_claim_and_eob(r: &mut Record, b: &mut Buffers, v: &Visit) {
    let kind = &catalog::ENCOUNTERS[v.kind];
    let claim = r.new_id();
    let total = 50.0 + 1500.0 * r.rng.unit() * if v.kind == catalog::INPATIENT { 20.0 } else { 1.0 };
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::Claim, &claim);
    claim_head(r, &mut s, "institutional", v);
    diagnoses(r, &mut s, v, false);
    items(r, &mut s, v, kind.code);
    s.push_str(r#","total":"#);
    money(&mut s, total);
    b.scratch = s;
    r.finish(b, Ty::Claim, &claim);

    let eob = r.new_id();
    let mut s = std::mem::take(&mut b.scratch);
    r.begin(&mut s, Ty::ExplanationOfBenefit, &eob);
    s.push_str(
        r#","status":"active","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"institutional"}]},"use":"claim""#,
    );
    r.subject(&mut s, "patient", None);
    billing_period(&mut s, v);
    let _ = write!(
        s,
        r#","insurer":{{"display":"private"}},"provider":{{"reference":"Practitioner/{}"}},"claim":"#,
        r.practitioner
    );
    r.reference(&mut s, Ty::Claim, &claim);
    let _ = write!(
        s,
        r#","outcome":"complete","careTeam":[{{"sequence":1,"provider":{{"reference":"Practitioner/{}"}},"role":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/claimcareteamrole","code":"primary","display":"Primary Care Practitioner"}}]}}}}]"#,
        r.practitioner
    );
    diagnoses(r, &mut s, v, true);
    s.push_str(r#","insurance":[{"focal":true,"coverage":{"display":"private"}}]"#);
    items(r, &mut s, v, kind.code);
    let paid = total * (0.5 + 0.5 * r.rng.unit());
    s.push_str(
        r#","total":[{"category":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/adjudication","code":"submitted","display":"Submitted Amount"}]},"amount":"#,
    );
    money(&mut s, total);
    s.push_str(r#"}],"payment":{"amount":"#);
    money(&mut s, paid);
    s.push('}');
    b.scratch = s;
    r.finish(b, Ty::ExplanationOfBenefit, &eob);
}

fn diagnoses(r: &Record, s: &mut String, v: &Visit, eob: bool) {
    if v.conditions.is_empty() {
        return;
    }
    s.push_str(r#","diagnosis":["#);
    for (i, (id, _)) in v.conditions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"{{"sequence":{},"diagnosisReference":"#, i + 1);
        r.reference(s, Ty::Condition, id);
        if eob {
            s.push_str(
                r#","type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/ex-diagnosistype","code":"principal"}]}]"#,
            );
        }
        s.push('}');
    }
    s.push(']');
}

fn items(r: &Record, s: &mut String, v: &Visit, encounter_code: Concept) {
    s.push_str(r#","item":[{"sequence":1,"productOrService":"#);
    coding(s, catalog::SNOMED, encounter_code);
    s.push_str(r#","encounter":["#);
    r.reference(s, Ty::Encounter, &v.id);
    s.push_str("]}");
    let mut seq = 2;
    for (i, (_, c)) in v.conditions.iter().enumerate() {
        let _ = write!(s, r#",{{"sequence":{seq},"diagnosisSequence":[{}],"productOrService":"#, i + 1);
        coding(s, catalog::SNOMED, *c);
        s.push('}');
        seq += 1;
    }
    for c in &v.procedures {
        let _ = write!(s, r#",{{"sequence":{seq},"productOrService":"#);
        coding(s, catalog::SNOMED, *c);
        s.push('}');
        seq += 1;
    }
    s.push(']');
}
