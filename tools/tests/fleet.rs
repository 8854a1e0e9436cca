//! `deploy/local/fleet.sh` with the real HAProxy and nginx on loopback: completions, streams
//! and errors through each front behave as against one replica, streams arrive incrementally,
//! requests are routed by model, session affinity holds, and a SIGKILLed replica costs only
//! the requests in flight on it. Skipped, saying why, where HAProxy or nginx is not installed
//! (`.ci/run` installs both).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fleet_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/fleet.sh")
}

/// Whether `tool` is installed; says so when a test is skipped for want of it.
fn have(tool: &str, test: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("notice: {tool} is not installed; {test} through it is skipped");
    }
    found
}

/// A running fleet; brought down when dropped.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn up(args: &[&str], port: u16) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(fleet_sh())
            .arg("up")
            .args(["--port", &port.to_string()])
            .args(args)
            // A small KV cache each: one full context of the 124M model is 72 MB.
            .args(["--", "--kv-cache-mb", "80"])
            .env("FLEET_DIR", dir.path())
            .env("INFERNEO_BIN", env!("CARGO_BIN_EXE_inferneo"))
            .output()
            .unwrap();
        assert!(out.status.success(), "fleet.sh up {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Fleet { dir }
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("fleet.json")).unwrap()).unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(fleet_sh()).arg("down").env("FLEET_DIR", self.dir.path()).output();
    }
}

/// One HTTP/1.1 exchange; returns (status, lower-cased head, body).
fn exchange(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    c.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), rest.to_string())
}

fn tiny(dir: &Path, name: &str, seed: &str) -> String {
    let d = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_inferneo"))
        .args(["init", "--preset", "tiny", "--seed", seed, "--out", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    format!("{name}={}", d.display())
}

fn replica_metric(port: u64, series: &str) -> f64 {
    let (_, _, body) = exchange(port as u16, "GET", "/metrics", &[], "");
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Through each front: a completion equals the same request against one replica, a stream
/// arrives in pieces (its first chunk long before its last), an unknown model is the usual 404.
#[test]
fn completions_streams_and_errors_through_haproxy_and_nginx() {
    for (front, port) in [("haproxy", 18711), ("nginx", 18712)] {
        if !have(front, "the fleet test") {
            continue;
        }
        // The embedded 124M model, so a stream lasts long enough to see it arrive in pieces.
        let fleet = Fleet::up(&["--replicas", "2", "--front", front], port);
        let replica = fleet.state()["replicas"][0]["port"].as_u64().unwrap() as u16;
        let body = r#"{"model": "gpt2", "prompt": "Hello there", "max_tokens": 12, "temperature": 0}"#;
        let (s1, _, direct) = exchange(replica, "POST", "/v1/completions", &[], body);
        let (s2, _, fronted) = exchange(port, "POST", "/v1/completions", &[], body);
        let text = |b: &str| serde_json::from_str::<Value>(b).unwrap()["choices"][0]["text"].clone();
        assert_eq!((s1, s2), (200, 200), "{front}: {fronted}");
        assert_eq!(text(&direct), text(&fronted), "{front}");
        let (status, _, body) = exchange(port, "POST", "/v1/completions", &[], r#"{"model": "nope", "prompt": "x"}"#);
        assert_eq!(status, 404, "{front}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "model_not_found", "{front}");
        // A stream's chunks come as they are made: time the first and the last apart.
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"model": "gpt2", "prompt": "Hello", "max_tokens": 40, "stream": true}"#;
        write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let t0 = Instant::now();
        let (mut first, mut all, mut buf) = (None, Vec::new(), [0u8; 4096]);
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if first.is_none() && String::from_utf8_lossy(&all).contains("data: {") {
                first = Some(t0.elapsed());
            }
        }
        let last = t0.elapsed();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("data: [DONE]"), "{front}: {text}");
        let first = first.expect("a data chunk");
        assert!(first * 3 < last, "{front}: first chunk at {first:?}, end at {last:?}: buffered?");
    }
}

/// Two models on separate replicas behind one address: each model's requests reach only its
/// replicas (their request counters), and a session header keeps one replica.
#[test]
fn haproxy_routes_by_model_and_by_session() {
    if !have("haproxy", "the routing test") {
        return;
    }
    let models = tempfile::tempdir().unwrap();
    let (a, b) = (tiny(models.path(), "alpha", "1"), tiny(models.path(), "beta", "2"));
    let port = 18713;
    let fleet = Fleet::up(&["--replicas", "2", "--model", &a, "--model", &b], port);
    let state = fleet.state();
    let replicas = state["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 4);
    for i in 0..6 {
        let model = if i % 2 == 0 { "alpha" } else { "beta" };
        let body = format!(r#"{{"model": "{model}", "prompt": "x{i}", "max_tokens": 2}}"#);
        assert_eq!(exchange(port, "POST", "/v1/completions", &[], &body).0, 200);
    }
    for r in &replicas {
        let port = r["port"].as_u64().unwrap();
        let own = r["model"].as_str().unwrap();
        let other = if own == "alpha" { "beta" } else { "alpha" };
        let count = |m: &str| replica_metric(port, &format!("inferneo_requests_total{{model=\"{m}\",status=\"200\"}}"));
        assert_eq!(count(other), 0.0, "replica {port} ({own}) served {other}");
    }
    let served: f64 = replicas
        .iter()
        .map(|r| {
            let m = r["model"].as_str().unwrap();
            replica_metric(
                r["port"].as_u64().unwrap(),
                &format!("inferneo_requests_total{{model=\"{m}\",status=\"200\"}}"),
            )
        })
        .sum();
    assert_eq!(served, 6.0);
    // Affinity: one session's requests all land on one replica.
    let before: Vec<f64> = replicas
        .iter()
        .map(|r| {
            replica_metric(
                r["port"].as_u64().unwrap(),
                "inferneo_http_requests_total{route=\"/v1/completions\",status=\"200\"}",
            )
        })
        .collect();
    for i in 0..6 {
        let body = format!(r#"{{"model": "alpha", "prompt": "session turn {i}", "max_tokens": 2}}"#);
        assert_eq!(exchange(port, "POST", "/v1/completions", &[("X-Session-Id", "conversation-7")], &body).0, 200);
    }
    let grew: Vec<f64> = replicas
        .iter()
        .zip(&before)
        .map(|(r, b)| {
            replica_metric(
                r["port"].as_u64().unwrap(),
                "inferneo_http_requests_total{route=\"/v1/completions\",status=\"200\"}",
            ) - b
        })
        .collect();
    assert!(grew.iter().filter(|&&g| g > 0.0).count() == 1 && grew.iter().sum::<f64>() == 6.0, "{grew:?}");
}

/// A replica SIGKILLed under load costs only the requests in flight on it (one per client at
/// most), and every later request succeeds on the survivor.
#[test]
fn a_killed_replica_costs_only_its_requests_in_flight() {
    if !have("haproxy", "the crash test") {
        return;
    }
    let models = tempfile::tempdir().unwrap();
    let model = tiny(models.path(), "tiny", "9");
    let port = 18714;
    let fleet = Fleet::up(&["--replicas", "2", "--model", &model], port);
    let victim = fleet.state()["replicas"][0]["pid"].as_u64().unwrap();
    let body = r#"{"model": "tiny", "prompt": "Hello", "max_tokens": 100}"#;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut failed = 0;
                let mut ok = 0;
                while t0.elapsed() < Duration::from_secs(6) {
                    match exchange(port, "POST", "/v1/completions", &[], body).0 {
                        200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap().success());
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed += f;
    }
    // At most the requests in flight on the victim (one per client) fail.
    assert!(failed <= 4, "{failed} failed, {ok} succeeded");
    assert!(ok > 10, "{ok} succeeded");
    // After the crash, every request succeeds.
    for _ in 0..10 {
        assert_eq!(exchange(port, "POST", "/v1/completions", &[], body).0, 200);
    }
}

/// Rolling restart under steady load (8 clients for 30 s, streams and plain requests): each
/// replica in turn gets SIGTERM (its /ready turns 503 and HAProxy takes it out while it still
/// serves, then it drains), exits, and is started again on its port. Not one request fails,
/// and every stream in flight on a draining replica runs to `[DONE]`.
#[test]
fn rolling_restart_under_load_fails_no_request() {
    if !have("haproxy", "the rolling-restart test") {
        return;
    }
    let models = tempfile::tempdir().unwrap();
    let model = tiny(models.path(), "tiny", "6");
    let port = 18715;
    let fleet = Fleet::up(&["--replicas", "2", "--model", &model], port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let stream = i % 2 == 0;
                    let body =
                        format!(r#"{{"model": "tiny", "prompt": "client {i}", "max_tokens": 60, "stream": {stream}}}"#);
                    let (status, _, text) = exchange(port, "POST", "/v1/completions", &[], &body);
                    if status == 200 && (!stream || text.contains("data: [DONE]")) {
                        ok += 1;
                    } else {
                        failed.push(format!("{status}: {}", text.chars().take(120).collect::<String>()));
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut restarted = Restarted(Vec::new());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for r in fleet.state()["replicas"].as_array().unwrap().clone() {
        let (pid, rport) = (r["pid"].as_u64().unwrap(), r["port"].as_u64().unwrap());
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
        let gone = Instant::now();
        while Command::new("kill").args(["-0", &pid.to_string()]).output().unwrap().status.success() {
            assert!(gone.elapsed() < Duration::from_secs(30), "replica {pid} did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Started again as fleet.sh started it, on the same port (HAProxy knows it by port).
        let log = std::fs::File::create(fleet.dir.path().join(format!("logs/restart-{rport}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferneo"))
            .args(["serve", "--host", "127.0.0.1", "--port", &rport.to_string(), "--drain-delay", "3"])
            .args(["--model", &model, "--kv-cache-mb", "80"])
            .env("RAYON_NUM_THREADS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let up = Instant::now();
        while TcpStream::connect(("127.0.0.1", rport as u16)).is_err()
            || exchange(rport as u16, "GET", "/ready", &[], "").0 != 200
        {
            assert!(up.elapsed() < Duration::from_secs(30), "restarted replica never ready");
            assert!(child.try_wait().unwrap().is_none(), "restarted replica exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        // fleet.sh down knows only the PIDs it started: this one is stopped by the guard.
        restarted.0.push(child);
        // Back in rotation (HAProxy: rise 2 x inter 1 s) before the next one goes.
        std::thread::sleep(Duration::from_secs(3));
    }
    while t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    drop(restarted);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests in 30 s");
}

/// Replicas a test restarted by hand, stopped when it ends (also on a failed assertion).
struct Restarted(Vec<std::process::Child>);

impl Drop for Restarted {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
