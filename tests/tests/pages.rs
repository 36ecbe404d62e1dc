//! The patient page in a real headless Chromium against a live server:
//! it shows the status and ETA, updates when the status changes, and says
//! when its link is no longer valid. Screenshots land in `tests/artifacts/`.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]

use rxtrack_tests::browser::Browser;
use rxtrack_tests::*;
use serde_json::json;

#[tokio::test]
async fn the_patient_page_shows_and_follows_the_status() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    let page = s.url(&format!("/t/{token}"));

    // The page's own headers: strict CSP, no referrer, no caching, no indexing.
    let res = http().get(&page).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["x-robots-tag"].to_str().unwrap().contains("noindex"));
    let html = res.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no third-party resources"
    );

    let mut b = Browser::launch().await;
    b.open(&page).await;
    let status = "document.getElementById('status').textContent";
    b.wait_for(status, &json!("Scheduled"), 15).await;
    assert_eq!(
        b.eval("document.getElementById('status').getAttribute('role')")
            .await,
        json!("status")
    );
    assert_eq!(
        b.eval("document.getElementById('status').getAttribute('aria-live')")
            .await,
        json!("polite")
    );
    // The pharmacy's name, where the order stands, and what comes next.
    assert_eq!(
        b.eval("document.getElementById('from').textContent").await,
        json!("From Apteekki Acme")
    );
    let done = "Array.from(document.querySelectorAll('#progress li')).map(li => li.dataset.done + ':' + (li.getAttribute('aria-current') || '')).join(',')";
    assert_eq!(b.eval(done).await, json!("no:step,no:,no:,no:"));
    let next = "document.getElementById('next').textContent";
    assert!(
        b.eval(next)
            .await
            .as_str()
            .unwrap()
            .contains("being prepared")
    );
    assert!(
        b.eval("document.getElementById('updated').textContent")
            .await
            .as_str()
            .unwrap()
            .starts_with("Last updated ")
    );
    assert_eq!(
        b.eval("document.getElementById('stops').textContent").await,
        json!("—"),
        "no 'you are next' before the order is on its way"
    );
    b.screenshot("patient-page-scheduled.png").await;

    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    b.wait_for(status, &json!("On the way"), 15).await;
    b.wait_for(
        "document.getElementById('stops').textContent",
        &json!("None: you are next"),
        5,
    )
    .await;
    b.wait_for(
        "document.getElementById('eta').textContent",
        &json!("Updating…"),
        5,
    )
    .await;
    // No fix yet: the page says what happens next rather than a stale time.
    assert!(
        b.eval(next)
            .await
            .as_str()
            .unwrap()
            .contains("position is updating")
    );
    assert_eq!(b.eval(done).await, json!("yes:,no:step,no:,no:"));

    // A driver fix gives an ETA window, shown in the viewer's local time.
    let mut d = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(
        &mut d,
        &json!({"type":"ping","seq":1,"ts":now_ms(),"lat":60.160,"lng":24.9414,"speed":10.0}),
    )
    .await;
    until_ack(&mut d).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let eta = b.eval("document.getElementById('eta').textContent").await;
        if eta.as_str().is_some_and(|t| t.contains('–')) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ETA window shown: {eta}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.screenshot("patient-page-en-route.png").await;

    call(
        http()
            .post(s.url("/v1/deliveries/rx-1/link/revoke"))
            .bearer_auth(&disp),
    )
    .await;
    b.wait_for(status, &json!("This tracking link is no longer valid"), 15)
        .await;
    b.screenshot("patient-page-revoked.png").await;
}

#[tokio::test]
async fn the_dispatcher_page_draws_the_drivers() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    s.post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    let res = http().get(s.url("/dispatch")).send().await.unwrap();
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    let mut b = Browser::launch().await;
    b.open(&s.url("/dispatch")).await;
    b.eval(&format!(
        "document.getElementById('token').value = '{disp}'; document.getElementById('login').requestSubmit(); true"
    ))
    .await;
    b.wait_for(
        "document.getElementById('state').textContent",
        &json!("Live"),
        15,
    )
    .await;
    // The token left the form and the URL.
    assert_eq!(
        b.eval("document.getElementById('token').value").await,
        json!("")
    );
    assert_eq!(b.eval("location.search").await, json!(""));

    let mut d = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    for seq in 1..=3 {
        send_json(&mut d, &ping(seq)).await;
        until_ack(&mut d).await;
    }
    b.wait_for(
        "document.getElementById('driver-count').textContent",
        &json!("1"),
        15,
    )
    .await;
    b.wait_for(
        "document.querySelector('#drivers li').dataset.driver",
        &json!("d1"),
        5,
    )
    .await;
    // The driver's marker is on the canvas (its dark blue fill).
    let marker = "(() => { const c = document.getElementById('map'); \
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
        for (let i = 0; i < d.length; i += 4) if (d[i] < 30 && d[i + 1] > 30 && d[i + 1] < 60 && d[i + 2] > 80 && d[i + 2] < 110 && d[i + 3] > 200) n++; \
        return n > 20; })()";
    b.wait_for(marker, &json!(true), 10).await;
    // Events arrive in the feed.
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    b.wait_for(
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('delivery.picked_up'))",
        &json!(true),
        10,
    )
    .await;
    b.screenshot("dispatcher-page.png").await;
}

#[tokio::test]
async fn a_configured_tile_layer_is_allowed_and_nothing_else() {
    let s = Server::start_with(
        "map_tile_url = \"https://tile.example.org/{z}/{x}/{y}.png?k=1&s=2\"\n",
        &[],
    );
    let res = http().get(s.url("/dispatch")).send().await.unwrap();
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("img-src 'self' https://tile.example.org;"),
        "{csp}"
    );
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = res.text().await.unwrap();
    assert!(
        html.contains(r#"<meta name="rxtrack-tiles" content="https://tile.example.org/{z}/{x}/{y}.png?k=1&amp;s=2">"#),
        "{html}"
    );
    // Without the setting, the page names no other origin at all.
    let plain = Server::start();
    let res = http().get(plain.url("/dispatch")).send().await.unwrap();
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("img-src 'self';")
    );
}
