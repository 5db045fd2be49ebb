//! The `fhirlake` binary: import of the Synthea fixtures, SQL, lease, exit codes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::fixtures;

fn fhirlake() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fhirlake"));
    c.env("RUST_LOG", "warn");
    c
}

fn sql_json(data: &Path, query: &str) -> Vec<serde_json::Value> {
    let out = fhirlake().args(["sql", "--data"]).arg(data).args(["--format", "json", query]).output().unwrap();
    assert!(out.status.success(), "{query}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn counts(data: &Path, types: &[String]) -> BTreeMap<String, u64> {
    types
        .iter()
        .map(|t| {
            let rows = sql_json(data, &format!("SELECT count(*) AS n FROM \"{t}\""));
            (t.clone(), rows[0]["n"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn synthea_bundles_import_with_counts_from_counts_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let errors = dir.path().join("errors.ndjson");
    let out = fhirlake()
        .args(["import", "--no-progress", "--data"])
        .arg(&data)
        .arg("--errors")
        .arg(&errors)
        .arg(fixtures().join("synthea/bundles"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resources/s"), "summary: {stdout}");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("synthea/COUNTS.json")).unwrap()).unwrap();
    let expected: BTreeMap<String, u64> = expected["resourceCountsTotal"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let types: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(counts(&data, &types), expected);
    // references were rewritten from urn:uuid to Type/id, so every Observation has an owner
    let orphans = sql_json(&data, "SELECT count(*) AS n FROM observation WHERE _patient IS NULL");
    assert_eq!(orphans[0]["n"], serde_json::json!(0));
    let joined =
        sql_json(&data, "SELECT count(*) AS n FROM observation o JOIN patient p ON o.subject._target_id = p.id");
    assert_eq!(joined[0]["n"].as_u64(), expected.get("Observation").copied());
}

#[test]
fn synthea_ndjson_keeps_ids_and_reimport_makes_no_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ndjson = fixtures().join("synthea/ndjson");
    let mut expected = BTreeMap::new();
    let mut genders: BTreeMap<String, u64> = BTreeMap::new();
    let mut sample_ids = Vec::new();
    for f in std::fs::read_dir(&ndjson).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        let mut n = 0;
        for line in BufReader::new(std::fs::File::open(&p).unwrap()).lines() {
            let line = line.unwrap();
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let rt = v["resourceType"].as_str().unwrap().to_string();
            if n == 0 {
                sample_ids.push((rt.clone(), v["id"].as_str().unwrap().to_string()));
            }
            if rt == "Patient" {
                *genders.entry(v["gender"].as_str().unwrap_or("").to_string()).or_default() += 1;
            }
            *expected.entry(rt).or_insert(0u64) += 1;
            n += 1;
        }
    }
    let run = || {
        fhirlake()
            .args(["import", "--no-progress", "--data"])
            .arg(&data)
            .arg("--errors")
            .arg(dir.path().join("errors.ndjson"))
            .arg(&ndjson)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let types: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(counts(&data, &types), expected);
    for (rt, id) in &sample_ids {
        let rows = sql_json(&data, &format!("SELECT id FROM \"{rt}\" WHERE id = '{id}'"));
        assert_eq!(rows.len(), 1, "{rt}/{id} kept its id");
    }
    let g = sql_json(&data, "SELECT gender, count(*) AS n FROM patient GROUP BY gender ORDER BY gender");
    let got: BTreeMap<String, u64> =
        g.iter().map(|r| (r["gender"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap())).collect();
    assert_eq!(got, genders);
    // the same data again: nothing is re-versioned
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let total: u64 = expected.values().sum();
    assert!(stdout.contains(&format!("(0 new versions, {total} unchanged)")), "{stdout}");
    let versions = sql_json(&data, "SELECT max(_version_id) AS v FROM patient_history");
    assert_eq!(versions[0]["v"], serde_json::json!(1));
}

#[test]
fn rejected_resources_go_to_the_error_file_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.ndjson");
    std::fs::write(
        &input,
        "{\"resourceType\":\"Patient\",\"id\":\"ok\"}\n{\"resourceType\":\"Patient\",\"gender\":\"x\"}\nnot json\n",
    )
    .unwrap();
    let errors = dir.path().join("errors.ndjson");
    let out = fhirlake()
        .args(["import", "--no-progress", "--data"])
        .arg(dir.path().join("data"))
        .arg("--errors")
        .arg(&errors)
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&errors).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["source"].as_str().unwrap().ends_with(":2"));
    assert_eq!(lines[0]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(lines[0]["outcome"]["issue"][0]["expression"][0], "Patient.gender");
    let n = sql_json(&dir.path().join("data"), "SELECT count(*) AS n FROM patient");
    assert_eq!(n[0]["n"], serde_json::json!(1));
}

#[test]
fn import_refuses_while_a_server_holds_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, addr) = serve(&data);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let input = dir.path().join("one.ndjson");
    std::fs::write(&input, "{\"resourceType\":\"Patient\",\"id\":\"x\"}\n").unwrap();
    let out = fhirlake().args(["import", "--no-progress", "--data"]).arg(&data).arg(&input).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("held by fhirlake serve"), "{stderr}");
    // SQL reads beside the server
    let out = fhirlake().args(["sql", "--data"]).arg(&data).arg("SELECT 1 AS one").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SIGTERM: the server drains, releases the lease and exits 0
    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let out = fhirlake().args(["import", "--no-progress", "--data"]).arg(&data).arg(&input).output().unwrap();
    assert!(out.status.success(), "after the server stopped: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `fhirlake serve` on a free port; returns the child and its base URL host:port.
fn serve(data: &Path) -> (std::process::Child, String) {
    let (server, addr, _) = serve_with(fhirlake().args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data));
    (server, addr)
}

/// Starts a `serve` command line; returns the child, its host:port and its first line.
fn serve_with(command: &mut Command) -> (std::process::Child, String, String) {
    let mut server = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    (server, addr, line)
}

/// A minimal HTTP/1.1 exchange over a fresh connection: (status, headers+body text).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp)
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, addr) = serve(&data);
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, resp) = http(
            &addr,
            "POST",
            "/fhir/Patient",
            &format!(r#"{{"resourceType":"Patient","name":[{{"family":"K{i}"}}]}}"#),
        );
        assert_eq!(status, 201, "{resp}");
        let loc = resp.lines().find(|l| l.to_ascii_lowercase().starts_with("location:")).unwrap();
        ids.push(loc.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_string());
    }
    // no graceful shutdown: the lease and possibly a journal entry are left behind
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, addr) = serve(&data);
    for id in &ids {
        let (status, resp) = http(&addr, "GET", &format!("/fhir/Patient/{id}"), "");
        assert_eq!(status, 200, "acknowledged Patient/{id} lost after kill -9: {resp}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// The ETag version of a response (`W/"3"` → 3).
fn etag_version(resp: &str) -> Option<u64> {
    let line = resp.lines().find(|l| l.to_ascii_lowercase().starts_with("etag:"))?;
    line.split('"').nth(1)?.parse().ok()
}

/// Creates and updates Patients against `addr` until the server dies or `limit` writes are
/// acknowledged; returns every acknowledged (id, version).
fn write_until_killed(addr: String, limit: usize, tag: usize) -> Vec<(String, u64)> {
    let mut acked: Vec<(String, u64)> = Vec::new();
    let try_http =
        |method: &str, path: &str, body: &str| std::panic::catch_unwind(|| http(&addr, method, path, body)).ok();
    for i in 0..limit {
        let reply = if i % 3 == 2 && !acked.is_empty() {
            let id = acked[i % acked.len()].0.clone();
            let body = format!(r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"U{tag}-{i}"}}]}}"#);
            try_http("PUT", &format!("/fhir/Patient/{id}"), &body).map(|r| (id, r))
        } else {
            let body = format!(r#"{{"resourceType":"Patient","name":[{{"family":"K{tag}-{i}"}}]}}"#);
            try_http("POST", "/fhir/Patient", &body).and_then(|(status, resp)| {
                let loc = resp.lines().find(|l| l.to_ascii_lowercase().starts_with("location:"))?;
                let id = loc.split("/Patient/").nth(1)?.split('/').next()?.trim().to_string();
                Some((id, (status, resp)))
            })
        };
        match reply {
            Some((id, (200 | 201, resp))) => acked.push((id, etag_version(&resp).expect("etag"))),
            _ => break,
        }
    }
    acked
}

/// kill -9 at random points of a write stream with flushes running every few
/// milliseconds (so kills land inside flush rounds): after each restart every
/// acknowledged write is read back, and the Delta tables (read at the watermark by
/// `fhirlake sql --data`) equal the serving store: one live row per resource at its
/// latest version, every version once in history.
#[test]
fn kills_during_flush_rounds_lose_nothing_and_delta_equals_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        let (server, addr, _) = serve_with(
            fhirlake().args(["serve", "--listen", "127.0.0.1:0", "--flush-interval", "5ms", "--data"]).arg(&data),
        );
        (server, addr)
    };
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    for trial in 0..4 {
        let (mut server, addr) = start();
        for (id, v) in &latest {
            let (status, resp) = http(&addr, "GET", &format!("/fhir/Patient/{id}"), "");
            assert_eq!(status, 200, "trial {trial}: acknowledged Patient/{id} lost after kill -9: {resp}");
            assert!(etag_version(&resp).unwrap() >= *v, "trial {trial}: Patient/{id} went back a version");
        }
        let writer = {
            let addr = addr.clone();
            std::thread::spawn(move || write_until_killed(addr, 400, trial))
        };
        std::thread::sleep(std::time::Duration::from_millis(150 + 90 * trial as u64));
        server.kill().unwrap();
        server.wait().unwrap();
        for (id, v) in writer.join().unwrap() {
            let slot = latest.entry(id).or_insert(0);
            *slot = (*slot).max(v);
        }
    }
    assert!(latest.len() > 20, "too few writes to mean anything: {}", latest.len());
    // Recovery flushed what the tables lacked before the server answers.
    let (mut server, addr) = start();
    let rows = sql_json(&data, "SELECT id, _version_id AS v FROM patient");
    let in_delta: BTreeMap<String, u64> =
        rows.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r["v"].as_u64().unwrap())).collect();
    assert_eq!(in_delta.len(), rows.len(), "one live row per resource");
    for (id, v) in &latest {
        let (status, resp) = http(&addr, "GET", &format!("/fhir/Patient/{id}"), "");
        assert_eq!(status, 200, "{resp}");
        let stored = etag_version(&resp).unwrap();
        assert!(stored >= *v);
        assert_eq!(in_delta.get(id), Some(&stored), "Patient/{id}: Delta and the store disagree");
    }
    let versions: u64 = in_delta.values().sum();
    let history = sql_json(
        &data,
        "SELECT count(*) AS n, count(DISTINCT concat(id, '/', CAST(_version_id AS VARCHAR))) AS d FROM history.patient",
    );
    assert_eq!(history[0]["n"].as_u64(), Some(versions), "every version once in history");
    assert_eq!(history[0]["d"].as_u64(), Some(versions));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn gzipped_ndjson_imports() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("patients.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&input).unwrap(), flate2::Compression::fast());
    for i in 0..50 {
        writeln!(gz, r#"{{"resourceType":"Patient","id":"gz{i}","gender":"unknown"}}"#).unwrap();
    }
    gz.finish().unwrap();
    let data = dir.path().join("data");
    let out = fhirlake().args(["import", "--no-progress", "--data"]).arg(&data).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = sql_json(&data, "SELECT count(*) AS n FROM patient WHERE gender = 'unknown'");
    assert_eq!(n[0]["n"], serde_json::json!(50));
}

#[test]
fn compact_merges_small_files_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Six imports: six commits, so six small files per table.
    for k in 0..6 {
        let input = dir.path().join(format!("p{k}.ndjson"));
        let lines: Vec<String> =
            (0..20).map(|i| format!(r#"{{"resourceType":"Patient","id":"c{k}-{i}","gender":"female"}}"#)).collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let out = fhirlake().args(["import", "--no-progress", "--data"]).arg(&data).arg(&input).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let before = sql_json(&data, "SELECT id, _version_id, _raw FROM patient ORDER BY id");
    let out = fhirlake()
        .args(["compact", "--min-small-files", "2", "--retention-hours", "1", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resources/Patient: 6 -> 1 files, 120 rows rewritten"), "{stdout}");
    assert!(stdout.contains("history/Patient: 6 -> 1 files"), "{stdout}");
    assert_eq!(sql_json(&data, "SELECT id, _version_id, _raw FROM patient ORDER BY id"), before);
    // Nothing left to do the second time.
    let out = fhirlake().args(["compact", "--min-small-files", "2", "--data"]).arg(&data).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("resources/Patient: 1 -> 1 files"));
}

/// `serve --config FILE`: the file's settings take effect, a flag overrides the file, an
/// unknown key or a bad value is a clear error (exit 2) naming it, and `config print`
/// names each setting's source.
#[test]
fn serve_reads_a_toml_config_under_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fhirlake.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nbase-path = \"/api\"\nsearch-default-count = 2\n\
             search-max-count = 3\nmax-resource-bytes = \"2KiB\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let (mut server, addr, line) =
        serve_with(fhirlake().arg("serve").arg("--config").arg(&config).args(["--search-max-count", "4"]));
    assert!(line.contains("/api"), "the base path comes from the file: {line}");
    assert!(line.contains(data.to_str().unwrap()), "the data root comes from the file: {line}");
    for _ in 0..5 {
        assert_eq!(http(&addr, "POST", "/api/Patient", r#"{"resourceType":"Patient"}"#).0, 201);
    }
    let entries = |path: &str| {
        let (status, resp) = http(&addr, "GET", path, "");
        assert_eq!(status, 200, "{resp}");
        resp.matches(r#""mode":"match""#).count()
    };
    assert_eq!(entries("/api/Patient"), 2, "search-default-count from the file");
    assert_eq!(entries("/api/Patient?_count=10"), 4, "the flag --search-max-count 4 overrides the file's 3");
    let big = format!(r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#, "x".repeat(3000));
    assert_eq!(http(&addr, "POST", "/api/Patient", &big).0, 413, "max-resource-bytes = 2KiB from the file");
    let pid = server.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(server.wait().unwrap().success());

    // One file serves every command: `compact` takes `data` from it and leaves the serve
    // settings (listen, search-*, max-resource-bytes) to `serve`.
    let out = fhirlake().args(["compact", "--config"]).arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resources/Patient"), "compact ran on the file's data root: {stdout}");

    let out = fhirlake().args(["config", "print", "--config"]).arg(&config).args(["--search-max-count", "4"]).output();
    let text = String::from_utf8(out.unwrap().stdout).unwrap();
    assert!(text.contains(&format!("search-default-count = 2  # file {}", config.display())), "{text}");
    assert!(text.contains("search-max-count = 4  # flag"), "{text}");
    assert!(text.contains("sql-max-rows = 10000000  # default"), "{text}");

    for (toml, needle) in [
        ("serach-default-count = 5\n", "unknown key 'serach-default-count'"),
        ("search-default-count = \"many\"\n", "'many'"),
        ("sql-timeout = \"soon\"\n", "'soon' is not a duration"),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = fhirlake().args(["serve", "--config"]).arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(needle) && stderr.contains("fhirlake.toml"), "{toml}: {stderr}");
    }
}

/// `serve` refuses to expose data without authentication off loopback; the three-command
/// path (keygen, serve with a TOML config naming the issuer and JWKS, token) serves an
/// authenticated instance.
#[test]
fn serve_refuses_no_auth_off_loopback_and_runs_with_a_dev_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for auth in [None, Some("none")] {
        let mut c = fhirlake();
        c.args(["serve", "--listen", "0.0.0.0:0", "--data"]).arg(&data);
        if let Some(a) = auth {
            c.args(["--auth", a]);
        }
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{auth:?}: must refuse");
        assert!(stderr.contains("without authentication") && stderr.contains("--auth smart"), "{stderr}");
    }
    let out = fhirlake().args(["serve", "--listen", "0.0.0.0:0", "--auth", "smart", "--data"]).arg(&data).output();
    let stderr = String::from_utf8_lossy(&out.unwrap().stderr).into_owned();
    assert!(stderr.contains("--public-url"), "the audience must be the URL clients use: {stderr}");

    let keys = dir.path().join("keys");
    let out = fhirlake().args(["auth", "keygen", "--out"]).arg(&keys).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("fhirlake.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nauth = \"smart\"\nissuer = [\"https://issuer.test\"]\n\
             jwks = [{:?}]\naudience = \"https://fhirlake.test/fhir\"\n",
            data.to_str().unwrap(),
            keys.join("jwks.json").to_str().unwrap()
        ),
    )
    .unwrap();
    let (mut server, addr, _) = serve_with(fhirlake().arg("serve").arg("--config").arg(&config));
    let token = |roles: &str| {
        let out = fhirlake()
            .args(["auth", "token", "--key"])
            .arg(&keys)
            .args(["--issuer", "https://issuer.test", "--audience", "https://fhirlake.test/fhir", "--roles", roles])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let with_token = |t: &str, method: &str, path: &str, body: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/fhir+json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
    };
    assert_eq!(http(&addr, "GET", "/fhir/Patient", "").0, 401, "no token");
    // A refused request's body is drained: the client's keep-alive connection serves the
    // next request, even when the body arrives after the headers (as HTTP clients send it).
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let body = r#"{"resourceType":"Patient"}"#;
        write!(
            s,
            "POST /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let second = format!("{body}GET /fhir/metadata HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let sent = s.write_all(second.as_bytes());
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let statuses: Vec<&str> = resp.match_indices("HTTP/1.1 ").map(|(i, _)| &resp[i + 9..i + 12]).collect();
        assert!(sent.is_ok(), "the connection was closed under the client");
        assert_eq!(statuses, vec!["401", "200"], "{}", &resp[..resp.len().min(400)]);
    }
    assert_eq!(http(&addr, "GET", "/fhir/metadata", "").0, 200, "metadata is public");
    assert_eq!(with_token(&token("Writer"), "POST", "/fhir/Patient", r#"{"resourceType":"Patient"}"#), 201);
    assert_eq!(with_token(&token("Reader"), "POST", "/fhir/Patient", r#"{"resourceType":"Patient"}"#), 403);
    assert_eq!(with_token(&token("Reader"), "GET", "/fhir/Patient", ""), 200);
    let pid = server.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(server.wait().unwrap().success());
}
