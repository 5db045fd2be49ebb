"""FHIR search against a reference evaluator: the 40 Synthea patients (`fhirlake import`)
and the official R4 examples (one batch of PUTs) loaded into the real `fhirlake serve`,
then a table of searches whose expected ids this file computes from the raw JSON.

The evaluator is deliberately simple and independent of fhirlake's code: each parameter
used is mapped by hand to the JSON elements its R4 SearchParameter expression selects,
and the FHIR search rules (string normalization, token system handling, date ranges
with prefixes and precision, quantities with implicit precision, references, :missing,
:not, :exact, :contains, chains, _has, _include/_revinclude) are written out below.
Search values are picked from the data (first, middle, last of sorted values), so the
expectations are not empty by construction; a handful of cases expect nothing on purpose.
"""

import json
import unicodedata
import urllib.parse
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from fhirlake_proc import FIXTURES, import_synthea, serve, stop

UTC = timezone.utc
MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, tzinfo=UTC)


# ---------------------------------------------------------------- loading

def get(base, path):
    import urllib.request
    with urllib.request.urlopen(f"{base}/{path}", timeout=300) as r:
        return json.loads(r.read())


def post(base, path, body):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/fhir+json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("search") / "root"
    import_synthea(data)
    proc, base, _ = serve(data)
    resources = {}
    for f in sorted((FIXTURES / "synthea" / "ndjson").glob("*.ndjson")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                resources.setdefault(r["resourceType"], []).append(r)
    examples = [json.loads(f.read_text()) for f in sorted((FIXTURES / "fhir-examples" / "examples").glob("*.json"))]
    examples = [r for r in examples if r.get("id")]
    status, answer = post(base, "", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in examples]})
    assert status == 200, answer
    accepted = 0
    for r, e in zip(examples, answer["entry"]):
        if e["response"]["status"].startswith(("200", "201")):
            resources.setdefault(r["resourceType"], []).append(r)
            accepted += 1
    assert accepted >= 600, f"only {accepted} of {len(examples)} examples accepted"
    yield base, resources
    stop(proc)


def search_all(base, query):
    """(match ids, include keys) over every page of `query`."""
    matches, includes = set(), set()
    url = f"{base}/{query}"
    pages = 0
    while url:
        import urllib.request
        with urllib.request.urlopen(url, timeout=300) as r:
            b = json.loads(r.read())
        for e in b.get("entry", []):
            res = e["resource"]
            mode = e.get("search", {}).get("mode", "match")
            if mode == "match":
                key = res["id"] if "_type" not in query else f"{res['resourceType']}/{res['id']}"
                assert key not in matches, f"{query}: {key} twice"
                matches.add(key)
            elif mode == "include":
                includes.add(f"{res['resourceType']}/{res['id']}")
        url = next((link["url"] for link in b.get("link", []) if link["relation"] == "next"), None)
        pages += 1
        assert pages < 200, query
    return matches, includes


# ---------------------------------------------------------------- the evaluator

def items(v):
    return v if isinstance(v, list) else ([] if v is None else [v])


def path(r, dotted):
    """Values at a dotted element path, arrays flattened."""
    nodes = [r]
    for seg in dotted.split("."):
        nodes = [x for n in nodes if isinstance(n, dict) for x in items(n.get(seg))]
    return nodes


def norm(s):
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).casefold()


def strings_of(v):
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        out = []
        for k in ("family", "text", "city", "district", "state", "postalCode", "country"):
            if isinstance(v.get(k), str):
                out.append(v[k])
        for k in ("given", "prefix", "suffix", "line"):
            out += [x for x in items(v.get(k)) if isinstance(x, str)]
        return out
    return []


def tokens_of(v):
    """(system, code) pairs of a Coding, CodeableConcept, Identifier, code or boolean."""
    if isinstance(v, bool):
        return [(None, "true" if v else "false")]
    if isinstance(v, str):
        return [(None, v)]
    if isinstance(v, dict):
        if "coding" in v or ("text" in v and "code" not in v and "value" not in v):
            return [(c.get("system"), c.get("code")) for c in items(v.get("coding"))]
        if "code" in v:
            return [(v.get("system"), v.get("code"))]
        if "value" in v:
            return [(v.get("system"), v.get("value"))]
    return []


def parse_time(s):
    """Range [lo, hi) of a FHIR date, dateTime or instant (no zone = UTC)."""
    if "T" not in s:
        parts = [int(x) for x in s.split("-")]
        if len(parts) == 1:
            lo = datetime(parts[0], 1, 1, tzinfo=UTC)
            return lo, datetime(parts[0] + 1, 1, 1, tzinfo=UTC)
        if len(parts) == 2:
            lo = datetime(parts[0], parts[1], 1, tzinfo=UTC)
            y, m = (parts[0] + 1, 1) if parts[1] == 12 else (parts[0], parts[1] + 1)
            return lo, datetime(y, m, 1, tzinfo=UTC)
        lo = datetime(*parts, tzinfo=UTC)
        return lo, lo + timedelta(days=1)
    text = s.replace("Z", "+00:00")
    frac = 0
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        frac = len(digits)
        zone = rest[len(digits):]
        text = head + "." + (digits + "000000")[:6] + zone
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if frac:
        step = timedelta(microseconds=10 ** (6 - min(frac, 6)))
    elif text.count(":") >= 2 + (1 if text[-6] in "+-" else 0):
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    return dt, dt + step


def ranges_of(v):
    if isinstance(v, str):
        return [parse_time(v)]
    if isinstance(v, dict) and ("start" in v or "end" in v):
        lo = parse_time(v["start"])[0] if "start" in v else MIN
        hi = parse_time(v["end"])[1] if "end" in v else MAX
        return [(lo, hi)]
    return []


def date_match(prefix, s, t):
    (slo, shi), (tlo, thi) = s, t
    eq = slo <= tlo and thi <= shi
    return {
        "eq": eq, "ne": not eq,
        "gt": thi > shi, "lt": tlo < slo,
        "ge": thi > shi or eq, "le": tlo < slo or eq,
        "sa": tlo >= shi, "eb": thi <= slo,
    }[prefix]


def precision_range(text):
    d = Decimal(text)
    half = Decimal(1).scaleb(d.as_tuple().exponent) / 2
    return d - half, d + half


def number_match(prefix, text, value):
    v = Decimal(str(value))
    lo, hi = precision_range(text)
    d = Decimal(text)
    return {
        "eq": lo <= v < hi, "ne": not (lo <= v < hi),
        "gt": v > d, "lt": v < d, "ge": v >= d, "le": v <= d,
    }[prefix]


UCUM = "http://unitsofmeasure.org"
# UCUM units of the data, reduced to a canonical unit (a small table: the evaluator's
# own, not fhirlake's).
CANONICAL = {
    "m": ("m", 1), "cm": ("m", 0.01), "mm": ("m", 0.001), "[in_i]": ("m", 0.0254),
    "g": ("g", 1), "kg": ("g", 1000), "mg": ("g", 0.001), "pg": ("g", 1e-12), "[lb_av]": ("g", 453.59237),
    "g/L": ("g/m3", 1000), "g/dL": ("g/m3", 10000), "mg/dL": ("g/m3", 10), "mg/L": ("g/m3", 1),
    "ng/mL": ("g/m3", 1e-3), "pg/mL": ("g/m3", 1e-6),
}


def quantity_match(prefix, number, system, code, q):
    """A Quantity `q` against `number|system|code`: same unit compared as written, or both
    UCUM units of one dimension compared in canonical units."""
    if not isinstance(q, dict) or "value" not in q:
        return False
    if not code:
        return number_match(prefix, number, q["value"])
    same = q.get("code") == code or (not system and q.get("unit") == code)
    if same and (not system or q.get("system") == system):
        return number_match(prefix, number, q["value"])
    if system not in ("", UCUM) or q.get("system") != UCUM:
        return False
    a, b = CANONICAL.get(code), CANONICAL.get(q.get("code"))
    if not a or not b or a[0] != b[0]:
        return False
    lo, hi = precision_range(number)
    v = Decimal(str(q["value"])) * Decimal(str(b[1])) / Decimal(str(a[1]))
    d = Decimal(number)
    return {"eq": lo <= v < hi, "ne": not (lo <= v < hi), "gt": v > d, "lt": v < d, "ge": v >= d, "le": v <= d}[prefix]


def split_prefix(value):
    if value[:2] in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap") and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def ref_of(v):
    return v.get("reference") if isinstance(v, dict) else None


# (type, code) -> (kind, element paths). Written from the R4 SearchParameter expressions.
PARAMS = {
    ("Patient", "gender"): ("token", ["gender"]),
    ("Patient", "birthdate"): ("date", ["birthDate"]),
    ("Patient", "death-date"): ("date", ["deceasedDateTime"]),
    ("Patient", "name"): ("string", ["name"]),
    ("Patient", "family"): ("string", ["name.family"]),
    ("Patient", "given"): ("string", ["name.given"]),
    ("Patient", "address-city"): ("string", ["address.city"]),
    ("Patient", "address-postalcode"): ("string", ["address.postalCode"]),
    ("Patient", "identifier"): ("token", ["identifier"]),
    ("Patient", "active"): ("token", ["active"]),
    ("Patient", "general-practitioner"): ("reference", ["generalPractitioner"]),
    ("Patient", "organization"): ("reference", ["managingOrganization"]),
    ("Observation", "code"): ("token", ["code"]),
    ("Observation", "category"): ("token", ["category"]),
    ("Observation", "status"): ("token", ["status"]),
    ("Observation", "date"): ("date", ["effectiveDateTime", "effectivePeriod", "effectiveInstant"]),
    ("Observation", "value-quantity"): ("quantity", ["valueQuantity"]),
    ("Observation", "value-concept"): ("token", ["valueCodeableConcept"]),
    ("Observation", "subject"): ("reference", ["subject"]),
    ("Observation", "patient"): ("reference:Patient", ["subject"]),
    ("Observation", "encounter"): ("reference", ["encounter"]),
    ("Observation", "combo-code"): ("token", ["code", "component.code"]),
    ("Condition", "code"): ("token", ["code"]),
    ("Condition", "clinical-status"): ("token", ["clinicalStatus"]),
    ("Condition", "onset-date"): ("date", ["onsetDateTime", "onsetPeriod"]),
    ("Condition", "abatement-date"): ("date", ["abatementDateTime", "abatementPeriod"]),
    ("Condition", "patient"): ("reference:Patient", ["subject"]),
    ("Encounter", "date"): ("date", ["period"]),
    ("Encounter", "class"): ("token", ["class"]),
    ("Encounter", "type"): ("token", ["type"]),
    ("Encounter", "subject"): ("reference", ["subject"]),
    ("Encounter", "patient"): ("reference:Patient", ["subject"]),
    ("Encounter", "service-provider"): ("reference", ["serviceProvider"]),
    ("Procedure", "code"): ("token", ["code"]),
    ("Procedure", "date"): ("date", ["performedDateTime", "performedPeriod"]),
    ("Immunization", "vaccine-code"): ("token", ["vaccineCode"]),
    ("Immunization", "date"): ("date", ["occurrenceDateTime"]),
    ("MedicationRequest", "status"): ("token", ["status"]),
    ("MedicationRequest", "code"): ("token", ["medicationCodeableConcept"]),
    ("MedicationRequest", "authoredon"): ("date", ["authoredOn"]),
    ("DiagnosticReport", "code"): ("token", ["code"]),
    ("DiagnosticReport", "result"): ("reference", ["result"]),
    ("Organization", "name"): ("string", ["name", "alias"]),
    ("Practitioner", "family"): ("string", ["name.family"]),
    ("Practitioner", "name"): ("string", ["name"]),
    ("Claim", "use"): ("token", ["use"]),
}


class Evaluator:
    def __init__(self, resources):
        self.r = resources

    def values(self, rt, code, res):
        kind, paths = PARAMS[(rt, code)]
        return kind, [v for p in paths for v in path(res, p)]

    def clause(self, rt, key, value, res):
        """Does `res` match `key=value` (key may carry a modifier)."""
        code, _, modifier = key.partition(":")
        kind, vals = self.values(rt, code, res)
        if modifier == "missing":
            return (not self.searchable(kind, vals)) == (value == "true")
        alternatives = split_unescaped(value, ",")
        if kind == "token" and modifier == "not":
            return not any(self.token(vals, a) for a in alternatives)
        return any(self.one(kind, modifier, vals, a) for a in alternatives)

    @staticmethod
    def searchable(kind, vals):
        """Whether the elements hold a value the parameter can match (a Reference with
        only a display, or a CodeableConcept with only text, holds none)."""
        if kind.startswith("reference"):
            return any(ref_of(v) for v in vals)
        if kind == "token":
            return any(c for v in vals for _, c in tokens_of(v))
        return bool(vals)

    def token(self, vals, a):
        pairs = [t for v in vals for t in tokens_of(v)]
        if "|" in a:
            system, code = a.split("|", 1)
            if system == "":
                return any(s is None and c == code for s, c in pairs)
            if code == "":
                return any(s == system for s, c in pairs)
            return any(s == system and c == code for s, c in pairs)
        return any(c == a for _, c in pairs)

    def one(self, kind, modifier, vals, a):
        if kind == "token":
            if modifier == "text":
                texts = [x.get("text", "") for x in vals if isinstance(x, dict)]
                texts += [c.get("display", "") for x in vals if isinstance(x, dict) for c in items(x.get("coding"))]
                return any(norm(t).startswith(norm(a)) for t in texts if t)
            return self.token(vals, a)
        if kind == "string":
            ss = [s for v in vals for s in strings_of(v)]
            if modifier == "exact":
                return a in ss
            if modifier == "contains":
                return any(norm(a) in norm(s) for s in ss)
            return any(norm(s).startswith(norm(a)) for s in ss)
        if kind == "date":
            prefix, text = split_prefix(a)
            s = parse_time(text)
            return any(date_match(prefix, s, t) for v in vals for t in ranges_of(v))
        if kind == "quantity":
            prefix, text = split_prefix(a)
            number, system, code = (text.split("|") + ["", ""])[:3]
            return any(quantity_match(prefix, number, system, code, v) for v in vals)
        if kind.startswith("reference"):
            target = modifier or (kind.split(":")[1] if ":" in kind else None)
            refs = [ref_of(v) for v in vals if ref_of(v)]
            if target:
                refs = [x for x in refs if x.startswith(target + "/")]
            if "/" in a:
                return a in refs
            return any(x.rsplit("/", 1)[-1] == a for x in refs)
        raise AssertionError(kind)

    def search(self, rt, clauses):
        return {r["id"] for r in self.r.get(rt, []) if all(self.clause(rt, k, v, r) for k, v in clauses)}

    def ids_referenced(self, rt, code, rs, target):
        kind, paths = PARAMS[(rt, code)]
        out = set()
        for r in rs:
            for p in paths:
                for v in path(r, p):
                    x = ref_of(v)
                    if x and x.startswith(target + "/"):
                        out.add(x.split("/", 1)[1])
        return out

    def by_id(self, rt, ids):
        return [r for r in self.r.get(rt, []) if r["id"] in ids]


def split_unescaped(s, sep):
    out, cur, esc = [], "", False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == sep:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def esc(v):
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


# ---------------------------------------------------------------- the table

def picks(values, n=3):
    """First, middle and last of the sorted distinct values."""
    vs = sorted(set(values))
    if not vs:
        return []
    return sorted({vs[0], vs[len(vs) // 2], vs[-1]})[:n]


def build_cases(ev):
    R = ev.r
    cases = []  # (query, expected match ids, expected include keys or None)

    def simple(rt, clauses, includes=None):
        cases.append((f"{rt}?" + "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in clauses) + "&_count=1000",
                      ev.search(rt, clauses), includes))

    # token: code, system|code, |code, system|, :not, lists, :missing
    for rt, code in [("Observation", "code"), ("Condition", "code"), ("Encounter", "type"), ("Procedure", "code"),
                     ("Immunization", "vaccine-code"), ("MedicationRequest", "code"), ("DiagnosticReport", "code"),
                     ("Observation", "category"), ("Encounter", "class"), ("Observation", "value-concept")]:
        pairs = [t for r in R[rt] for v in ev.values(rt, code, r)[1] for t in tokens_of(v) if t[0] and t[1]]
        for system, c in picks(pairs, 2):
            simple(rt, [(code, f"{system}|{c}")])
            simple(rt, [(code, c)])
        system, c = picks(pairs, 1)[0]
        simple(rt, [(code, f"{system}|")])
        simple(rt, [(f"{code}:not", f"{system}|{c}")])
        simple(rt, [(code, f"{picks(pairs)[0][1]},{picks(pairs)[-1][1]}")])
    for rt, code in [("Patient", "gender"), ("Observation", "status"), ("Condition", "clinical-status"),
                     ("MedicationRequest", "status"), ("Claim", "use")]:
        for c in picks([t[1] for r in R[rt] for v in ev.values(rt, code, r)[1] for t in tokens_of(v)], 2):
            simple(rt, [(code, c)])
            simple(rt, [(f"{code}:not", c)])
    simple("Patient", [("active", "true")])
    simple("Patient", [("active:missing", "true")])
    simple("Patient", [("death-date:missing", "true")])
    simple("Observation", [("value-concept:missing", "false")])
    simple("Observation", [("code", "no-such-code")])
    # identifiers: system|value and value alone, with an escaped value
    idents = [(i.get("system"), i.get("value")) for r in R["Patient"] for i in items(r.get("identifier"))
              if i.get("system") and i.get("value")]
    for s, v in picks(idents, 3):
        simple("Patient", [("identifier", f"{esc(s)}|{esc(v)}")])
        simple("Patient", [("identifier", esc(v))])
    # :text on CodeableConcepts
    for rt, code in [("Condition", "code"), ("Observation", "code")]:
        texts = [v.get("text") for r in R[rt] for v in ev.values(rt, code, r)[1] if isinstance(v, dict) and v.get("text")]
        for t in picks(texts, 2):
            simple(rt, [(f"{code}:text", t.split()[0])])

    # string: prefix (case- and accent-insensitive), :exact, :contains
    for rt, code in [("Patient", "family"), ("Patient", "given"), ("Patient", "name"), ("Patient", "address-city"),
                     ("Organization", "name"), ("Practitioner", "family")]:
        ss = [s for r in R[rt] for v in ev.values(rt, code, r)[1] for s in strings_of(v) if len(s) >= 4]
        for s in picks(ss, 2):
            simple(rt, [(code, s[:3].upper())])
            simple(rt, [(code, s[:4].lower())])
            simple(rt, [(f"{code}:exact", s)])
            simple(rt, [(f"{code}:contains", s[1:4])])
    simple("Patient", [("family:exact", "nobody-has-this-name")])
    simple("Patient", [("address-postalcode", "01")])

    # date: every prefix, several precisions, dates and periods
    for rt, code in [("Patient", "birthdate"), ("Encounter", "date"), ("Observation", "date"),
                     ("Condition", "onset-date"), ("Procedure", "date"), ("Immunization", "date"),
                     ("MedicationRequest", "authoredon")]:
        starts = [t[0] for r in R[rt] for v in ev.values(rt, code, r)[1] for t in ranges_of(v) if t[0] != MIN]
        mid = sorted(starts)[len(starts) // 2]
        year, month, day = mid.strftime("%Y"), mid.strftime("%Y-%m"), mid.strftime("%Y-%m-%d")
        for prefix in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"):
            simple(rt, [(code, f"{prefix}{year}")])
        for prefix in ("eq", "ge", "lt"):
            simple(rt, [(code, f"{prefix}{month}")])
            simple(rt, [(code, f"{prefix}{day}")])
        simple(rt, [(code, f"gt{day}T12:00:00Z")])
        simple(rt, [(code, f"ge{year}"), (code, f"lt{int(year) + 3}")])
    simple("Patient", [("death-date:missing", "false")])
    simple("Condition", [("abatement-date", "ge2010")])

    # quantity: prefixes, implicit precision, value|system|code, value||unit
    heights = [o["valueQuantity"]["value"] for o in R["Observation"]
               if o.get("valueQuantity", {}).get("code") == "cm" and isinstance(o["valueQuantity"].get("value"), (int, float))]
    h = sorted(heights)[len(heights) // 2]
    for prefix in ("gt", "lt", "ge", "le"):
        simple("Observation", [("code", "8302-2"), ("value-quantity", f"{prefix}{h:.1f}")])
    simple("Observation", [("value-quantity", f"{h:.1f}")])
    simple("Observation", [("value-quantity", f"ne{h:.1f}"), ("code", "8302-2")])
    simple("Observation", [("value-quantity", f"gt{h:.0f}|http://unitsofmeasure.org|cm")])
    simple("Observation", [("value-quantity", f"lt{h:.0f}||cm")])
    simple("Observation", [("value-quantity", "gt100|http://unitsofmeasure.org|mg/dL")])

    # reference: Type/id, id, :Type, :missing
    pid = R["Patient"][0]["id"]
    for p in (R["Patient"][0], R["Patient"][7], R["Patient"][-1]):
        simple("Observation", [("subject", f"Patient/{p['id']}")])
        simple("Observation", [("patient", p["id"])])
        simple("Condition", [("patient", p["id"])])
        simple("Encounter", [("subject:Patient", p["id"])])
    enc = next(o["encounter"]["reference"] for o in R["Observation"] if o.get("encounter"))
    simple("Observation", [("encounter", enc)])
    simple("Observation", [("encounter:missing", "true")])
    simple("Patient", [("general-practitioner:missing", "false")])
    org = next(e["serviceProvider"]["reference"] for e in R["Encounter"] if e.get("serviceProvider"))
    simple("Encounter", [("service-provider", org)])
    simple("Encounter", [("service-provider", org), ("class", "AMB")])
    obs_ref = next(x["reference"] for d in R["DiagnosticReport"] for x in items(d.get("result")) if ref_of(x))
    simple("DiagnosticReport", [("result", obs_ref)])

    # composite
    def composite(rt, comp, code_value, pred):
        cases.append((f"{rt}?{comp}={urllib.parse.quote(code_value, safe='')}&_count=1000",
                      {r["id"] for r in R[rt] if pred(r)}, None))

    composite("Observation", "code-value-quantity", f"http://loinc.org|8302-2$gt{h:.1f}",
              lambda o: ev.token([o.get("code")], "http://loinc.org|8302-2")
              and "valueQuantity" in o and number_match("gt", f"{h:.1f}", o["valueQuantity"]["value"]))
    composite("Observation", "component-code-value-quantity", "http://loinc.org|8480-6$gt140",
              lambda o: any(ev.token([c.get("code")], "http://loinc.org|8480-6") and "valueQuantity" in c
                            and number_match("gt", "140", c["valueQuantity"]["value"]) for c in items(o.get("component"))))
    composite("Observation", "code-value-concept", "72166-2$http://snomed.info/sct|8517006",
              lambda o: ev.token([o.get("code")], "72166-2") and ev.token([o.get("valueCodeableConcept")], "http://snomed.info/sct|8517006"))

    # chains (one and two levels) and _has
    def chain(rt, ref_code, target, inner_key, inner_value):
        targets = ev.search(target, [(inner_key, inner_value)])
        out = set()
        for r in R[rt]:
            refs = [ref_of(v) for v in ev.values(rt, ref_code, r)[1] if ref_of(v)]
            if any(x.startswith(target + "/") and x.split("/", 1)[1] in targets for x in refs):
                out.add(r["id"])
        return out

    for g in ("male", "female"):
        cases.append((f"Observation?subject:Patient.gender={g}&code=8302-2&_count=1000",
                      chain("Observation", "subject", "Patient", "gender", g) & ev.search("Observation", [("code", "8302-2")]), None))
    fam = R["Patient"][3]["name"][0]["family"]
    cases.append((f"Condition?patient.family={fam[:3]}&_count=1000", chain("Condition", "patient", "Patient", "family", fam[:3]), None))
    cases.append(("Encounter?subject:Patient.birthdate=lt1960&_count=1000",
                  chain("Encounter", "subject", "Patient", "birthdate", "lt1960"), None))
    # two levels: Observation -> Encounter -> Patient
    old_patients = ev.search("Patient", [("birthdate", "lt1960")])
    encs = {e["id"] for e in R["Encounter"] if (ref_of(e.get("subject")) or "").split("/")[-1] in old_patients}
    cases.append(("Observation?encounter.subject:Patient.birthdate=lt1960&code=8302-2&_count=1000",
                  {o["id"] for o in R["Observation"] if (ref_of(o.get("encounter")) or "").split("/")[-1] in encs
                   and ev.token([o.get("code")], "8302-2")}, None))
    for loinc in ("4548-4", "8302-2", "72166-2"):
        subj = {ref_of(o.get("subject")).split("/", 1)[1] for o in R["Observation"]
                if ev.token([o.get("code")], loinc) and (ref_of(o.get("subject")) or "").startswith("Patient/")}
        cases.append((f"Patient?_has:Observation:patient:code={loinc}&_count=1000", subj, None))
    hyper = {ref_of(c.get("subject")).split("/", 1)[1] for c in R["Condition"]
             if ev.token([c.get("code")], "http://snomed.info/sct|15777000") and ref_of(c.get("subject"))}
    cases.append(("Patient?_has:Condition:patient:code=http://snomed.info/sct|15777000&gender=female&_count=1000",
                  hyper & ev.search("Patient", [("gender", "female")]), None))

    # _id, _include, _revinclude (with :iterate), _type
    some = [p["id"] for p in R["Patient"][:3]]
    cases.append((f"Patient?_id={','.join(some)}", set(some), None))
    obs = ev.search("Observation", [("code", "8302-2"), ("patient", pid)])
    cases.append((f"Observation?code=8302-2&patient={pid}&_include=Observation:patient&_count=1000", obs, {f"Patient/{pid}"}))
    encs_of = {ref_of(o.get("encounter")) for o in R["Observation"] if o["id"] in obs and ref_of(o.get("encounter"))}
    cases.append((f"Observation?code=8302-2&patient={pid}&_include=Observation:encounter&_count=1000", obs, encs_of))
    cases.append((f"Observation?code=8302-2&patient={pid}&_include=Observation:encounter"
                  f"&_include:iterate=Encounter:service-provider&_count=1000", obs,
                  encs_of | {ref_of(e.get("serviceProvider")) for e in R["Encounter"]
                             if f"Encounter/{e['id']}" in encs_of and ref_of(e.get("serviceProvider"))}))
    revs = {f"Condition/{c['id']}" for c in R["Condition"] if ref_of(c.get("subject")) == f"Patient/{pid}"}
    cases.append((f"Patient?_id={pid}&_revinclude=Condition:patient", {pid}, revs))
    dr = next(d for d in R["DiagnosticReport"] if d.get("result"))
    cases.append((f"DiagnosticReport?_id={dr['id']}&_include=DiagnosticReport:result", {dr["id"]},
                  {ref_of(x) for x in dr["result"] if ref_of(x)}))

    # meta: _profile, _security, _tag (official examples and Synthea)
    profiled = [(r["resourceType"], p, r["id"]) for rs in R.values() for r in rs for p in items(r.get("meta", {}).get("profile"))]
    for rt, prof, _ in profiled[:3]:
        cases.append((f"{rt}?_profile={urllib.parse.quote(prof, safe='')}&_count=1000",
                      {r["id"] for r in R[rt] if prof in items(r.get("meta", {}).get("profile"))}, None))
    tagged = [(r["resourceType"], t.get("system"), t.get("code")) for rs in R.values() for r in rs
              for t in items(r.get("meta", {}).get("tag")) if t.get("code")]
    for rt, s, c in tagged[:2]:
        cases.append((f"{rt}?_tag={urllib.parse.quote(f'{s}|{c}', safe='')}&_count=1000",
                      {r["id"] for r in R[rt] if (s, c) in [(t.get("system"), t.get("code")) for t in items(r.get("meta", {}).get("tag"))]}, None))
    return cases


def test_search_table_matches_the_reference_evaluator(world):
    base, resources = world
    ev = Evaluator(resources)
    cases = build_cases(ev)
    assert len(cases) >= 150, len(cases)
    empty = [q for q, exp, _ in cases if not exp]
    assert len(empty) <= 12, f"too many cases expect nothing (weak values): {empty}"
    failures = []
    for query, expected, includes in cases:
        got, got_includes = search_all(base, query)
        if got != expected:
            failures.append(f"{query}\n   missing {sorted(expected - got)[:5]} ({len(expected - got)})"
                            f"\n   extra   {sorted(got - expected)[:5]} ({len(got - expected)})")
        elif includes is not None and got_includes != includes:
            failures.append(f"{query}: includes {sorted(got_includes)[:5]} != expected {sorted(includes)[:5]}")
    assert not failures, f"{len(failures)} of {len(cases)} searches differ:\n" + "\n".join(failures)


def test_counts_match_the_reference_evaluator(world):
    """`_summary=count` of every search equals the evaluator's number of matches, whether
    the server counts from token postings (no rows read; `_explain` says so) or scans."""
    import urllib.request
    base, resources = world
    cases = build_cases(Evaluator(resources))
    failures, from_postings = [], 0
    for query, expected, _ in cases:
        with urllib.request.urlopen(f"{base}/{query}&_summary=count&_explain=true", timeout=300) as r:
            b = json.loads(r.read())
        if b.get("total") != len(expected):
            failures.append(f"{query}: total {b.get('total')} != {len(expected)}")
        from_postings += "token postings" in json.dumps(b)
    assert not failures, f"{len(failures)} of {len(cases)} counts differ:\n" + "\n".join(failures)
    # The token cases (all four forms, :not, :missing, lists, _id, _tag) took the postings path.
    assert from_postings >= 40, from_postings
