//! `latent-studio serve` over real HTTP on the embedded model: A1111's endpoints, their
//! errors, authentication, limits, interrupt and a client that goes away.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use latent_studio::server::{Running, ServeConfig, start};
use serde_json::{Value, json};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (closed after the answer).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    // A server that refuses a big body may close before reading it all.
    let _ = s.write_all(body);
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = unchunk(&body);
    }
    Reply { status, headers, body }
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[p + 2 + n + 2..];
    }
    out
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    http(addr, "POST", path, &[], body.to_string().as_bytes())
}

fn server(config: ServeConfig) -> Running {
    start(ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..config
    })
    .expect("the server starts")
}

fn png_of(b64: &str) -> (image::RgbImage, String) {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let img = image::load_from_memory(&bytes).expect("png").to_rgb8();
    let dir = std::env::temp_dir().join(format!("latent-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join(format!("{}.png", bytes.len()));
    std::fs::write(&f, &bytes).expect("write");
    let text = latent_engine::image_io::read_png_parameters(&f).expect("reads").unwrap_or_default();
    (img, text)
}

fn small(steps: u32) -> Value {
    json!({"prompt": "a red star on a black background", "width": 64, "height": 64, "steps": steps, "cfg_scale": 2, "seed": 11,
           "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
}

#[test]
fn txt2img_answers_as_a1111_and_the_listings_work() {
    let s = server(ServeConfig::default());
    assert_eq!(http(s.addr, "GET", "/healthz", &[], b"").status, 200);
    let mut body = small(6);
    body["batch_size"] = json!(2);
    let r = post(s.addr, "/sdapi/v1/txt2img", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let images = j["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    let info: Value = serde_json::from_str(j["info"].as_str().expect("info text")).expect("info JSON");
    assert_eq!(info["all_seeds"], json!([11, 12]));
    assert_eq!(j["parameters"]["prompt"], "a red star on a black background");
    for (k, b64) in images.iter().enumerate() {
        let (img, text) = png_of(b64.as_str().expect("b64"));
        assert_eq!(img.dimensions(), (64, 64));
        assert!(text.contains(&format!("Seed: {}", 11 + k)) && text.contains("Steps: 6"), "{text}");
        assert!(
            text.contains("Sampler: DPM++ 2M") && text.contains("Schedule type: Karras"),
            "{text}"
        );
        assert_eq!(info["infotexts"][k].as_str(), Some(text.as_str()));
    }
    // The same request gives the same pixels (the seed is honoured).
    let again = post(s.addr, "/sdapi/v1/txt2img", &small(6)).json();
    assert_eq!(again["images"][0], j["images"][0]);
    // png-info reads the text back.
    let pi = post(s.addr, "/sdapi/v1/png-info", &json!({"image": images[0]})).json();
    assert_eq!(pi["parameters"]["Seed"], "11");
    assert!(pi["info"].as_str().is_some_and(|t| t.starts_with("a red star")));
    // Listings.
    let samplers = http(s.addr, "GET", "/sdapi/v1/samplers", &[], b"").json();
    assert!(samplers.as_array().expect("list").iter().any(|x| x["name"] == "DPM++ 2M"));
    let schedulers = http(s.addr, "GET", "/sdapi/v1/schedulers", &[], b"").json();
    assert!(schedulers.as_array().expect("list").iter().any(|x| x["name"] == "karras"));
    let models = http(s.addr, "GET", "/sdapi/v1/sd-models", &[], b"").json();
    assert!(
        models
            .as_array()
            .expect("list")
            .iter()
            .any(|m| m["model_name"] == "latent-studio-default")
    );
    // The loaded checkpoint is hashed as A1111 hashes it: short hash in the title, full sha256.
    let loaded = models
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["model_name"] == "latent-studio-default")
        .expect("listed");
    let short = latent_engine::checkpoint::short_hash(&latent_studio::assets::embedded_model().expect("embedded")).expect("hash");
    assert_eq!(loaded["hash"], short.as_str());
    assert_eq!(loaded["title"], format!("latent-studio-default.safetensors [{short}]").as_str());
    assert!(loaded["sha256"].as_str().is_some_and(|h| h.len() == 64 && h.starts_with(&short)));
    let loras = http(s.addr, "GET", "/sdapi/v1/loras", &[], b"").json();
    assert!(loras.as_array().expect("list").iter().any(|l| l["name"] == "outline"));
    let options = http(s.addr, "GET", "/sdapi/v1/options", &[], b"").json();
    assert_eq!(options["sd_model_checkpoint"], "latent-studio-default.safetensors");
    // Options: a known checkpoint by name, an unknown one refused, clip skip kept.
    let ok = post(
        s.addr,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "latent-studio-default", "CLIP_stop_at_last_layers": 2}),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        http(s.addr, "GET", "/sdapi/v1/options", &[], b"").json()["CLIP_stop_at_last_layers"],
        2
    );
    let bad = post(s.addr, "/sdapi/v1/options", &json!({"sd_model_checkpoint": "nowhere.safetensors"}));
    assert_eq!(bad.status, 422);
    let metrics = String::from_utf8(http(s.addr, "GET", "/metrics", &[], b"").body).expect("text");
    assert!(metrics.contains("latent_jobs_total{outcome=\"finished\"} 3"), "{metrics}");
    s.stop();
}

#[test]
fn bad_requests_are_422_with_the_field_and_limits_hold() {
    let s = server(ServeConfig {
        max_queue: 2,
        max_body: 1 << 20,
        ..ServeConfig::default()
    });
    let r = http(s.addr, "POST", "/sdapi/v1/txt2img", &[], b"{not json");
    assert_eq!(r.status, 422);
    assert!(r.json()["detail"][0]["msg"].is_string());
    let mut absurd = small(6);
    absurd["width"] = json!(100_000);
    absurd["steps"] = json!(0);
    let r = post(s.addr, "/sdapi/v1/txt2img", &absurd);
    assert_eq!(r.status, 422);
    let fields: Vec<Value> = r.json()["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|d| d["loc"][1].clone())
        .collect();
    assert_eq!(fields, [json!("width"), json!("steps")]);
    let mut sampler = small(6);
    sampler["sampler_name"] = json!("Nonsense 3M");
    assert_eq!(post(s.addr, "/sdapi/v1/txt2img", &sampler).status, 422);
    // A body over the limit is refused.
    let big = json!({"prompt": "x".repeat(2 << 20)});
    assert_eq!(post(s.addr, "/sdapi/v1/txt2img", &big).status, 413);
    // More images than the queue holds: 503 with Retry-After.
    let mut many = small(6);
    many["batch_size"] = json!(3);
    let r = post(s.addr, "/sdapi/v1/txt2img", &many);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    // A broken init picture, and none.
    let r = post(
        s.addr,
        "/sdapi/v1/img2img",
        &json!({"init_images": ["bm90IGEgcGljdHVyZQ=="], "width": 64, "height": 64}),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"][1], "init_images");
    assert_eq!(post(s.addr, "/sdapi/v1/img2img", &json!({"width": 64, "height": 64})).status, 422);
    // The server still serves.
    assert_eq!(post(s.addr, "/sdapi/v1/txt2img", &small(2)).status, 200);
    s.stop();
}

#[test]
fn authentication_is_required_when_set_and_wide_listening_needs_it() {
    let refused = start(ServeConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        ..ServeConfig::default()
    });
    assert!(refused.err().expect("refused").to_string().contains("--api-auth"));
    let s = server(ServeConfig {
        basic: vec!["ann:secret".into()],
        tokens: vec!["tok-123".into()],
        ..ServeConfig::default()
    });
    let basic = |cred: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred));
    assert_eq!(http(s.addr, "GET", "/sdapi/v1/options", &[], b"").status, 401);
    let wrong = basic("ann:guess");
    assert_eq!(
        http(s.addr, "GET", "/sdapi/v1/options", &[("Authorization", &wrong)], b"").status,
        401
    );
    let right = basic("ann:secret");
    assert_eq!(
        http(s.addr, "GET", "/sdapi/v1/options", &[("Authorization", &right)], b"").status,
        200
    );
    assert_eq!(
        http(s.addr, "GET", "/sdapi/v1/options", &[("Authorization", "Bearer tok-123")], b"").status,
        200
    );
    assert_eq!(
        http(s.addr, "GET", "/sdapi/v1/options", &[("Authorization", "Bearer tok-124")], b"").status,
        401
    );
    // The health check needs none (load balancers probe it).
    assert_eq!(http(s.addr, "GET", "/healthz", &[], b"").status, 200);
    s.stop();
}

/// Waits until the server reports a running job at step 1 or later.
fn wait_running(addr: SocketAddr) {
    let t0 = Instant::now();
    loop {
        let p = http(addr, "GET", "/sdapi/v1/progress?skip_current_image=true", &[], b"").json();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 1 {
            assert!(p["progress"].as_f64().unwrap_or(0.0) > 0.0);
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupt_stops_a_job_and_a_client_that_leaves_cancels_its_own() {
    let s = server(ServeConfig::default());
    let addr = s.addr;
    // A long job, interrupted mid-way: the request returns without images.
    let long = small(400);
    let waiter = std::thread::spawn(move || post(addr, "/sdapi/v1/txt2img", &long));
    wait_running(addr);
    let p = http(addr, "GET", "/sdapi/v1/progress", &[], b"").json();
    assert!(p["current_image"].is_string(), "the step's preview");
    assert_eq!(post(addr, "/sdapi/v1/interrupt", &json!({})).status, 200);
    let r = waiter.join().expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["images"].as_array().map(Vec::len), Some(0));
    // A client that sends a long job and hangs up: the job is cancelled.
    let mut c = TcpStream::connect(addr).expect("connect");
    let body = small(400).to_string();
    write!(
        c,
        "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    wait_running(addr);
    drop(c);
    let t0 = Instant::now();
    loop {
        let m = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").body).expect("text");
        if m.contains("latent_jobs_total{outcome=\"cancelled\"} 2") && m.contains("latent_queue_depth 0") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the abandoned job was not cancelled: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(addr, "/sdapi/v1/txt2img", &small(2)).status, 200, "serving on");
    s.stop();
}

#[test]
fn img2img_and_inpainting_keep_a1111_fields() {
    let s = server(ServeConfig::default());
    let first = post(s.addr, "/sdapi/v1/txt2img", &small(6)).json();
    let init = first["images"][0].as_str().expect("image").to_string();
    // A mask: the left half repainted.
    let mask = image::RgbImage::from_fn(64, 64, |x, _| if x < 32 { image::Rgb([255; 3]) } else { image::Rgb([0; 3]) });
    let mut png = vec![];
    image::DynamicImage::ImageRgb8(mask)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let mask_b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = json!({"init_images": [format!("data:image/png;base64,{init}")], "prompt": "a blue circle on a black background",
        "denoising_strength": 0.8, "mask": mask_b64, "mask_blur": 2, "inpainting_fill": 1, "width": 64, "height": 64,
        "steps": 8, "seed": 3, "cfg_scale": 2});
    let r = post(s.addr, "/sdapi/v1/img2img", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert!(j["parameters"]["init_images"].is_null(), "the pictures are not echoed");
    let (out, text) = png_of(j["images"][0].as_str().expect("image"));
    let (before, _) = png_of(&init);
    assert_eq!(out.dimensions(), (64, 64));
    assert!(text.contains("Denoising strength: 0.8") && text.contains("Mask blur: 2"), "{text}");
    // The right half is kept, the left repainted.
    let kept = (0..64).all(|y| (44..64).all(|x| out.get_pixel(x, y) == before.get_pixel(x, y)));
    let changed = (0..64)
        .flat_map(|y| (0..20).map(move |x| (x, y)))
        .filter(|&(x, y)| out.get_pixel(x, y) != before.get_pixel(x, y))
        .count();
    assert!(kept && changed > 500, "kept {kept}, changed {changed}");
    // Plain img2img at another size (resize_mode 1: crop and resize).
    let r = post(
        s.addr,
        "/sdapi/v1/img2img",
        &json!({"init_images": [init], "width": 96, "height": 64, "steps": 8,
        "denoising_strength": 0.5, "resize_mode": 1, "cfg_scale": 2}),
    );
    assert_eq!(r.status, 200);
    let (out, _) = png_of(r.json()["images"][0].as_str().expect("image"));
    assert_eq!(out.dimensions(), (96, 64));
    s.stop();
}

// ---- the studio's own endpoints and the window's remote engine -----------------------------

use latent_engine::protocol::{Event, GenerateRequest, LoraSpec, ModelSpec};
use latent_engine::{EngineConfig, EngineHandle};
use latent_studio::remote::{RemoteBackend, Server};

fn remote_engine(addr: SocketAddr, token: &str) -> EngineHandle {
    let server = Server::parse(&format!("http://{addr}"), token).expect("address");
    EngineHandle::spawn_with_backend(EngineConfig::default(), Box::new(RemoteBackend::new(server)), || {}).expect("engine")
}

/// Events until the next one that ends a job or answers a control command.
fn until_final(engine: &EngineHandle) -> Vec<Event> {
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(e) = engine.recv_timeout(Duration::from_millis(200)) {
            let end = e.is_final()
                || matches!(
                    e,
                    Event::ModelLoaded { .. } | Event::LorasApplied { .. } | Event::Failed { id: None, .. }
                );
            seen.push(e);
            if end {
                return seen;
            }
        }
    }
    panic!("no final event in time; saw {seen:?}");
}

fn small_request(steps: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red star on a black background".into(),
        width: 64,
        height: 64,
        steps,
        cfg_scale: 2.0,
        seed: 11,
        solver: "dpm++2m".into(),
        schedule: "karras".into(),
        ..GenerateRequest::default()
    }
}

#[test]
fn the_remote_engine_makes_the_local_engines_picture_on_the_server() {
    let s = server(ServeConfig::default());
    let remote = remote_engine(s.addr, "");
    let listing = latent_studio::remote::list(&Server::parse(&format!("http://{}", s.addr), "").expect("address")).expect("lists");
    assert!(
        listing.models.iter().any(|m| m.to_string_lossy().contains("latent-studio-default")),
        "{listing:?}"
    );
    assert!(listing.loras.iter().any(|m| m.to_string_lossy().contains("outline")), "{listing:?}");
    remote
        .load_model(ModelSpec::new("latent-studio-default.safetensors"))
        .expect("sent");
    let loaded = until_final(&remote);
    let Some(Event::ModelLoaded { info }) = loaded.last() else {
        panic!("{loaded:?}")
    };
    assert!(
        info.device.contains(&s.addr.to_string()),
        "the device names the server: {}",
        info.device
    );

    let mut request = small_request(6);
    request.preview_every = 2;
    remote.generate(request.clone()).expect("sent");
    let events = until_final(&remote);
    let steps: Vec<u32> = events
        .iter()
        .filter_map(|e| if let Event::Progress { step, .. } = e { Some(*step) } else { None })
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>(), "{events:?}");
    assert!(
        matches!(
            events[0],
            Event::Started {
                total_steps: 6,
                nfe: 12,
                ..
            }
        ),
        "{:?}",
        events[0]
    );
    assert!(events.iter().any(|e| matches!(e, Event::Preview { .. })), "previews come through");
    let Some(Event::Finished {
        image, metadata, timings, ..
    }) = events.last()
    else {
        panic!("{events:?}")
    };
    assert_eq!(timings.nfe, 12);

    // The same request on a local engine: the very same pixels and parameters.
    let local = EngineHandle::spawn(EngineConfig::default(), || {}).expect("engine");
    local
        .load_model(ModelSpec::new(latent_studio::assets::embedded_model().expect("embedded")))
        .expect("sent");
    until_final(&local);
    local.generate(request).expect("sent");
    let here = until_final(&local);
    let Some(Event::Finished {
        image: here_image,
        metadata: here_metadata,
        ..
    }) = here.last()
    else {
        panic!("{here:?}")
    };
    assert_eq!(image, here_image);
    assert_eq!(metadata, here_metadata);

    // A LoRA by name, and one the server does not have.
    remote
        .set_loras(vec![LoraSpec::new("/my/laptop/outline.safetensors", 1.0)])
        .expect("sent");
    let applied = until_final(&remote);
    let Some(Event::LorasApplied { reports }) = applied.last() else {
        panic!("{applied:?}")
    };
    assert!(reports[0].applied > 0 && reports[0].applied == reports[0].total, "{reports:?}");
    remote.generate(small_request(4)).expect("sent");
    let outlined = until_final(&remote);
    let Some(Event::Finished {
        image: outlined,
        metadata: outlined_text,
        ..
    }) = outlined.last()
    else {
        panic!("{outlined:?}")
    };
    assert_ne!(outlined.pixels, image.pixels);
    assert!(outlined_text.contains("outline"), "the LoRA is in the metadata: {outlined_text}");
    remote
        .set_loras(vec![LoraSpec::new("nowhere-to-be-found.safetensors", 1.0)])
        .expect("sent");
    let refused = until_final(&remote);
    assert!(
        matches!(refused.last(), Some(Event::Failed { id: None, error }) if error.contains("no LoRA \"nowhere-to-be-found\"")),
        "{refused:?}"
    );

    // A request the engine refuses fails as a job, and the engine serves on.
    remote.set_loras(vec![]).expect("sent");
    until_final(&remote);
    let mut bad = small_request(4);
    bad.solver = "no-such-solver".into();
    remote.generate(bad).expect("sent");
    let failed = until_final(&remote);
    assert!(
        matches!(failed.as_slice(), [Event::Failed { id: Some(_), error }] if error.contains("no-such-solver")),
        "{failed:?}"
    );
    remote.generate(small_request(2)).expect("sent");
    assert!(matches!(until_final(&remote).last(), Some(Event::Finished { .. })));
}

#[test]
fn cancelling_a_remote_job_stops_it_on_the_server_and_the_event_stream_shows_every_job() {
    let s = server(ServeConfig {
        tokens: vec!["sesame".into()],
        ..ServeConfig::default()
    });
    // Wrong credentials: a clear line, nothing loaded.
    let stranger = remote_engine(s.addr, "guess");
    stranger.load_model(ModelSpec::new("latent-studio-default")).expect("sent");
    let refused = until_final(&stranger);
    assert!(
        matches!(refused.last(), Some(Event::Failed { id: None, error }) if error.contains("refused the credentials")),
        "{refused:?}"
    );

    // Everything the engine says, as server-sent events.
    let mut watcher = TcpStream::connect(s.addr).expect("connect");
    watcher
        .write_all(
            format!(
                "GET /latent/v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer sesame\r\n\r\n",
                s.addr
            )
            .as_bytes(),
        )
        .expect("write");
    watcher.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");

    let remote = remote_engine(s.addr, "sesame");
    remote.load_model(ModelSpec::new("latent-studio-default")).expect("sent");
    assert!(matches!(until_final(&remote).last(), Some(Event::ModelLoaded { .. })));
    let id = remote.generate(small_request(400)).expect("sent");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match remote.recv_timeout(Duration::from_millis(200)) {
            Some(Event::Progress { step, .. }) if step >= 2 => break,
            Some(e) => assert!(!e.is_final(), "{e:?}"),
            None => assert!(Instant::now() < deadline, "no progress"),
        }
    }
    remote.cancel(id);
    let rest = until_final(&remote);
    assert!(
        matches!(rest.last(), Some(Event::Cancelled { at_step, .. }) if *at_step >= 2 && *at_step < 400),
        "{rest:?}"
    );
    // The server stopped the job too (its client hung up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = String::from_utf8_lossy(&http(s.addr, "GET", "/metrics", &[("Authorization", "Bearer sesame")], b"").body).to_string();
        if m.contains("latent_jobs_total{outcome=\"cancelled\"} 1") && m.contains("latent_queue_depth 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the server's job was not cancelled: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An A1111 job is seen on the event stream too.
    let r = http(
        s.addr,
        "POST",
        "/sdapi/v1/txt2img",
        &[("Authorization", "Bearer sesame")],
        small(3).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains("event: finished") {
        if let Ok(n) = watcher.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");
    for name in ["event: started", "event: progress", "event: cancelled", "event: finished"] {
        assert!(text.contains(name), "{name} missing from the stream");
    }
    assert!(text.contains("\"step\":3"), "the A1111 job's steps are there");
}

#[test]
fn the_solver_lab_runs_on_a_server_as_on_the_local_engine() {
    use latent_engine::protocol::CompareRequest;
    let s = server(ServeConfig::default());
    let remote = remote_engine(s.addr, "");
    remote
        .load_model(ModelSpec::new("latent-studio-default.safetensors"))
        .expect("sent");
    assert!(matches!(until_final(&remote).last(), Some(Event::ModelLoaded { .. })));
    let request = CompareRequest {
        base: small_request(1),
        solvers: vec!["euler".into(), "unipc".into()],
        budgets: vec![1, 8],
        reference_solver: "dpm++2m".into(),
        reference_steps: 20,
    };
    remote.compare(request.clone()).expect("sent");
    let events = until_final(&remote);
    let cells: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::CompareCell { cell, .. } = e {
                Some(cell.as_ref().clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(cells.len(), 4, "{events:?}");
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    // The same cells as on this machine's engine (a budget of 1 buys no step with CFG).
    let local = EngineHandle::spawn(EngineConfig::default(), || {}).expect("engine");
    local
        .load_model(ModelSpec::new(latent_studio::assets::embedded_model().expect("embedded")))
        .expect("sent");
    until_final(&local);
    local.compare(request).expect("sent");
    let here: Vec<_> = until_final(&local)
        .into_iter()
        .filter_map(|e| {
            if let Event::CompareCell { cell, .. } = e {
                Some(*cell)
            } else {
                None
            }
        })
        .collect();
    for (r, l) in cells.iter().zip(&here) {
        assert_eq!(
            (&r.solver, r.budget, r.steps, r.nfe, &r.image, &r.metadata),
            (&l.solver, l.budget, l.steps, l.nfe, &l.image, &l.metadata)
        );
        if l.steps == 0 {
            assert!(r.latent_rel_l2.is_nan() && r.image.is_none());
        } else {
            // Through JSON's decimal text: equal to the last bits or so.
            assert!((r.latent_rel_l2 - l.latent_rel_l2).abs() <= 1e-12 * l.latent_rel_l2);
            assert!((r.psnr - l.psnr).abs() <= 1e-12 * l.psnr || (r.psnr.is_infinite() && l.psnr.is_infinite()));
        }
    }
}
