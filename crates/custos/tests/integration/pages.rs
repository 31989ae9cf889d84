//! The pages, in a real headless Chromium against the real binary (manual clock): signup,
//! the notice before and after the deadline, switching training off, deleting a conversation,
//! downloading my data, erasing the account, and the dashboard's charts. Each test saves a
//! screenshot (see `Browser::screenshot`). A last test speaks plain HTTP
//! to check what a browser would not show: roles, form tokens, headers.

use serde_json::{Value, json};

use crate::browser::{Browser, ENTER, TAB};
use crate::http::{NOTICE, Server, message, signup};
use crate::support::http;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.address)
}

fn sign_in(browser: &Browser, server: &Server, who: &str) {
    browser.open(&url(server, "/signin"));
    browser.type_into("#token", &server.tokens[who]);
    browser.follow("form[action='/signin'] button[type=submit]");
}

fn gate(server: &Server, account: &str) -> Value {
    server
        .call(
            "GET",
            &format!("/v1/accounts/{account}/gate"),
            Some("service"),
            None,
        )
        .body
}

/// The "used for training?" cell of every conversation row.
fn training_cells(browser: &Browser) -> Vec<String> {
    let rows = browser.all("#conversation-list tbody tr");
    (1..=rows.len())
        .map(|n| {
            browser.text(&format!(
                "#conversation-list tbody tr:nth-child({n}) td.training"
            ))
        })
        .collect()
}

#[test]
fn signing_up_needs_a_plan_and_on_a_consumer_plan_a_choice_with_nothing_preselected() {
    let server = Server::start("2025-10-01T00:00:00Z");
    let browser = Browser::start(1280, 1400);
    browser.open(&url(&server, "/signup"));
    assert!(
        browser.all("input:checked").is_empty(),
        "nothing may be preselected"
    );
    browser.click("input[name=plan][value=pro]");
    browser.follow("form[action='/signup'] button[type=submit]");
    // Refused without the training choice; the plan chosen stays chosen.
    assert!(
        browser.text("[role=alert]").contains("Choose whether"),
        "{}",
        browser.text("main")
    );
    assert_eq!(browser.all("input[name=plan][value=pro]:checked").len(), 1);
    assert!(browser.all("input[name=training]:checked").is_empty());
    browser.click("input[name=training][value=decline]");
    browser.screenshot("signup");
    browser.follow("form[action='/signup'] button[type=submit]");
    assert!(
        browser.url().ends_with("/privacy?done=welcome"),
        "{}",
        browser.url()
    );
    assert_eq!(browser.text("#current-choice"), "Not allowed");
    // The store holds the choice as evidence, made at signup under the notice in force.
    let account = browser.text("main p.explain code");
    assert!(account.starts_with("acct_"), "{account}");
    let view = server.call(
        "GET",
        &format!("/v1/accounts/{account}"),
        Some("service"),
        None,
    );
    assert_eq!(view.body["plan"], "pro");
    assert_eq!(view.body["preference"]["state"], "declined");
    assert_eq!(view.body["preference"]["channel"], "signup");
    assert_eq!(view.body["preference"]["notice"], NOTICE);
    assert!(browser.source().contains("Download receipt"));
    browser.screenshot("privacy-settings-new-account");
}

#[test]
fn the_notice_offers_not_now_before_the_deadline_and_blocks_after_it_until_a_choice() {
    // u1 signed up before the policy took effect, so it has not chosen.
    let server = Server::start("2025-08-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "free", None).status, 201);
    server.set_clock("2025-09-10T00:00:00Z");
    assert_eq!(gate(&server, "u1")["decision"], "prompt");
    {
        let browser = Browser::start(1280, 1100);
        sign_in(&browser, &server, "user");
        // Signed in while the gate says `prompt`: the notice comes first.
        assert!(browser.url().ends_with("/notice"), "{}", browser.url());
        browser.open(&url(&server, "/privacy"));
        assert!(browser.text(".banner.warn").contains("haven't chosen"));
        browser.open(&url(&server, "/notice"));
        // Two answers of equal weight; nothing chosen for the person.
        let allow = browser.size("button[name=answer][value=allow]");
        let decline = browser.size("button[name=answer][value=decline]");
        assert_eq!(
            allow, decline,
            "Allow and Don't allow must be the same size"
        );
        assert_eq!(browser.text("button[name=answer][value=allow]"), "Allow");
        assert_eq!(
            browser.text("button[name=answer][value=decline]"),
            "Don't allow"
        );
        assert!(browser.all("input:checked").is_empty());
        browser.screenshot("notice-before-deadline");
        browser.follow("button[name=answer][value=later]");
        assert!(
            browser.url().ends_with("/privacy?done=later"),
            "{}",
            browser.url()
        );
        // "Not now" records only that the notice was shown.
        let history = server.call(
            "GET",
            "/v1/accounts/u1/training-preference/history",
            Some("service"),
            None,
        );
        let kinds: Vec<&str> = history.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["created", "notice_shown"]);
        assert_eq!(gate(&server, "u1")["decision"], "prompt");

        server.set_clock("2025-10-05T00:00:00Z");
        assert_eq!(gate(&server, "u1")["decision"], "block");
        browser.open(&url(&server, "/notice"));
        assert_eq!(browser.text("h1"), "Choose to continue");
        assert!(
            browser.all("button[name=answer][value=later]").is_empty(),
            "no \"Not now\" after the deadline"
        );
        browser.screenshot("notice-after-deadline");
    }
    // On a phone-sized screen, the blocked person chooses.
    let phone = Browser::start(390, 844);
    sign_in(&phone, &server, "user");
    assert!(phone.url().ends_with("/notice"), "{}", phone.url());
    assert!(phone.text("[role=alert]").contains("deadline"));
    let allow = phone.size("button[name=answer][value=allow]");
    assert!(allow.0 <= 390.0, "the buttons fit a phone's width");
    phone.screenshot("notice-phone");
    phone.follow("button[name=answer][value=allow]");
    assert_eq!(phone.text("#current-choice"), "Allowed");
    assert_eq!(gate(&server, "u1")["decision"], "allow");
    let view = server.call("GET", "/v1/accounts/u1", Some("service"), None);
    assert_eq!(view.body["preference"]["channel"], "notice");
}

#[test]
fn a_keyboard_alone_reaches_both_answers_in_order_and_chooses() {
    let server = Server::start("2025-08-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "max", None).status, 201);
    server.set_clock("2025-09-10T00:00:00Z");
    let browser = Browser::start(1280, 1000);
    browser.open(&url(&server, "/signin"));
    browser.screenshot("signin");
    sign_in(&browser, &server, "user");
    assert!(browser.url().ends_with("/notice"), "{}", browser.url());
    // Tab from the top: the skip link first, then the header, then the answers in reading order.
    let mut order = Vec::new();
    for _ in 0..12 {
        browser.press(TAB);
        order.push(browser.focused());
        if order.last().is_some_and(|f| f == "Not now") {
            break;
        }
    }
    assert_eq!(
        order.first().map(String::as_str),
        Some("Skip to content"),
        "{order:?}"
    );
    let answers: Vec<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|f| ["Allow", "Don't allow", "Not now"].contains(f))
        .collect();
    assert_eq!(answers, ["Allow", "Don't allow", "Not now"], "{order:?}");
    // Back one, to "Don't allow", and choose it with Enter.
    browser.back_tab();
    assert_eq!(browser.focused(), "Don't allow");
    browser.press(ENTER);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !browser.url().contains("/privacy") {
        assert!(std::time::Instant::now() < deadline, "Enter chose nothing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let view = server.call("GET", "/v1/accounts/u1", Some("service"), None);
    assert_eq!(view.body["preference"]["state"], "declined");
    assert_eq!(view.body["preference"]["channel"], "notice");
}

/// u1 on `pro`, allowing training, with three conversations.
fn allowing_user_with_conversations() -> Server {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    for (n, (conversation, surface)) in [("c1", "chat"), ("c2", "code"), ("c3", "chat")]
        .into_iter()
        .enumerate()
    {
        message(
            &server,
            &format!("e{n}"),
            "u1",
            conversation,
            surface,
            "2025-10-01T00:00:00Z",
        );
    }
    server.set_clock("2025-10-02T00:00:00Z");
    server
}

#[test]
fn switching_training_off_turns_every_conversation_to_not_used_for_training() {
    let server = allowing_user_with_conversations();
    let browser = Browser::start(1280, 1300);
    sign_in(&browser, &server, "user");
    assert_eq!(browser.text("#current-choice"), "Allowed");
    assert_eq!(training_cells(&browser), ["Used for training"; 3]);
    browser.follow("form[action='/privacy/choice'] button[value=false]");
    assert!(browser.url().ends_with("/privacy?done=declined"));
    assert_eq!(browser.text("#current-choice"), "Not allowed");
    assert_eq!(training_cells(&browser), ["Not used for training"; 3]);
    assert!(
        browser
            .text("#conversation-list")
            .contains("You don't allow training.")
    );
    browser.screenshot("privacy-training-off");
    // The API says the same: the page and the API ask the same core.
    let list = server.call(
        "GET",
        "/v1/accounts/u1/conversations",
        Some("service"),
        None,
    );
    for conversation in list.body["conversations"].as_array().unwrap() {
        assert_eq!(conversation["eligible"], false);
        assert_eq!(conversation["reason"], "training_declined");
    }
    // Withdrawing is as easy as allowing: the same form, the other button.
    browser.follow("form[action='/privacy/choice'] button[value=true]");
    assert_eq!(browser.text("#current-choice"), "Allowed");
}

#[test]
fn deleting_a_conversation_removes_it_from_the_list_and_from_training_then_erasure_asks_first() {
    let server = allowing_user_with_conversations();
    let browser = Browser::start(1280, 1300);
    sign_in(&browser, &server, "user");
    assert_eq!(browser.all("#conversation-list tbody tr").len(), 3);
    browser.follow("tr[data-conversation=c2] button.danger");
    assert!(browser.text(".banner.ok").contains("deleted"));
    assert_eq!(browser.all("#conversation-list tbody tr").len(), 2);
    assert!(browser.all("tr[data-conversation=c2]").is_empty());
    let status = server.call("GET", "/v1/conversations/c2", Some("service"), None);
    assert_eq!(status.body["visible"], false, "{}", status.body);
    assert_eq!(status.body["eligible"], false);
    assert_eq!(status.body["reason"], "deleted");
    browser.screenshot("privacy-after-delete");

    // Erasure has a confirmation step.
    browser.follow("a[href='/privacy/erase']");
    assert_eq!(browser.text("h1"), "Erase my account");
    browser.screenshot("erase-confirmation");
    browser.click("input[name=confirm]");
    browser.follow("form[action='/privacy/erase'] button.danger");
    assert_eq!(browser.text("h1"), "Your account was erased");
    let gone = server.call("GET", "/v1/accounts/u1/gate", Some("service"), None);
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["type"], "account-erased");
    // The session ended with the account.
    browser.open(&url(&server, "/privacy"));
    assert!(browser.url().ends_with("/signin"), "{}", browser.url());
}

#[test]
fn download_my_data_and_a_receipt_from_the_settings_page() {
    let server = allowing_user_with_conversations();
    let browser = Browser::start(1280, 1300);
    sign_in(&browser, &server, "user");
    browser.click("a[href='/privacy/data']");
    let (name, bytes) = browser.downloaded("my-data");
    assert_eq!(name, "my-data.json");
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    let text = document.to_string();
    for expected in ["u1", "c1", "c2", "c3", "hello", "allowed"] {
        assert!(
            text.contains(expected),
            "my data lacks `{expected}`: {text}"
        );
    }
    browser.click("a[href^='/privacy/receipts/']");
    let (name, bytes) = browser.downloaded("consent-receipt-");
    let receipt: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(name.ends_with(".json"), "{name}");
    let body = receipt.to_string();
    assert!(body.contains("signature"), "a receipt is signed: {body}");
    browser.screenshot("privacy-settings");
}

#[test]
fn the_dashboard_draws_its_charts_from_the_figures() {
    let server = Server::start("2025-08-01T00:00:00Z");
    // Undecided accounts from before the policy took effect, then choices and activity.
    for n in 0..4 {
        assert_eq!(
            signup(&server, &format!("early{n}"), "max", None).status,
            201
        );
    }
    server.set_clock("2025-09-05T00:00:00Z");
    assert_eq!(signup(&server, "u1", "free", Some(true)).status, 201);
    assert_eq!(signup(&server, "u2", "pro", Some(false)).status, 201);
    assert_eq!(signup(&server, "org", "team", None).status, 201);
    message(&server, "m1", "u1", "c1", "chat", "2025-09-05T00:00:00Z");
    message(&server, "m2", "u2", "c2", "code", "2025-09-05T00:00:00Z");
    server.set_clock("2025-10-10T00:00:00Z");
    let swept = server.call("POST", "/v1/retention/sweeps", Some("admin"), None);
    assert_eq!(swept.status, 200, "{}", swept.body);
    let hold = json!({"id": "h1", "account": "u1", "reason": "litigation"}).to_string();
    assert_eq!(
        server
            .call("POST", "/v1/legal-holds", Some("admin"), Some(&hold))
            .status,
        201
    );
    let started = server.call(
        "POST",
        "/v1/exports",
        Some("trainer"),
        Some(&json!({"purpose": "model_training"}).to_string()),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let snapshot = started.body["snapshot_id"].as_str().unwrap().to_owned();
    wait_until(|| {
        server
            .call(
                "GET",
                &format!("/v1/exports/{snapshot}"),
                Some("trainer"),
                None,
            )
            .body["status"]
            == "done"
    });

    let browser = Browser::start(1280, 4200);
    sign_in(&browser, &server, "admin");
    assert!(browser.url().ends_with("/dashboard"), "{}", browser.url());
    // The figures are counted again on demand.
    browser.follow("form[action='/dashboard/refresh'] button");
    // The verification of the ledger runs in the background: wait for it.
    wait_until(|| {
        browser.open(&url(&server, "/dashboard"));
        !browser.all("#ledger-status").is_empty()
    });
    assert!(
        browser.text("#ledger-status").starts_with("Intact"),
        "{}",
        browser.text("#ledger-status")
    );
    let charts = browser.all("svg.chart");
    assert!(charts.len() >= 7, "{} charts", charts.len());
    let source = browser.source();
    // Every consumer plan's chart has bars, with the numbers written on them.
    for plan in ["free", "pro", "max"] {
        let title = format!("Plan {plan}: choices by week");
        let start = source
            .find(&title)
            .unwrap_or_else(|| panic!("no chart `{title}`"));
        let chart = &source[start..start + source[start..].find("</svg>").unwrap()];
        assert!(chart.contains("<rect"), "the `{plan}` chart has no bars");
        assert!(
            !chart.contains("No data yet"),
            "the `{plan}` chart is empty"
        );
    }
    let shares = browser.text("#shares");
    assert!(shares.contains("max 4 0.0% 0.0% 100.0%"), "{shares}");
    assert!(shares.contains("free 1 100.0%"), "{shares}");
    assert!(browser.text("#deadline + .figures, .figures").contains('4'));
    assert_eq!(browser.all("#export-list tbody tr").len(), 1);
    assert!(browser.source().contains(&snapshot));
    assert_eq!(browser.all("#sweep-list tbody tr").len(), 1);
    assert!(
        browser
            .text("#holds ~ .figures, section[aria-labelledby=holds]")
            .contains("litigation")
    );
    browser.screenshot("dashboard");
    // The manifest is one click away.
    browser.click(&format!("a[href='/dashboard/exports/{snapshot}']"));
    let (_, manifest) = browser.downloaded("manifest-");
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["snapshot_id"], snapshot.as_str());
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not done within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// What a browser does not show: every page checks its role, every form its token, and every
/// answer carries headers that keep other sites out.
#[test]
fn pages_check_roles_form_tokens_and_send_protective_headers() {
    let server = allowing_user_with_conversations();
    assert_eq!(signup(&server, "u2", "pro", Some(true)).status, 201);
    message(
        &server,
        "x1",
        "u2",
        "theirs",
        "chat",
        "2025-10-02T00:00:00Z",
    );
    let cookie = |who: &str| format!("custos_session={}", server.tokens[who]);
    let get = |path: &str, who: Option<&str>| {
        let cookie = who.map(cookie);
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        http(&server.address, "GET", path, &headers, None)
    };
    let post = |path: &str, who: &str, form: &str| {
        let cookie = cookie(who);
        let headers = [("Cookie", cookie.as_str()), FORM];
        http(&server.address, "POST", path, &headers, Some(form))
    };
    // Signed out: every personal page and the dashboard lead to the sign-in page.
    for path in [
        "/privacy",
        "/notice",
        "/privacy/data",
        "/privacy/erase",
        "/dashboard",
    ] {
        let reply = get(path, None);
        assert_eq!(reply.status, 303, "{path}");
        assert_eq!(reply.header("location"), "/signin", "{path}");
    }
    // Roles: a person can't open the dashboard; an operator has no personal settings.
    assert_eq!(get("/dashboard", Some("user")).status, 403);
    assert_eq!(get("/privacy", Some("admin")).status, 403);
    assert_eq!(get("/dashboard", Some("auditor")).status, 200);
    assert_eq!(get("/dashboard", Some("service")).status, 403);
    // Headers: no framing, no script, nothing cached; the cookie is HttpOnly and SameSite.
    let page = get("/privacy", Some("user"));
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy");
    assert!(
        policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let form = format!("token={}", server.tokens["user"]);
    let signed = http(&server.address, "POST", "/signin", &[FORM], Some(&form));
    assert_eq!(signed.status, 303);
    let set_cookie = signed.header("set-cookie");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    // A form without this session's token changes nothing.
    let forged = post("/privacy/choice", "user", "csrf=0000&allowed=false");
    assert_eq!(forged.status, 403);
    assert_eq!(
        server
            .call("GET", "/v1/accounts/u1", Some("service"), None)
            .body["preference"]["state"],
        "allowed"
    );
    // A person can't delete another's conversation: it looks like none.
    let csrf = hidden_csrf(&page.body);
    let theirs = post(
        "/privacy/conversations/theirs/delete",
        "user",
        &format!("csrf={csrf}"),
    );
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    let status = server.call("GET", "/v1/conversations/theirs", Some("service"), None);
    assert_eq!(status.body["visible"], true);
    // Erasure without the confirmation erases nothing.
    let unconfirmed = post("/privacy/erase", "user", &format!("csrf={csrf}"));
    assert_eq!(unconfirmed.status, 422);
    assert_eq!(gate(&server, "u1")["decision"], "allow");
    // A bad token signs nobody in, and its text never comes back.
    let bad = "token=not-a-token";
    let refused = http(&server.address, "POST", "/signin", &[FORM], Some(bad));
    assert_eq!(refused.status, 401);
    assert!(!refused.body.contains("not-a-token"));
    assert!(refused.header("set-cookie").is_empty());
}

fn hidden_csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..at + 32].to_owned()
}
