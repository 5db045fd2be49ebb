"""Crash harness: the real `fhirlake serve` killed with SIGKILL under concurrent writes.

Each trial drives writer threads against a running server -- single creates, If-Match
updates of resources each thread owns, and 4-entry transactions (a Patient and three
Observations tagged alike) -- kills the process with SIGKILL at a random moment, restarts
it on the same storage root and checks:

* every acknowledged write is present, with its version (creates are version 1; an
  owned resource is at its last acknowledged version, or one more when a write to it was
  in flight at the kill and that write's content is what is stored);
* no transaction is half applied (a tag has 0 or 4 resources; acknowledged tags have 4);
* no resource has a duplicate or missing version in its history;
* the Delta tables open cleanly in Python `deltalake`.

Every other trial runs with flushes to Delta every 10 ms, so its kill lands inside flush
rounds (the other trials flush every 5 s: their kill finds acknowledged writes that only
the serving store holds). State accumulates across trials, so later restarts recover
bigger tables. CI runs 10
trials; `FHIRLAKE_CRASH_TRIALS=100 pytest tests/python/test_crash.py` is the longer mode
(`FHIRLAKE_CRASH_SEED` fixes the random kill moments)."""

import http.client
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable

from fhirlake_proc import serve, stop

TRIALS = int(os.environ.get("FHIRLAKE_CRASH_TRIALS", "10"))
SEED = int(os.environ.get("FHIRLAKE_CRASH_SEED", str(random.randrange(1 << 30))))


class Client:
    def __init__(self, base):
        host = base.split("//", 1)[1].split("/", 1)[0]
        self.conn = http.client.HTTPConnection(host, timeout=30)

    def call(self, method, path, body=None, headers=None):
        h = {"Content-Type": "application/fhir+json"} if body is not None else {}
        h.update(headers or {})
        self.conn.request(method, "/fhir" + path, body=None if body is None else json.dumps(body), headers=h)
        r = self.conn.getresponse()
        return r.status, r.read()


class Ledger:
    """What the clients were told (acknowledged) and what was in flight at the kill."""

    def __init__(self):
        self.lock = threading.Lock()
        self.created = {}  # id -> marker
        self.owned = {}  # id -> (acked version, acked marker)
        self.in_doubt = {}  # id -> marker of a write that got no answer
        self.tx_acked = {}  # tag -> {type: [ids]}
        self.tx_sent = set()
        self.errors = []


def guarded(target, ledger, *args):
    """Runs a writer loop; an unexpected answer is recorded (threads cannot fail a test)."""
    try:
        target(*args)
    except Exception as e:  # noqa: BLE001 - reported by the test
        with ledger.lock:
            ledger.errors.append(repr(e))


def creator(base, ledger, stop_at, n):
    c = Client(base)
    while time.time() < stop_at:
        marker = f"c-{uuid.uuid4()}"
        try:
            status, body = c.call("POST", "/Patient", {"resourceType": "Patient", "name": [{"family": marker}]})
        except (OSError, http.client.HTTPException):
            return
        assert status == 201, body
        with ledger.lock:
            ledger.created[json.loads(body)["id"]] = marker


def updater(base, ledger, stop_at, ids):
    c = Client(base)
    while time.time() < stop_at:
        rid = random.choice(ids)
        with ledger.lock:
            version, _ = ledger.owned.get(rid, (0, None))
        marker = f"u-{uuid.uuid4()}"
        body = {"resourceType": "Patient", "id": rid, "name": [{"family": marker}]}
        headers = {"If-Match": f'W/"{version}"'} if version else {"If-None-Match": "*"}
        with ledger.lock:
            ledger.in_doubt[rid] = marker
        try:
            status, resp = c.call("PUT", f"/Patient/{rid}", body, headers)
        except (OSError, http.client.HTTPException):
            return
        assert status in (200, 201), (status, resp)
        with ledger.lock:
            ledger.owned[rid] = (int(json.loads(resp)["meta"]["versionId"]), marker)
            del ledger.in_doubt[rid]


def transactor(base, ledger, stop_at):
    c = Client(base)
    while time.time() < stop_at:
        tag = f"t-{uuid.uuid4()}"
        pat = f"urn:uuid:{uuid.uuid4()}"
        entries = [{"fullUrl": pat, "resource": {"resourceType": "Patient", "name": [{"family": tag}]},
                    "request": {"method": "POST", "url": "Patient"}}]
        for k in range(3):
            entries.append({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": tag},
                                         "subject": {"reference": pat}, "valueInteger": k},
                            "request": {"method": "POST", "url": "Observation"}})
        with ledger.lock:
            ledger.tx_sent.add(tag)
        try:
            status, resp = c.call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except (OSError, http.client.HTTPException):
            return
        assert status == 200, resp
        ids = defaultdict(list)
        for e in json.loads(resp)["entry"]:
            ids[e["resource"]["resourceType"]].append(e["resource"]["id"])
        with ledger.lock:
            ledger.tx_acked[tag] = ids


def table(data, kind, rt):
    return DeltaTable(str(data / kind / rt)).to_pyarrow_table(columns=["id", "_version_id", "_raw"] + (
        ["_deleted"] if kind == "history" else []))


def family(raw):
    return json.loads(raw)["name"][0]["family"]


def code_text(raw):
    return json.loads(raw)["code"]["text"]


def check(data, ledger, base):
    patients = table(data, "resources", "Patient")
    current = {i: (v, family(r)) for i, v, r in zip(patients["id"].to_pylist(), patients["_version_id"].to_pylist(),
                                                   patients["_raw"].to_pylist())}
    # Acknowledged creates: present at version 1 with their content.
    for rid, marker in ledger.created.items():
        assert current.get(rid) == (1, marker), f"acknowledged create Patient/{rid} is {current.get(rid)}"
    # Owned resources: the last acknowledged version, or the in-flight write on top of it.
    for rid in set(ledger.owned) | set(ledger.in_doubt):
        acked = ledger.owned.get(rid)
        got = current.get(rid)
        doubt = ledger.in_doubt.get(rid)
        ok = got == acked or (doubt is not None and got == ((acked[0] if acked else 0) + 1, doubt))
        assert ok, f"Patient/{rid}: stored {got}, acknowledged {acked}, in flight {doubt}"
        if got is not None:
            ledger.owned[rid] = got
    ledger.in_doubt.clear()
    # Transactions: all or nothing.
    tagged = Counter(family(r) for r in patients["_raw"].to_pylist() if family(r).startswith("t-"))
    obs = table(data, "resources", "Observation")
    tagged_obs = Counter(code_text(r) for r in obs["_raw"].to_pylist())
    for tag in ledger.tx_sent:
        n = (tagged[tag], tagged_obs[tag])
        assert n in ((0, 0), (1, 3)), f"transaction {tag} half applied: {n}"
        if tag in ledger.tx_acked:
            assert n == (1, 3), f"acknowledged transaction {tag} lost: {n}"
            ids = ledger.tx_acked[tag]
            assert ids["Patient"][0] in current
    # Histories: versions 1..n, each once; the current table holds the latest.
    for rt in ("Patient", "Observation"):
        h = table(data, "history", rt)
        versions = defaultdict(list)
        for i, v in zip(h["id"].to_pylist(), h["_version_id"].to_pylist()):
            versions[i].append(v)
        for i, vs in versions.items():
            assert sorted(vs) == list(range(1, len(vs) + 1)), f"{rt}/{i} history versions {sorted(vs)}"
        cur = table(data, "resources", rt)
        for i, v in zip(cur["id"].to_pylist(), cur["_version_id"].to_pylist()):
            assert v == len(versions[i]), f"{rt}/{i}: current version {v}, history has {len(versions[i])}"
        assert pc.sum(pc.equal(h["_deleted"], True)).as_py() in (None, 0)
    # And through the API: a sample of acknowledged writes reads back with its ETag.
    c = Client(base)
    for rid in random.sample(sorted(ledger.created), min(20, len(ledger.created))):
        status, body = c.call("GET", f"/Patient/{rid}")
        assert status == 200 and family(body) == ledger.created[rid], (rid, status, body)


def test_sigkill_under_concurrent_writes_loses_no_acknowledged_write(tmp_path: Path):
    rng = random.Random(SEED)
    random.seed(SEED)
    data = tmp_path / "data"
    ledger = Ledger()
    owned_ids = [[f"own-{t}-{k}" for k in range(6)] for t in range(2)]
    flush = ["--flush-interval", "10ms"]
    p, base, _ = serve(data, *flush)
    try:
        for trial in range(TRIALS):
            stop_at = time.time() + 30
            def writer(target, *args):
                return threading.Thread(target=guarded, args=(target, ledger, base, ledger, stop_at) + args)

            threads = [writer(creator, i) for i in range(3)]
            threads += [writer(updater, ids) for ids in owned_ids]
            threads += [writer(transactor) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 2.5))
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            for t in threads:
                t.join(timeout=60)
                assert not t.is_alive()
            assert not ledger.errors, ledger.errors
            p, base, _ = serve(data, *(flush if trial % 2 else []))
            check(data, ledger, base)
            print(f"trial {trial}: {len(ledger.created)} creates, {len(ledger.tx_acked)} transactions, "
                  f"{len(ledger.owned)} owned resources acknowledged so far (seed {SEED})")
        assert len(ledger.created) > 0 and len(ledger.tx_acked) > 0 and len(ledger.owned) > 0
    finally:
        stop(p)
