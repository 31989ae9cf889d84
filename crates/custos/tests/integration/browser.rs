//! A real headless Chromium, driven through ChromeDriver's WebDriver protocol (W3C), for the
//! page tests. Debian's `chromium` and `chromium-driver` are installed by `scripts/test.sh`;
//! when they are missing or can't start, the tests fail and say so, never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::http;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C's name for an element reference in a WebDriver answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";

/// One browser at a time: two Chromiums on two cores make every test slow.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Browser {
    driver: Child,
    address: String,
    session: String,
    pub downloads: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a window of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let guard = ONE_BROWSER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "the page tests need Debian's chromium and chromium-driver, and {program} is missing: \
                 run scripts/test.sh (it installs them), or apt-get install chromium chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ChromeDriver ({CHROMEDRIVER}) did not start: {e}"));
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "ChromeDriver did not listen on {address} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let downloads = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--disable-background-networking",
                         format!("--window-size={width},{height}")],
                "prefs": {"download.default_directory": downloads.path(), "download.prompt_for_download": false},
            },
        }}});
        let reply = http(
            &address,
            "POST",
            "/session",
            &[],
            Some(&capabilities.to_string()),
        );
        let answer: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start a session: {}", reply.body))
            .to_owned();
        Browser {
            driver,
            address,
            session,
            downloads,
            _one_at_a_time: guard,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let reply = http(
            &self.address,
            method,
            &format!("/session/{}{path}", self.session),
            &[],
            body.map(|b| b.to_string()).as_deref(),
        );
        let answer: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        if reply.status == 200 {
            Ok(answer["value"].clone())
        } else {
            Err(format!("{method} {path}: {} {}", reply.status, reply.body))
        }
    }

    fn expect(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub fn open(&self, url: &str) {
        self.expect("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.expect("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn source(&self) -> String {
        self.expect("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every element matching a CSS selector.
    pub fn all(&self, css: &str) -> Vec<String> {
        self.expect(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map(|elements| {
            elements
                .iter()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The one element matching `css`, failing with the page's text if there is none.
    pub fn find(&self, css: &str) -> String {
        self.all(css).into_iter().next().unwrap_or_else(|| {
            panic!(
                "no element matches `{css}` on {}:\n{}",
                self.url(),
                self.text("body")
            )
        })
    }

    /// Clicks what does not leave the page (a radio button, a download link).
    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.expect(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Clicks a button or link that loads another page, and waits until that page has loaded:
    /// WebDriver's click does not always wait for a navigation it starts.
    pub fn follow(&self, css: &str) {
        let old = self.find("html");
        self.click(css);
        let deadline = Instant::now() + Duration::from_secs(15);
        // The old page's root goes stale once the new page replaces it.
        while self
            .command("GET", &format!("/element/{old}/name"), None)
            .is_ok()
        {
            assert!(Instant::now() < deadline, "clicking `{css}` loaded no page");
            std::thread::sleep(Duration::from_millis(20));
        }
        while self.expect(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.readyState", "args": []})),
        ) != "complete"
        {
            assert!(
                Instant::now() < deadline,
                "the page after `{css}` did not finish loading"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.expect(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let Some(element) = self.all(css).into_iter().next() else {
            return String::new();
        };
        self.expect("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a PNG of the window as `<name>.png`: under cargo's temporary folder for tests, or,
    /// with `CUSTOS_UPDATE_SCREENSHOTS=1`, under `docs/screenshots/`, which the README shows. (A
    /// plain test run then leaves the checkout as it was: the pages show times and random ids.)
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.expect("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot must be a PNG");
        let folder = if std::env::var_os("CUSTOS_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            crate::support::repo_root().join("docs/screenshots")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
        };
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Presses one key (a WebDriver key code, e.g. [`TAB`] or [`ENTER`]) on whatever has the
    /// focus, as a keyboard would.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.expect("POST", "/actions", Some(actions));
    }

    /// Shift+Tab: the focus moves back one.
    pub fn back_tab(&self) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": SHIFT}, {"type": "keyDown", "value": TAB},
            {"type": "keyUp", "value": TAB}, {"type": "keyUp", "value": SHIFT}]}]});
        self.expect("POST", "/actions", Some(actions));
    }

    /// The text (or, for a field, the name) of the element that has the focus.
    pub fn focused(&self) -> String {
        let active = self.expect("GET", "/element/active", None);
        let element = active[ELEMENT].as_str().unwrap_or_default().to_owned();
        let text = self
            .expect("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if text.is_empty() {
            self.expect("GET", &format!("/element/{element}/attribute/name"), None)
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            text
        }
    }

    /// The size of the first element matching `css`: (width, height).
    pub fn size(&self, css: &str) -> (f64, f64) {
        let element = self.find(css);
        let rect = self.expect("GET", &format!("/element/{element}/rect"), None);
        (
            rect["width"].as_f64().unwrap_or(0.0),
            rect["height"].as_f64().unwrap_or(0.0),
        )
    }

    /// The file downloaded into this browser's folder whose name starts with `prefix`, once it
    /// is whole.
    pub fn downloaded(&self, prefix: &str) -> (String, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let named: Vec<PathBuf> = std::fs::read_dir(self.downloads.path())
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect();
            let partial = |p: &PathBuf| {
                p.extension()
                    .is_some_and(|e| e == "crdownload" || e == "tmp")
            };
            // Chromium makes an empty file of the final name when a download starts, and
            // fills it from its `.crdownload` at the end: a download is whole once no partial
            // file is left beside it.
            let files: Vec<&PathBuf> = if named.iter().any(partial) {
                Vec::new()
            } else {
                // (Every download of these tests has content: an empty one is not done yet.)
                named
                    .iter()
                    .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
                    .collect()
            };
            if let Some(file) = files.first() {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                return (name, std::fs::read(file).unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "no `{prefix}…` was downloaded within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
