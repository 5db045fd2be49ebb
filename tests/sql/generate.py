#!/usr/bin/env python3
"""Generates tests/sql/synthea.slt: SQL queries over the Synthea NDJSON fixtures with their
expected results computed here, from the raw JSON, with plain Python (never from
fhirlake's output). `cargo test --test integration slt` runs the file against the tables
`fhirlake import` writes; tests/python/test_slt_generated.py checks the committed file is
what this script produces.

Result format (a subset of sqllogictest): `query <types> [rowsort]`, the SQL, `----`, one
line per row, values separated by a space. Types: T text (NULL for null), I integer,
R real printed with 4 decimals.

Run: python3 tests/sql/generate.py > tests/sql/synthea.slt
"""

import json
import os
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches"))
from fixtures_root import FIXTURES  # noqa: E402
NDJSON = FIXTURES / "synthea" / "ndjson"


def load(t):
    with open(NDJSON / f"{t}.ndjson") as f:
        return [json.loads(line, parse_float=Decimal) for line in f if line.strip()]


TYPES = sorted(p.stem for p in NDJSON.glob("*.ndjson"))
R = {t: load(t) for t in TYPES}


def ref_id(ref):
    return ref["reference"].rsplit("/", 1)[1] if ref and "reference" in ref else None


def code_of(cc, system):
    for c in (cc or {}).get("coding", []):
        if c.get("system") == system:
            return c.get("code")
    return None


LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
queries = []


def q(sql, types, rows, rowsort=True, note=None):
    queries.append((note, sql.strip(), types, rows, rowsort))


def fmt(v, t):
    if v is None:
        return "NULL"
    if t == "I":
        return str(int(v))
    if t == "R":
        return f"{float(v):.4f}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# --- counts of every current table, and the same through their history tables
for t in TYPES:
    q(f"SELECT count(*) FROM {t.lower()}", "I", [[len(R[t])]], note=f"{t}: one row per resource")
for t in ("Patient", "Observation", "Encounter"):
    q(f"SELECT count(DISTINCT id), max(_version_id) FROM history.{t.lower()}", "II", [[len(R[t]), 1]])

P, O, C, E = R["Patient"], R["Observation"], R["Condition"], R["Encounter"]

# --- case-insensitive table names, camelCase columns unquoted
q("SELECT count(*) FROM PATIENT WHERE birthDate IS NOT NULL", "I", [[sum(1 for p in P if p.get("birthDate"))]])
q("SELECT gender, count(*) FROM Patient GROUP BY gender", "TI", [[g, n] for g, n in Counter(p["gender"] for p in P).items()])
q("SELECT min(birthDate), max(birthDate) FROM patient", "TT", [[min(p["birthDate"] for p in P), max(p["birthDate"] for p in P)]])
q("SELECT substr(birthDate, 1, 3) || '0s' AS decade, count(*) FROM patient GROUP BY 1", "TI",
  [[d + "0s", n] for d, n in Counter(p["birthDate"][:3] for p in P).items()])
q("SELECT count(*) FROM patient WHERE deceasedDateTime IS NOT NULL", "I", [[sum(1 for p in P if "deceasedDateTime" in p)]])
q("SELECT maritalStatus.coding[1]['code'], count(*) FROM patient GROUP BY 1", "TI",
  [[k, n] for k, n in Counter(((p.get("maritalStatus") or {}).get("coding") or [{}])[0].get("code") for p in P).items()])

# --- nested field access
q("SELECT count(*) FROM observation WHERE valueQuantity.value IS NOT NULL", "I", [[sum(1 for o in O if "valueQuantity" in o)]])
q("SELECT valueQuantity.unit, count(*) FROM observation WHERE valueQuantity.unit IS NOT NULL GROUP BY 1", "TI",
  [[u, n] for u, n in Counter(o["valueQuantity"]["unit"] for o in O if "valueQuantity" in o).items()])
q("SELECT class.code, count(*) FROM encounter GROUP BY 1", "TI", [[k, n] for k, n in Counter(e["class"]["code"] for e in E).items()])
q("SELECT status, count(*) FROM encounter GROUP BY 1", "TI", [[k, n] for k, n in Counter(e["status"] for e in E).items()])
q("SELECT count(*) FROM encounter WHERE period.end > period.start", "I",
  [[sum(1 for e in E if e["period"].get("end", "") > e["period"]["start"])]])
q("SELECT code.text, count(*) FROM condition GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5", "TI",
  sorted([[k, n] for k, n in Counter(c["code"].get("text") for c in C).items()], key=lambda r: (-r[1], r[0]))[:5], rowsort=False)
q("SELECT clinicalStatus.coding[1]['code'], count(*) FROM condition GROUP BY 1", "TI",
  [[k, n] for k, n in Counter(c["clinicalStatus"]["coding"][0]["code"] for c in C).items()])

# --- observations by code: averages over exact decimals
by_code = defaultdict(list)
for o in O:
    if "valueQuantity" in o:
        by_code[code_of(o["code"], LOINC)].append(o["valueQuantity"]["value"])
for code in ("8302-2", "29463-7", "39156-5", "2339-0", "2093-3", "8867-4"):
    vals = by_code.get(code, [])
    q(f"SELECT count(*), avg(valueQuantity.value), min(valueQuantity.value), max(valueQuantity.value) "
      f"FROM observation WHERE code.coding[1]['code'] = '{code}'", "IRRR",
      [[len(vals), (sum(vals) / len(vals)) if vals else None, min(vals) if vals else None, max(vals) if vals else None]])
top = sorted(Counter(code_of(o["code"], LOINC) for o in O).items(), key=lambda kv: (-kv[1], kv[0]))[:10]
q("SELECT fhir_code(code, 'http://loinc.org') AS loinc, count(*) AS n FROM observation GROUP BY 1 ORDER BY n DESC, loinc LIMIT 10",
  "TI", [[k, n] for k, n in top], rowsort=False)
q("SELECT count(DISTINCT code.coding[1]['code']) FROM observation", "I", [[len({o['code']['coding'][0]['code'] for o in O})]])

# --- unnest of repeating elements
q("SELECT count(*) FROM (SELECT unnest(name) AS n FROM patient)", "I", [[sum(len(p.get("name", [])) for p in P)]])
q("SELECT n.use, count(*) FROM (SELECT unnest(name) AS n FROM patient) GROUP BY 1", "TI",
  [[k, v] for k, v in Counter(n.get("use") for p in P for n in p.get("name", [])).items()])
q("SELECT count(*) FROM (SELECT unnest(address) AS a FROM patient)", "I", [[sum(len(p.get("address", [])) for p in P)]])
q("SELECT a.state, count(*) FROM (SELECT unnest(address) AS a FROM patient) GROUP BY 1", "TI",
  [[k, v] for k, v in Counter(a.get("state") for p in P for a in p.get("address", [])).items()])
q("SELECT count(*) FROM (SELECT unnest(component) AS c FROM observation)", "I", [[sum(len(o.get("component", [])) for o in O)]])
comp = defaultdict(list)
for o in O:
    for c in o.get("component", []):
        comp[code_of(c["code"], LOINC)].append(c["valueQuantity"]["value"])
q("SELECT c.code.coding[1]['code'], count(*), avg(c.valueQuantity.value) FROM (SELECT unnest(component) AS c FROM observation) GROUP BY 1",
  "TIR", [[k, len(v), sum(v) / len(v)] for k, v in comp.items()])
q("SELECT count(*) FROM (SELECT unnest(telecom) AS t FROM patient)", "I", [[sum(len(p.get("telecom", [])) for p in P)]])
q("SELECT count(*) FROM (SELECT unnest(identifier) AS i FROM patient)", "I", [[sum(len(p.get("identifier", [])) for p in P)]])
q("SELECT count(*) FROM (SELECT unnest(type) AS t FROM encounter)", "I", [[sum(len(e.get("type", [])) for e in E)]])
q("SELECT count(*) FROM (SELECT unnest(participant) AS p FROM encounter)", "I", [[sum(len(e.get("participant", [])) for e in E)]])
q("SELECT count(*) FROM (SELECT unnest(category) AS c FROM observation)", "I", [[sum(len(o.get("category", [])) for o in O)]])

# --- aggregates by code across resource types
for t, field, system in (("Condition", "code", SNOMED), ("Procedure", "code", SNOMED), ("Immunization", "vaccineCode", "http://hl7.org/fhir/sid/cvx"),
                         ("MedicationRequest", "medicationCodeableConcept", "http://www.nlm.nih.gov/research/umls/rxnorm")):
    counts = Counter(code_of(r.get(field), system) for r in R[t])
    top5 = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] or ""))[:5]
    q(f"SELECT fhir_code({field}, '{system}') AS c, count(*) AS n FROM {t.lower()} GROUP BY 1 ORDER BY n DESC, c LIMIT 5",
      "TI", [[k, n] for k, n in top5], rowsort=False)
q("SELECT fhir_display(code, 'http://snomed.info/sct') AS d, count(DISTINCT subject._target_id) AS patients FROM condition GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
  "TI", sorted([[d, len(s)] for d, s in
               {d: {ref_id(c["subject"]) for c in C if c["code"]["coding"][0].get("display") == d} for d in {c["code"]["coding"][0].get("display") for c in C}}.items()],
               key=lambda r: (-r[1], r[0]))[:3], rowsort=False)

# --- joins through the reference id columns
gender = {p["id"]: p["gender"] for p in P}
q("SELECT p.gender, count(*) FROM observation o JOIN patient p ON o.subject._target_id = p.id GROUP BY 1", "TI",
  [[g, n] for g, n in Counter(gender[ref_id(o["subject"])] for o in O).items()])
q("SELECT p.gender, count(*) FROM encounter e JOIN patient p ON fhir_ref_id(e.subject, 'Patient') = p.id GROUP BY 1", "TI",
  [[g, n] for g, n in Counter(gender[ref_id(e["subject"])] for e in E).items()])
q("SELECT count(*) FROM condition c JOIN encounter e ON c.encounter._target_id = e.id", "I",
  [[sum(1 for c in C if ref_id(c.get("encounter")) in {e["id"] for e in E})]])
per_patient = Counter(ref_id(e["subject"]) for e in E)
q("SELECT max(n), min(n) FROM (SELECT subject._target_id AS pid, count(*) AS n FROM encounter GROUP BY 1)", "II",
  [[max(per_patient.values()), min(per_patient.values())]])
q("SELECT count(*) FROM patient p LEFT JOIN condition c ON c.subject._target_id = p.id WHERE c.id IS NULL", "I",
  [[sum(1 for p in P if p["id"] not in {ref_id(c["subject"]) for c in C})]])
prov = Counter(ref_id(e.get("serviceProvider")) for e in E)
orgs = {o["id"]: o.get("name") for o in R["Organization"]}
q("SELECT o.name, count(*) FROM encounter e JOIN organization o ON e.serviceProvider._target_id = o.id GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
  "TI", sorted([[orgs[k], v] for k, v in prov.items() if k in orgs], key=lambda r: (-r[1], r[0]))[:3], rowsort=False)
q("SELECT count(*) FROM observation o JOIN encounter e ON o.encounter._target_id = e.id JOIN patient p ON e.subject._target_id = p.id", "I",
  [[sum(1 for o in O if ref_id(o.get("encounter")) in {e["id"] for e in E})]])
q("SELECT count(DISTINCT o.subject._target_id) FROM observation o WHERE fhir_code(o.code, 'http://loinc.org') = '39156-5'", "I",
  [[len({ref_id(o["subject"]) for o in O if code_of(o["code"], LOINC) == "39156-5"})]])
q("SELECT count(*) FROM medicationrequest m JOIN practitioner pr ON m.requester._target_id = pr.id", "I",
  [[sum(1 for m in R["MedicationRequest"] if ref_id(m.get("requester")) in {x["id"] for x in R["Practitioner"]})]])
q("SELECT count(*) FROM immunization i JOIN patient p ON i.patient._target_id = p.id", "I",
  [[sum(1 for i in R["Immunization"] if ref_id(i["patient"]) in gender)]])

# --- compartment owner column
q("SELECT count(*) FROM observation WHERE _patient = subject._target_id", "I", [[len(O)]])
q("SELECT count(DISTINCT _patient) FROM encounter", "I", [[len(per_patient)]])

# --- dates and times
q("SELECT count(*) FROM observation WHERE effectiveDateTime >= '2015-01-01'", "I",
  [[sum(1 for o in O if o.get("effectiveDateTime", "") >= "2015-01-01")]])
q("SELECT substr(effectiveDateTime, 1, 4) AS y, count(*) FROM observation WHERE effectiveDateTime >= '2018' GROUP BY 1", "TI",
  [[y, n] for y, n in Counter(o["effectiveDateTime"][:4] for o in O if o.get("effectiveDateTime", "") >= "2018").items()])
q("SELECT count(*) FROM observation WHERE _effectiveDateTime_ts >= TIMESTAMP '2015-01-01T00:00:00Z'", "I",
  [[sum(1 for o in O if o.get("effectiveDateTime", "") >= "2015-01-01")]])
ages = Counter((2020 - int(p["birthDate"][:4]) - ((6, 15) < (int(p["birthDate"][5:7]), int(p["birthDate"][8:10])))) // 10 for p in P)
q("SELECT fhir_age(birthDate, '2020-06-15') / 10 AS decade, count(*) FROM patient GROUP BY 1", "II", [[k, v] for k, v in ages.items()])

# --- time travel and history
q("SELECT count(*) FROM as_of('patient', '2100-01-01T00:00:00Z')", "I", [[len(P)]])
q("SELECT count(*) FROM as_of('history.observation', '2100-01-01T00:00:00Z')", "I", [[len(O)]])
q("SELECT count(*) FROM history.condition WHERE _deleted", "I", [[0]])
q("SELECT count(*) FROM patient_history h JOIN patient p ON h.id = p.id AND h._version_id = p._version_id", "I", [[len(P)]])

# --- search-index columns are plain SQL too
q("SELECT count(*) FROM (SELECT unnest(_sp_code) AS c FROM observation) WHERE c.system = 'http://loinc.org' AND c.code = '8302-2'",
  "I", [[sum(1 for o in O for c in o["code"]["coding"] if c.get("system") == LOINC and c.get("code") == "8302-2")]])
q("SELECT count(*) FROM patient WHERE array_length(_sp_name) > 0", "I", [[sum(1 for p in P if p.get("name"))]])

out = [
    "# Generated by tests/sql/generate.py from the Synthea NDJSON fixtures; do not edit.",
    "# Expected results are computed from the raw JSON by that script, not by fhirlake.",
    "",
]
for note, sql, types, rows, rowsort in queries:
    if note:
        out.append(f"# {note}")
    out.append(f"query {types}{' rowsort' if rowsort else ''}")
    out.append(sql)
    out.append("----")
    lines = [" ".join(fmt(v, t) for v, t in zip(r, types)) for r in rows]
    if rowsort:
        lines.sort()
    out.extend(lines)
    out.append("")
sys.stdout.write("\n".join(out))
print(f"{len(queries)} queries", file=sys.stderr)
