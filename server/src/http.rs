//! The HTTP edge: accept loop with a connection cap, header and body timeouts, routing, auth,
//! body limits, panic isolation per request, and graceful drain on shutdown.

use crate::api::{ChatRequest, CompletionRequest, Prompt};
use crate::completions::{validate, Flavor, Run};
use crate::conns::{Admitted, Busy, ConnTable};
use crate::cpu_pool::CpuPool;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::models::ModelSpec;
use crate::repository::{LoadOverrides, Registry, RepositoryConfig};
use crate::response_cache::{self, ResponseCache};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

pub type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub models: Vec<ModelSpec>,
    /// Required as `Authorization: Bearer <key>` on the API routes when set.
    pub api_key: Option<String>,
    /// A completion that has not finished by then is cancelled (504).
    pub request_timeout: Duration,
    /// A client must send a request's headers within this time (slow-loris bound; also how long
    /// an idle keep-alive connection is kept).
    pub header_timeout: Duration,
    /// ... and its body within this time.
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    /// Open connections at most; at the cap a newcomer replaces the oldest idle connection
    /// (see `conns.rs`).
    pub max_connections: usize,
    /// Open connections from one client address at most (0: no such limit; keep it off
    /// behind a load balancer, whose connections all come from a few addresses).
    pub max_connections_per_ip: usize,
    /// A new connection that sends nothing for this long is closed.
    pub first_byte_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// On shutdown, how long the server keeps accepting and serving with `/ready` already 503,
    /// so a balancer that polls `/ready` takes the replica out before it stops accepting.
    pub drain_delay: Duration,
    /// Test hook: a request with the header `x-inferneo-fault: panic` panics in its handler.
    pub fault_injection: bool,
    /// Also publish the router gauges under vLLM's names (`vllm:num_requests_waiting`, ...), so
    /// routers and dashboards built for vLLM work unchanged.
    pub vllm_metrics: bool,
    /// The models directory, the budget of loaded models, keep-alive, pins and `--watch`.
    pub repository: RepositoryConfig,
    /// Bytes of finished deterministic results kept for replay (`--response-cache-mb`); 0: off.
    pub response_cache_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            models: Vec::new(),
            api_key: None,
            request_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_body_bytes: 2 << 20,
            max_connections: 1024,
            max_connections_per_ip: 0,
            first_byte_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            fault_injection: false,
            vllm_metrics: false,
            response_cache_bytes: 0,
            repository: RepositoryConfig::default(),
        }
    }
}

struct App {
    config: ServerConfig,
    registry: Arc<Registry>,
    /// Tokenizing and detokenizing, off the async workers.
    cpu: CpuPool,
    metrics: Arc<Metrics>,
    /// Results of deterministic requests (`--response-cache-mb`); `None` when off.
    cache: Option<Arc<ResponseCache>>,
    draining: AtomicBool,
    /// Shutdown began: /ready answers 503 (requests are still served until `draining`).
    not_ready: AtomicBool,
}

/// A bound server: models loading in the background, not yet accepting.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
}

impl Server {
    /// Binds the address and starts loading the models.
    pub async fn bind(config: ServerConfig) -> std::io::Result<Server> {
        if config.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            // An empty key would either lock everyone out or, treated as "no key", turn auth off
            // without a word; neither is what the operator meant.
            let msg = "the API key is empty; give a key or leave it unset";
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        }
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        let metrics: Arc<Metrics> = Arc::default();
        let registry =
            Registry::start(config.models.clone(), config.repository.clone(), metrics.clone(), config.drain_timeout)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let cache =
            (config.response_cache_bytes > 0).then(|| Arc::new(ResponseCache::new(config.response_cache_bytes)));
        let app = Arc::new(App {
            config,
            registry,
            cpu: CpuPool::per_core(),
            metrics,
            cache,
            draining: AtomicBool::new(false),
            not_ready: AtomicBool::new(false),
        });
        Ok(Server { listener, app })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Every model is loaded.
    pub fn ready(&self) -> bool {
        self.app.registry.ready()
    }

    /// A model failed to load.
    pub fn failure(&self) -> Option<String> {
        self.app.registry.failure()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (bounded by the drain timeout) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Server { listener, app } = self;
        // One permit per connection task, so the drain can wait for all of them; admission is
        // the connection table's (`conns.rs`), which never stops the accept loop.
        const TRACKED: u32 = 1 << 20;
        let live = Arc::new(Semaphore::new(TRACKED as usize));
        let conns = Arc::new(ConnTable::default());
        let (drain_tx, drain_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        // After shutdown: /ready answers 503 at once, and requests are still served until the
        // drain delay ends, so balancers see the replica leave before it stops accepting.
        let mut stop_at: Option<tokio::time::Instant> = None;
        loop {
            let until_stop = async move {
                match stop_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                },
                _ = &mut shutdown, if stop_at.is_none() => {
                    app.not_ready.store(true, Ordering::SeqCst);
                    stop_at = Some(tokio::time::Instant::now() + app.config.drain_delay);
                    continue;
                }
                _ = until_stop => break,
            };
            let config = &app.config;
            let Some(admitted) = conns.admit(peer.ip(), config.max_connections, config.max_connections_per_ip) else {
                // Every connection is serving a request: shed the newcomer.
                drop(stream);
                continue;
            };
            let Ok(permit) = live.clone().try_acquire_owned() else { continue };
            let _ = stream.set_nodelay(true);
            let (app, conns, mut drain) = (app.clone(), conns.clone(), drain_rx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(&app, stream, &admitted, &mut drain).await;
                conns.remove(admitted.id);
            });
        }
        drop(listener);
        app.draining.store(true, Ordering::SeqCst);
        let _ = drain_tx.send(true);
        let drained = tokio::time::timeout(app.config.drain_timeout, live.acquire_many(TRACKED)).await.is_ok();
        if !drained {
            eprintln!("drain timeout: closing the connections still open");
        }
        Ok(())
    }
}

/// One connection, from its first byte to its close: closed early if no byte arrives within the
/// first-byte timeout, when the connection table evicts it (idle, to make room), or, gracefully,
/// on drain.
async fn serve_connection(
    app: &Arc<App>,
    stream: tokio::net::TcpStream,
    admitted: &Admitted,
    drain: &mut watch::Receiver<bool>,
) {
    let mut first = [0u8; 1];
    let arrived = tokio::select! {
        r = tokio::time::timeout(app.config.first_byte_timeout, stream.peek(&mut first)) => matches!(r, Ok(Ok(n)) if n > 0),
        _ = admitted.close.notified() => false,
        _ = drain.wait_for(|d| *d) => false,
    };
    if !arrived {
        return;
    }
    let (svc_app, busy) = (app.clone(), admitted.busy.clone());
    let service = hyper::service::service_fn(move |req| {
        let app = svc_app.clone();
        // Busy until the response body is done (a stream, for as long as it runs).
        let busy = Busy::start(&busy);
        async move { Ok::<_, Infallible>(handle(app, req).await.map(|body| BusyBody { body, _busy: busy }.boxed())) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(app.config.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let draining = tokio::select! {
        _ = conn.as_mut() => false,
        _ = admitted.close.notified() => false,
        d = drain.wait_for(|d| *d) => d.is_ok(),
    };
    if draining {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// A response body that keeps its connection counted as busy until it is done or dropped.
struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for BusyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Builds a runtime, serves until SIGINT or SIGTERM, drains and returns. Prints where it
/// listens and when it is ready.
pub fn run_blocking(config: ServerConfig) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("inferneo-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let (host, port) = (config.host.clone(), config.port);
        let server = Server::bind(config).await.map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        eprintln!("listening on http://{addr} (GET /health, /ready, /metrics; POST /v1/completions)");
        let app = server.app.clone();
        // Ready, or every model failed: then nothing can ever be served, so the process stops
        // and exits non-zero for its supervisor to see. With some models loaded the others'
        // failures are reported in /v1/models and /ready stays 503.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                if app.registry.ready() {
                    eprintln!("ready: serving {}", app.registry.names().join(", "));
                    return;
                }
                if app.registry.all_failed() {
                    let _ = failed_tx.send(());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // SIGHUP: look for new model directories (as POST /v1/models/refresh does).
        let app = server.app.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match app.registry.refresh() {
                    Ok(added) => eprintln!("SIGHUP: models directory scanned; new: [{}]", added.join(", ")),
                    Err(e) => eprintln!("SIGHUP: {e}"),
                }
            }
        });
        let all_failed = Arc::new(AtomicBool::new(false));
        let flag = all_failed.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                Ok(()) = failed_rx => flag.store(true, Ordering::SeqCst),
            }
        };
        server.run(stop).await.map_err(|e| e.to_string())?;
        if all_failed.load(Ordering::SeqCst) {
            return Err("every configured model failed to load (see above); exiting".into());
        }
        eprintln!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down: no new connections, finishing requests in flight");
}

/// The routes, each with its methods; the metrics label is the route itself.
const ROUTES: &[(&str, Method)] = &[
    ("/v1/completions", Method::POST),
    ("/v1/chat/completions", Method::POST),
    ("/v1/models", Method::GET),
    ("/tokenize", Method::POST),
    ("/detokenize", Method::POST),
    ("/health", Method::GET),
    ("/ready", Method::GET),
    ("/metrics", Method::GET),
];

/// The per-model routes: `GET /v1/models/{name}`, `POST /v1/models/{name}/load|unload|reload`
/// and `POST /v1/models/refresh` (labelled with the pattern, so the metrics label stays bounded).
const ADMIN_ROUTES: &[(&str, Method)] = &[
    ("/v1/models/refresh", Method::POST),
    ("/v1/models/{name}", Method::GET),
    ("/v1/models/{name}/load", Method::POST),
    ("/v1/models/{name}/unload", Method::POST),
    ("/v1/models/{name}/reload", Method::POST),
];

fn admin_route(path: &str) -> Option<&'static (&'static str, Method)> {
    let rest = path.strip_prefix("/v1/models/")?;
    let pattern = match rest.split_once('/') {
        None if rest == "refresh" => "/v1/models/refresh",
        None if !rest.is_empty() => "/v1/models/{name}",
        Some((n, "load")) if !n.is_empty() => "/v1/models/{name}/load",
        Some((n, "unload")) if !n.is_empty() => "/v1/models/{name}/unload",
        Some((n, "reload")) if !n.is_empty() => "/v1/models/{name}/reload",
        _ => return None,
    };
    ADMIN_ROUTES.iter().find(|(p, _)| *p == pattern)
}

/// The `{name}` of a per-model route.
fn model_of(path: &str) -> &str {
    let rest = path.strip_prefix("/v1/models/").unwrap_or("");
    rest.split_once('/').map_or(rest, |(n, _)| n)
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let path = req.uri().path().to_string();
    let route = ROUTES.iter().find(|(p, _)| *p == path).or_else(|| admin_route(&path));
    let label = route.map_or("other", |(p, _)| *p);
    let request_id = request_id(req.headers().get("x-request-id"));
    let logged_by_run = Arc::new(AtomicBool::new(false));
    let count = HttpCount {
        app: app.clone(),
        label,
        counted: false,
        request_id: request_id.to_str().unwrap_or("").to_string(),
        arrival,
        logged_by_run: logged_by_run.clone(),
    };
    let mut req = req;
    req.extensions_mut().insert(RequestLog { id: count.request_id.clone(), logged_by_run });
    // HEAD is GET without the body (RFC 9110 9.3.2); hyper sends no body for it.
    let head_of_get = |m: &Method| *m == Method::GET && req.method() == Method::HEAD;
    let resp = match route {
        // RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        _ if req.version() == hyper::Version::HTTP_11 && !req.headers().contains_key(HOST) => {
            error(&ApiError::bad_request("HTTP/1.1 requests must carry a Host header"))
        }
        None => error(&ApiError::not_found(&path)),
        Some((_, m)) if m != req.method() && !head_of_get(m) => {
            let mut r = error(&ApiError::method_not_allowed(req.method().as_str(), &path));
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(m.as_str()));
            r
        }
        Some(&(p, _)) => {
            // Run the handler as its own task: a panic in it fails this request with a 500
            // and leaves the connection, the server and every other request alone.
            let task_app = app.clone();
            // If hyper drops this future (the client went away), the task goes too, and with
            // it the request's engine sequences.
            let task = AbortOnDrop(tokio::spawn(async move { dispatch(task_app, p, req, arrival).await }));
            match task.join().await {
                Ok(r) => r,
                Err(_) => {
                    app.metrics.request("", 500);
                    error(&ApiError::internal("internal error while handling the request"))
                }
            }
        }
    };
    count.done(resp.status().as_u16());
    let mut resp = resp;
    resp.headers_mut().insert("x-request-id", request_id);
    resp
}

/// The request's id: the client's `X-Request-Id` when it is a sane token (up to 128 visible
/// ASCII characters), else a fresh one, so a request can be followed through a balancer's logs
/// and ours.
fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    let sane = |v: &&HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
    };
    given.filter(sane).cloned().unwrap_or_else(|| {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        HeaderValue::from_str(&format!("req-{:016x}{:08x}", t, n as u32)).expect("hex is a valid header value")
    })
}

/// Counts one HTTP response by route and status, exactly once: 499 if hyper drops the handler
/// before it answered (the client closed the connection). Writes the request's log line too,
/// unless a completion run took that over (its line carries the tokens, TTFT and finish).
struct HttpCount {
    app: Arc<App>,
    label: &'static str,
    counted: bool,
    request_id: String,
    arrival: Instant,
    logged_by_run: Arc<AtomicBool>,
}

/// What a handler learns of its request's log line: the id, and a flag to claim the line.
#[derive(Clone)]
struct RequestLog {
    id: String,
    logged_by_run: Arc<AtomicBool>,
}

impl HttpCount {
    fn done(mut self, status: u16) {
        self.count(status);
    }

    fn count(&mut self, status: u16) {
        self.counted = true;
        self.app.metrics.http(self.label, status);
        if !self.logged_by_run.load(Ordering::SeqCst) {
            tracing::info!(
                target: "inferneo::request",
                request_id = %self.request_id,
                route = self.label,
                status,
                total_ms = self.arrival.elapsed().as_secs_f64() * 1e3,
            );
        }
    }
}

impl Drop for HttpCount {
    fn drop(&mut self) {
        if !self.counted {
            self.count(499);
        }
    }
}

async fn dispatch(app: Arc<App>, route: &'static str, req: Request<Incoming>, arrival: Instant) -> Response<Body> {
    if app.config.fault_injection && req.headers().get("x-inferneo-fault").is_some_and(|v| v == "panic") {
        panic!("fault injected by request header");
    }
    let api = !matches!(route, "/health" | "/ready" | "/metrics");
    if api {
        if let Some(key) = &app.config.api_key {
            if !authorized(req.headers().get(AUTHORIZATION), key) {
                return error(&ApiError::unauthorized());
            }
        }
        if app.draining.load(Ordering::SeqCst) {
            return error(&ApiError::unavailable("the server is shutting down"));
        }
    }
    let result = match route {
        "/health" => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        "/ready" => Ok(ready(&app)),
        "/metrics" => Ok(metrics(&app)),
        "/v1/models" => Ok(models(&app)),
        "/v1/models/refresh" => app
            .registry
            .refresh()
            .map(|added| json_response(StatusCode::OK, &json!({"added": added, "models": app.registry.names()})))
            .map_err(ApiError::internal),
        "/v1/models/{name}" => app.registry.info(model_of(req.uri().path())).map(|v| json_response(StatusCode::OK, &v)),
        "/v1/models/{name}/load" => {
            let name = model_of(req.uri().path()).to_string();
            match load_overrides(&app, req).await {
                Ok(o) => app.registry.load(&name, o).await.map(|v| json_response(StatusCode::OK, &v)),
                Err(e) => Err(e),
            }
        }
        "/v1/models/{name}/unload" => {
            app.registry.unload(model_of(req.uri().path())).await.map(|v| json_response(StatusCode::OK, &v))
        }
        "/v1/models/{name}/reload" => {
            app.registry.reload(model_of(req.uri().path())).await.map(|v| json_response(StatusCode::OK, &v))
        }
        "/tokenize" => tokenize(&app, req).await,
        "/detokenize" => detokenize(&app, req).await,
        "/v1/completions" => completions(&app, req, arrival, Flavor::Completion).await,
        "/v1/chat/completions" => completions(&app, req, arrival, Flavor::Chat).await,
        _ => Err(ApiError::not_found(route)),
    };
    result.unwrap_or_else(|e| error(&e))
}

/// `Bearer <key>`, the scheme in any case (RFC 7235 2.1) and one or more spaces after it.
/// Compares the key without an early exit, so response timing does not reveal it.
fn authorized(header: Option<&HeaderValue>, key: &str) -> bool {
    let Some(value) = header.map(HeaderValue::as_bytes) else { return false };
    let Some((scheme, given)) = value.split_at_checked(6) else { return false };
    if !scheme.eq_ignore_ascii_case(b"Bearer") || !given.starts_with(b" ") {
        return false;
    }
    let given = given.trim_ascii_start();
    let want = key.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn ready(app: &App) -> Response<Body> {
    if app.not_ready.load(Ordering::SeqCst) || app.draining.load(Ordering::SeqCst) {
        return error(&ApiError::unavailable("the server is shutting down"));
    }
    if let Some(e) = app.registry.failure() {
        return error(&ApiError::unavailable(e));
    }
    if !app.registry.ready() {
        return error(&ApiError::unavailable("models are still loading"));
    }
    json_response(StatusCode::OK, &json!({"status": "ready"}))
}

fn metrics(app: &App) -> Response<Body> {
    let mut text = app.metrics.render_with(&app.registry.gauges(), app.config.vllm_metrics);
    if let Some(cache) = &app.cache {
        cache.render(&mut text);
    }
    let mut r = Response::new(full(text));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// Every known model, OpenAI-shaped, with the repository's fields beside the OpenAI ones:
/// `state` (`unloaded`, `loading`, `ready`, `unloading`, or `failed` with the reason in
/// `error`), `dtype`, `memory_bytes` (weights + KV while resident), `weights_bytes`, `threads`,
/// `kv_cache_bytes` and `pinned`.
fn models(app: &App) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"object": "list", "data": app.registry.list()}))
}

/// The optional body of `POST /v1/models/{name}/load`: `dtype`, `threads`, `kv-cache-mb`
/// (or `kv_cache_mb`).
async fn load_overrides(app: &App, req: Request<Incoming>) -> Result<LoadOverrides, ApiError> {
    let empty = req.headers().get(CONTENT_LENGTH).is_some_and(|v| v == "0");
    if empty {
        return Ok(LoadOverrides::default());
    }
    let v = read_json(app, req).await?;
    let mut o = LoadOverrides::default();
    if let Some(d) = v.get("dtype").filter(|d| !d.is_null()) {
        let d = d.as_str().ok_or_else(|| ApiError::invalid("dtype", "'dtype' must be a string"))?;
        o.dtype = Some(d.parse().map_err(|e: String| ApiError::invalid("dtype", e))?);
    }
    let count = |key: &str, max: u64| -> Result<Option<usize>, ApiError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .filter(|n| (1..=max).contains(n))
                .map(|n| Some(n as usize))
                .ok_or_else(|| ApiError::invalid(key, format!("'{key}' must be an integer in 1..={max}"))),
        }
    };
    o.threads = count("threads", 1024)?;
    o.kv_cache_mb = count("kv-cache-mb", 1 << 20)?.or(count("kv_cache_mb", 1 << 20)?);
    Ok(o)
}

async fn tokenize(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let v = read_json(app, req).await?;
    let served = app.registry.get(model_field(&v)?).await?;
    let text = v
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("prompt", "'prompt' must be a string"))?
        .to_string();
    let with_strs = match v.get("return_token_strs") {
        None | Some(Value::Null) => false,
        Some(b) => b
            .as_bool()
            .ok_or_else(|| ApiError::invalid("return_token_strs", "'return_token_strs' must be a boolean"))?,
    };
    let tok = served.tokenizer.clone().ok_or_else(|| ApiError::bad_request("this model has no tokenizer"))?;
    let (ids, strs) = app
        .cpu
        .run(move || {
            let ids = tok.encode(&text)?;
            // vLLM's shape: the vocabulary entries as stored (byte-level `Ġ` for a space).
            let strs: Option<Vec<String>> =
                with_strs.then(|| ids.iter().map(|&i| tok.id_to_token(i).unwrap_or_default()).collect());
            Ok::<_, inferneo_runtime::Error>((ids, strs))
        })
        .await
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"tokens": ids, "count": ids.len(), "max_model_len": served.config().n_positions, "token_strs": strs}),
    ))
}

async fn detokenize(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let v = read_json(app, req).await?;
    let served = app.registry.get(model_field(&v)?).await?;
    let vocab = served.config().vocab_size;
    let bad = || ApiError::invalid("tokens", format!("'tokens' must be a list of token ids in 0..{vocab}"));
    let ids = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|t| t.as_u64().filter(|&t| (t as usize) < vocab).map(|t| t as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(bad)?;
    let tok = served.tokenizer.clone().ok_or_else(|| ApiError::bad_request("this model has no tokenizer"))?;
    let text = app.cpu.run(move || tok.decode(&ids)).await.map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(json_response(StatusCode::OK, &json!({"prompt": text})))
}

fn model_field(v: &Value) -> Result<Option<&str>, ApiError> {
    match v.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid("model", "'model' must be a string")),
    }
}

/// A chat request as a completion request: the messages rendered with the model's template.
async fn chat_prompt(app: &App, v: &Value) -> Result<CompletionRequest, ApiError> {
    let chat = ChatRequest::parse(v)?;
    let served = app.registry.get(chat.completion.model.as_deref()).await?;
    let template = match &served.chat_template {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(ApiError::bad_request(format!(
                "the model '{}' has no chat template (no 'chat_template' in its tokenizer_config.json), so chat \
                 requests cannot be formatted; start the server with --chat-template FILE (for example \
                 assets/chat-templates/plain.jinja), or use /v1/completions",
                served.name
            )))
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "the model '{}' has an unusable chat template: {e}",
                served.name
            )))
        }
    };
    let text = template
        .render(&chat.messages, chat.add_generation_prompt)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    if text.is_empty() {
        return Err(ApiError::invalid("messages", "the chat template rendered these messages as an empty prompt"));
    }
    let mut completion = chat.completion;
    completion.model = Some(served.name.clone());
    completion.prompts = vec![Prompt::Text(text)];
    Ok(completion)
}

/// `/v1/completions` and `/v1/chat/completions`: the same run, in the flavor's shapes.
async fn completions(
    app: &App,
    req: Request<Incoming>,
    arrival: Instant,
    flavor: Flavor,
) -> Result<Response<Body>, ApiError> {
    let log = req.extensions().get::<RequestLog>().cloned();
    // `Cache-Control: no-cache` / `no-store` opt out of the response cache, as HTTP has it.
    let use_cache = !req
        .headers()
        .get_all(hyper::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "no-cache" | "no-store"));
    let v = read_json(app, req).await?;
    let parsed = match flavor {
        Flavor::Completion => CompletionRequest::parse(&v)?,
        Flavor::Chat => chat_prompt(app, &v).await?,
    };
    let (stream, include_usage) = (parsed.stream, parsed.include_usage);
    let validated = validate(&app.registry, parsed, &app.cpu).await?;
    let model = validated.served.name.clone();
    let cache =
        app.cache.as_ref().filter(|_| use_cache).and_then(|c| Some((c, response_cache::key(&validated, flavor)?)));
    let (timeout, metrics) = (app.config.request_timeout, app.metrics.clone());
    let started = match cache {
        None => Run::start(validated, flavor, arrival, timeout, metrics),
        Some((cache, key)) => match cache.get(&key) {
            Some(hit) => Run::replay(validated, flavor, arrival, timeout, metrics, &hit),
            None => Run::start(validated, flavor, arrival, timeout, metrics).map(|mut r| {
                r.cache_into(cache.clone(), key);
                r
            }),
        },
    };
    let mut run = match started {
        Ok(mut r) => {
            if let Some(log) = log {
                log.logged_by_run.store(true, Ordering::SeqCst);
                r.request_id = log.id;
            }
            r
        }
        Err(e) => {
            app.metrics.request(&model, e.status.as_u16());
            return Err(e);
        }
    };
    if !stream {
        return match run.collect().await {
            Ok(body) => {
                run.record(200);
                Ok(json_response(StatusCode::OK, &body))
            }
            Err(e) => {
                run.record(e.status.as_u16());
                Err(e)
            }
        };
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let event = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
        let mut status = 200;
        for chunk in run.opening_chunks(include_usage) {
            if tx.send(event(&chunk)).await.is_err() {
                status = 499;
            }
        }
        while status == 200 {
            // A client that goes away while its request still waits for the engine produces no
            // token to fail on; watch the body channel too, so it is cancelled at once.
            let next = tokio::select! {
                n = run.next() => n,
                _ = tx.closed() => {
                    status = 499;
                    break;
                }
            };
            match next {
                Ok(Some(u)) => {
                    if tx.send(event(&run.chunk(&u, include_usage))).await.is_err() {
                        // The client went away: dropping the run cancels its sequences.
                        status = 499;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(event(&e.body())).await;
                    status = e.status.as_u16();
                }
            }
        }
        if status == 200 && include_usage {
            let _ = tx.send(event(&run.usage_chunk())).await;
        }
        if status != 499 {
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
        run.record(status);
    });
    let mut r = Response::new(BoxBody::new(ChannelBody { rx }));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses by default, which would hold a stream back until its end.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// Reads a JSON body within the size limit and the body timeout.
async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, ApiError> {
    let limit = app.config.max_body_bytes;
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !is_json_media_type(ct) {
            return Err(ApiError::unsupported_media(ct));
        }
    }
    if let Some(enc) = req.headers().get(CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?");
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_encoding(enc));
        }
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let body = Limited::new(req.into_body(), limit);
    let bytes = match tokio::time::timeout(app.config.body_timeout, body.collect()).await {
        Err(_) => return Err(ApiError::body_timeout()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(ApiError::too_large(limit)),
        Ok(Err(e)) => return Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Whether a Content-Type names JSON: the media type before any parameters (RFC 9110 8.3.1),
/// case-insensitive, is `application/json` or a `+json` structured syntax (`application/x+json`).
fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((kind, subtype)) = media.split_once('/') else { return false };
    kind == "application" && (subtype == "json" || (subtype.ends_with("+json") && subtype.len() > 5))
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Aborts the task when dropped before it finished.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body fed by a channel: the SSE stream. Dropped by hyper when the client goes
/// away, which closes the channel and so tells the producer.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_parsed_not_searched() {
        for ok in
            ["application/json", "Application/JSON; charset=utf-8", " application/json ;x=y", "application/vnd.a+json"]
        {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in ["text/json", "application/jsonp", "text/plain; note=json", "application/+json", "json", ""] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_key_is_not() {
        let ok = |h: &str| authorized(Some(&HeaderValue::from_str(h).unwrap()), "s3cret");
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert!(ok(good), "{good}");
        }
        for bad in ["Bearer S3CRET", "Bearers3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearer", ""] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!authorized(None, "s3cret"));
    }
}
