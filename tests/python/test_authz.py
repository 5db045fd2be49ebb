"""The authorisation matrix, against the real server over HTTP and Flight SQL.

Every case is a principal (roles, SMART scopes, launch patient, or a refused token) x an
interaction x a target inside or outside patient A's compartment. The expected answer
comes from the oracle below, written from the SMART App Launch and managed-service role
facts, not from the server's rule table. Tokens are signed with an RSA key this test
generates (PyJWT + cryptography); the server trusts its JWKS file."""

import base64
import itertools
import json
import time
import uuid

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhirlake_proc import serve, stop

ISSUER = "https://issuer.test"
AUDIENCE = "https://fhirlake.test/fhir"
KID = "matrix-key"
LOINC = "http://loinc.org|8867-4"

# ---------------------------------------------------------------- the oracle
ROLE_RIGHTS = {
    "Reader": {"read"},
    "Writer": {"read", "write", "delete"},
    "Exporter": {"read", "export"},
    "Importer": {"read", "import"},
    "Contributor": {"read", "write", "delete", "export", "import"},
    "SmartUser": {"read", "write", "delete"},
    "Analyst": {"sql"},
    "Auditor": {"audit"},
}
# interaction -> (right, SMART letter, resource type the letter is checked on)
NEEDS = {
    "read": ("read", "r", "Observation"),
    "vread": ("read", "r", "Observation"),
    "history": ("read", "r", "Observation"),
    "search": ("read", "s", "Observation"),
    "search-condition": ("read", "s", "Condition"),
    "everything": ("read", "r", "Patient"),
    "create": ("write", "c", "Observation"),
    "update": ("write", "u", "Observation"),
    "patch": ("write", "u", "Observation"),
    "delete": ("delete", "d", "Observation"),
    "transaction": ("write", "c", "Observation"),
    "sql": ("sql", None, "Observation"),
    "run": ("sql", None, "Observation"),
    "flight": ("sql", None, "Observation"),
}
V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def grants(scope):
    """(context, type or '*', letters, granular filter) of each clinical scope."""
    out = []
    for s in scope.split():
        if "/" not in s:
            continue
        context, rest = s.split("/", 1)
        target, perm = rest.split(".", 1)
        perm, _, query = perm.partition("?")
        out.append((context, target, V1.get(perm, perm), query))
    return out


def admits(grant, inside, code_matches):
    """Whether a grant admits one resource (inside A's compartment or not) for reading."""
    context, _, _, query = grant
    if query and not code_matches(query):
        return False
    return inside if context == "patient" else True


def expected(principal, interaction, inside):
    """(status, visible) the server must answer; `visible` for reads, searches and SQL."""
    if principal.get("refused"):
        return 401, False
    right, letter, rtype = NEEDS[interaction]
    rights = set().union(*(ROLE_RIGHTS[r] for r in principal["roles"])) if principal["roles"] else set()
    if right not in rights:
        return 403, False
    if "SmartUser" not in principal["roles"]:
        return success(interaction), True
    gs = grants(principal["scope"])
    code_matches = lambda q: q == f"code={LOINC}"  # every Observation here has that code
    if letter is not None:
        covering = [g for g in gs if g[1] in (rtype, "*") and letter in g[2]]
        if not covering:
            return 403, False
    if interaction in ("create", "update", "patch", "delete", "transaction"):
        # A write must stay inside the compartment for patient/ grants; granular grants
        # do not allow writes.
        ok = any(not g[3] and (g[0] != "patient" or inside) for g in covering)
        return (success(interaction), True) if ok else (403, False)
    read_letter = "s" if interaction in ("search", "search-condition", "sql", "run", "flight") else "r"
    seen = any(admits(g, inside, code_matches) for g in gs if g[1] in (rtype, "*") and read_letter in g[2])
    if interaction in ("read", "vread", "history", "everything"):
        return (200, True) if seen else (404, False)
    return 200, seen


def success(interaction):
    return {"create": 201, "delete": 204}.get(interaction, 200)


# ---------------------------------------------------------------- the server
def token(key, roles=(), scope="", patient=None, exp_in=600, kid=KID):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "matrix", "iat": now, "exp": now + exp_in,
              "scope": scope, "roles": list(roles), "client_id": "matrix"}
    if patient:
        claims["patient"] = patient
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def b64(n):
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authz")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    (tmp / "jwks.json").write_text(json.dumps({"keys": [
        {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig", "n": b64(pub.n), "e": b64(pub.e)}]}))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    p, http, grpc = serve(tmp / "data", "--auth", "smart", "--issuer", ISSUER, "--jwks", str(tmp / "jwks.json"),
                          "--audience", AUDIENCE)
    admin = token(pem, ["Contributor", "Analyst"])
    s = requests.Session()

    def put(r):
        resp = s.put(f"{http}/{r['resourceType']}/{r['id']}", json=r, headers={"Authorization": f"Bearer {admin}"})
        assert resp.status_code in (200, 201), resp.text

    code = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    for p_id in ("A", "B"):
        put({"resourceType": "Patient", "id": p_id, "name": [{"family": f"Family{p_id}"}]})
        put({"resourceType": "Observation", "id": f"o{p_id}", "status": "final", "code": code,
             "subject": {"reference": f"Patient/{p_id}"}})
        put({"resourceType": "Condition", "id": f"c{p_id}", "subject": {"reference": f"Patient/{p_id}"}})
    yield {"http": http, "grpc": grpc, "pem": pem, "admin": admin, "session": s, "log": p.log_path}
    stop(p)


PRINCIPALS = [
    {"name": "Reader", "roles": ["Reader"], "scope": ""},
    {"name": "Writer", "roles": ["Writer"], "scope": ""},
    {"name": "Writer, scopes ignored without SmartUser", "roles": ["Writer"], "scope": "patient/*.rs", "patient": "A"},
    {"name": "Analyst", "roles": ["Analyst"], "scope": ""},
    {"name": "Contributor", "roles": ["Contributor"], "scope": ""},
    {"name": "Exporter", "roles": ["Exporter"], "scope": ""},
    {"name": "no role", "roles": [], "scope": "user/*.cruds"},
    {"name": "v1 patient read", "roles": ["SmartUser"], "scope": "patient/*.read", "patient": "A"},
    {"name": "v1 user write", "roles": ["SmartUser"], "scope": "user/*.write"},
    {"name": "v2 patient cruds", "roles": ["SmartUser"], "scope": "patient/*.cruds", "patient": "A"},
    {"name": "v2 patient Observation rs", "roles": ["SmartUser"], "scope": "patient/Observation.rs", "patient": "A"},
    {"name": "v2 patient rs + Analyst", "roles": ["SmartUser", "Analyst"], "scope": "patient/*.rs", "patient": "A"},
    {"name": "v2 user cruds", "roles": ["SmartUser"], "scope": "user/*.cruds"},
    {"name": "v2 user Observation r", "roles": ["SmartUser"], "scope": "user/Observation.r"},
    {"name": "v2 system rs + Analyst", "roles": ["SmartUser", "Analyst"], "scope": "system/*.rs"},
    {"name": "granular patient, matching code", "roles": ["SmartUser", "Analyst"],
     "scope": f"patient/Observation.rs?code={LOINC}", "patient": "A"},
    {"name": "granular user, no such code", "roles": ["SmartUser", "Analyst"],
     "scope": "user/Observation.rs?code=http://loinc.org|0000-0 user/Patient.r"},
    {"name": "expired", "roles": ["Contributor"], "scope": "", "refused": "expired"},
    {"name": "unknown kid", "roles": ["Contributor"], "scope": "", "refused": "kid"},
]


def principal_token(server, pr):
    if pr.get("refused") == "expired":
        return token(server["pem"], pr["roles"], pr["scope"], exp_in=-3600)
    kid = "not-in-the-jwks" if pr.get("refused") == "kid" else KID
    return token(server["pem"], pr["roles"], pr["scope"], pr.get("patient"), kid=kid)


def observation(patient, oid=None):
    r = {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": f"Patient/{patient}"}}
    if oid:
        r["id"] = oid
    return r


def perform(server, tok, interaction, inside):
    """Runs one case; returns (status, visible) as the server answered."""
    http, s = server["http"], server["session"]
    p = "A" if inside else "B"
    oid = f"o{p}"
    h = {"Authorization": f"Bearer {tok}"}
    found = lambda r: (r.status_code, r.status_code == 200 and r.json().get("resourceType") != "OperationOutcome")
    entries = lambda r: (r.status_code, r.status_code == 200 and any(
        e["resource"]["resourceType"] != "OperationOutcome" for e in r.json().get("entry", [])))
    if interaction == "read":
        return found(s.get(f"{http}/Observation/{oid}", headers=h))
    if interaction == "vread":
        return found(s.get(f"{http}/Observation/{oid}/_history/1", headers=h))
    if interaction == "history":
        return entries(s.get(f"{http}/Observation/{oid}/_history", headers=h))
    if interaction == "search":
        return entries(s.get(f"{http}/Observation", params={"_id": oid}, headers=h))
    if interaction == "search-condition":
        return entries(s.get(f"{http}/Condition", params={"_id": f"c{p}"}, headers=h))
    if interaction == "everything":
        return entries(s.get(f"{http}/Patient/{p}/$everything", headers=h))
    if interaction == "create":
        return s.post(f"{http}/Observation", json=observation(p), headers=h).status_code, True
    if interaction == "update":
        return s.put(f"{http}/Observation/{oid}", json=observation(p, oid), headers=h).status_code, True
    if interaction == "patch":
        patch = [{"op": "replace", "path": "/status", "value": "final"}]
        r = s.patch(f"{http}/Observation/{oid}", data=json.dumps(patch),
                    headers={**h, "Content-Type": "application/json-patch+json"})
        return r.status_code, True
    if interaction == "delete":
        fresh = f"del-{uuid.uuid4().hex[:12]}"
        made = s.put(f"{http}/Observation/{fresh}", json=observation(p, fresh),
                     headers={"Authorization": f"Bearer {server['admin']}"})
        assert made.status_code == 201, made.text
        return s.delete(f"{http}/Observation/{fresh}", headers=h).status_code, True
    if interaction == "transaction":
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": observation(p)}]}
        return s.post(http, json=bundle, headers=h).status_code, True
    sql = f"SELECT count(*) AS n FROM observation WHERE id = '{oid}'"
    if interaction == "sql":
        r = s.post(f"{http}/$sql", data=sql, headers={**h, "Content-Type": "application/sql"})
        return r.status_code, r.status_code == 200 and r.json()[0]["n"] == 1
    if interaction == "run":
        view = {"resourceType": "ViewDefinition", "resource": "Observation", "status": "active",
                "select": [{"column": [{"name": "id", "path": "id"}]}], "where": [{"path": f"id = '{oid}'"}]}
        params = {"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": view}]}
        r = s.post(f"{http}/ViewDefinition/$run", json=params, headers=h)
        return r.status_code, r.status_code == 200 and len(r.json()) == 1
    if interaction == "flight":
        try:
            with flight_sql.connect(server["grpc"], db_kwargs={
                    adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {tok}"}) as conn:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return 200, cur.fetchall()[0][0] == 1
        except adbc_driver_manager.Error as e:
            text = str(e)
            return (401 if "UNAUTHENTICATED" in text or "Unauthenticated" in text else
                    403 if "PERMISSION_DENIED" in text or "PermissionDenied" in text else 500), False
    raise AssertionError(interaction)


CASES = list(itertools.product(range(len(PRINCIPALS)), NEEDS, (True, False)))


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 300, len(CASES)


def test_authorisation_matrix(server):
    """Every case answers what the oracle expects: status, and for reads, searches and SQL
    whether the target was visible. All cases run; the failures are listed together."""
    unexpected = []
    tokens = {i: principal_token(server, pr) for i, pr in enumerate(PRINCIPALS)}
    for i, interaction, inside in CASES:
        pr = PRINCIPALS[i]
        want = expected(pr, interaction, inside)
        try:
            got = perform(server, tokens[i], interaction, inside)
        except requests.ConnectionError as e:
            log = server["log"].read_text()[-4000:]
            raise AssertionError(f"{pr['name']} / {interaction} / inside={inside}: {e}\nserver log:\n{log}") from e
        if interaction in ("create", "update", "patch", "delete", "transaction"):
            got, want = got[0], want[0]
        if got != want:
            unexpected.append(f"{pr['name']} / {interaction} / {'inside' if inside else 'outside'}: "
                              f"expected {want}, got {got}")
    assert not unexpected, f"{len(unexpected)} of {len(CASES)} unexpected:\n" + "\n".join(unexpected)


def test_requests_client_reads_with_a_bearer_token(server):
    """A plain `requests` client: the SMART discovery document without a token, then a
    search with one."""
    http = server["http"]
    conf = requests.get(f"{http}/.well-known/smart-configuration")
    assert conf.status_code == 200 and conf.headers["content-type"] == "application/json"
    assert conf.json()["token_endpoint"].startswith("https://")
    r = requests.get(f"{http}/Patient", params={"_total": "accurate"},
                     headers={"Authorization": f"Bearer {server['admin']}"})
    assert r.status_code == 200 and r.json()["total"] == 2, r.text
    denied = requests.get(f"{http}/Patient")
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
