"""Operations basics of the real `fhirlake serve`: `/metrics` parses as Prometheus (and
OpenMetrics) text and counts exactly the requests sent, `X-Request-Id` is echoed or made,
and `/health` says ready."""

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from fhirlake_proc import serve, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p, http, _ = serve(tmp_path_factory.mktemp("ops") / "data")
    yield http
    stop(p)


def call(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/fhir+json", **(headers or {})})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def scrape(base, accept=None):
    root = base.rsplit("/fhir", 1)[0]
    status, headers, text = call("GET", root + "/metrics", headers={"Accept": accept} if accept else {})
    assert status == 200
    return headers, text


def requests_by_label(families):
    got = {}
    for family in families:
        # Prometheus' parser names the counter family with `_total`, OpenMetrics' without.
        if family.name in ("fhirlake_http_requests", "fhirlake_http_requests_total"):
            assert family.type == "counter"
            for s in family.samples:
                if s.name == "fhirlake_http_requests_total":
                    key = (s.labels["interaction"], s.labels["status"])
                    got[key] = got.get(key, 0) + s.value
    return got


def test_metrics_count_every_request_sent(server):
    sent = {}

    def send(interaction, method, path, body=None):
        status, _, _ = call(method, server + path, body)
        sent[(interaction, str(status))] = sent.get((interaction, str(status)), 0) + 1
        return status

    for i in range(5):
        assert send("create", "POST", "/Patient", {"resourceType": "Patient", "gender": "female"}) == 201
    assert send("update", "PUT", "/Patient/p1", {"resourceType": "Patient", "id": "p1"}) == 201
    for _ in range(3):
        assert send("read", "GET", "/Patient/p1") == 200
    assert send("read", "GET", "/Patient/missing") == 404
    assert send("search-type", "GET", "/Patient?gender=female") == 200
    assert send("search-type", "GET", "/Patient?birthdate=notadate") == 400
    assert send("capabilities", "GET", "/metadata") == 200
    # /health and /metrics are not FHIR requests and are not counted.
    assert call("GET", server.rsplit("/fhir", 1)[0] + "/health")[0] == 200

    headers, text = scrape(server)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = requests_by_label(prometheus_families(text))
    assert got == sent
    assert sum(got.values()) == 13

    # The same registry as OpenMetrics, strictly parsed, with the writer's counters.
    headers, text = scrape(server, "application/openmetrics-text")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(text)}
    assert requests_by_label(families.values()) == sent
    commits = [s.value for s in families["fhirlake_group_commits"].samples if s.name.endswith("_total")]
    assert commits and commits[0] >= 1
    latency = families["fhirlake_http_request_duration_seconds"]
    counts = {s.labels["interaction"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts["read"] == 4 and counts["create"] == 5


def test_request_id_is_echoed_or_made(server):
    status, headers, _ = call("GET", server + "/metadata", headers={"X-Request-Id": "trace-42"})
    assert status == 200 and headers["x-request-id"] == "trace-42"
    _, headers, _ = call("GET", server + "/Patient/nope")
    made = headers["x-request-id"]
    assert len(made) == 36 and made.count("-") == 4
    _, headers2, _ = call("GET", server + "/Patient/nope")
    assert headers2["x-request-id"] != made


def test_health_is_ready(server):
    status, _, body = call("GET", server.rsplit("/fhir", 1)[0] + "/health")
    assert status == 200 and json.loads(body) == {"status": "ready"}
