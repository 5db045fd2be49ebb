// The HL7 reference FHIRPath engine (`fhirpath` on npm) on the same expressions and
// resources as schemas/benches/fhirpath.rs. Prints one JSON object:
//   {"expressions": {"<expression>": evaluations/s, ...}, "extraction": resources/s}
// Usage: node fhirpath_js.js FIXTURES_DIR EXPRESSIONS_JSON SEARCH_PARAMETERS_JSON_GZ [SECONDS]
"use strict";
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const fhirpath = require("fhirpath");
const r4 = require("fhirpath/fhir-context/r4");

const [fixtures, exprFile, spFile, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || "2");
const limit = Number(process.env.FHIRLAKE_BENCH_LIMIT || Infinity);

const dir = path.join(fixtures, "synthea", "ndjson");
const resources = [];
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".ndjson")).sort()) {
  const lines = fs.readFileSync(path.join(dir, f), "utf8").split("\n").filter((l) => l.trim());
  for (const l of lines.slice(0, limit)) resources.push(JSON.parse(l));
}
const ofType = (t) => resources.filter((r) => r.resourceType === t);

// Repeats `pass` (one pass over `n` items) for about `seconds`; returns items per second.
function rate(n, pass) {
  pass(); // warm-up
  let passes = 0;
  const t0 = process.hrtime.bigint();
  let elapsed = 0;
  do {
    pass();
    passes++;
    elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  } while (elapsed < seconds);
  return (n * passes) / elapsed;
}

const out = { expressions: {}, extraction: null, errors: 0 };
for (const { type, expression } of JSON.parse(fs.readFileSync(exprFile, "utf8"))) {
  const rs = ofType(type);
  if (!rs.length) continue;
  const f = fhirpath.compile(expression, r4);
  out.expressions[expression] = rate(rs.length, () => {
    for (const r of rs) {
      try { f(r); } catch (e) { out.errors++; }
    }
  });
}

// Every applicable R4 SearchParameter expression per resource (components not included).
const bundle = JSON.parse(zlib.gunzipSync(fs.readFileSync(spFile)).toString("utf8"));
const params = bundle.entry.map((e) => e.resource).filter((p) => p.expression);
const compiled = new Map();
for (const r of resources) {
  const t = r.resourceType;
  if (compiled.has(t)) continue;
  const applies = params.filter((p) => p.base.includes(t) || p.base.includes("Resource") ||
    (p.base.includes("DomainResource") && !["Bundle", "Binary", "Parameters"].includes(t)));
  compiled.set(t, applies.map((p) => {
    try { return fhirpath.compile(p.expression, r4); } catch (e) { return null; }
  }).filter(Boolean));
}
out.extraction = rate(resources.length, () => {
  for (const r of resources) {
    for (const f of compiled.get(r.resourceType)) {
      try { f(r); } catch (e) { out.errors++; }
    }
  }
});
console.log(JSON.stringify(out));
