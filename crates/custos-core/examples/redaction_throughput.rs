//! Redaction throughput in MB/s over a synthetic corpus like chat and coding-session text:
//! `cargo run --release -p custos-core --example redaction_throughput [MEGABYTES]`.

use custos_core::redaction::{Counts, Redactor};

const LINES: &[&str] = &[
    "Can you help me plan a week of vegetarian dinners? I like lentils and spinach.",
    "Explain the difference between TCP and UDP like I'm new to networking.",
    "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x.iter().sum::<i32>()); }",
    "My email is jane.doe@example.com, please format my CV header.",
    "Call me at +1 415 555 0134 if the booking changes.",
    "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE and password=hunter22 in the config",
    "The server at 10.0.0.12 returns 502 since version 2.4.1 was deployed on 2025-10-01.",
    "I paid with card 4111 1111 1111 1111 and was charged twice.",
    "SELECT id, name FROM users WHERE created_at > now() - interval '30 days' ORDER BY id;",
    "Refactor this function to avoid the nested loops; it runs in O(n^2) for 10000 items.",
];

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let mut texts = Vec::new();
    let mut size = 0;
    let mut index = 0usize;
    while size < megabytes << 20 {
        // Messages of one to four lines, as chat turns are.
        let lines = 1 + index % 4;
        let text: Vec<&str> = (0..lines)
            .filter_map(|i| LINES.get((index * 7 + i * 3) % LINES.len()).copied())
            .collect();
        let text = text.join("\n");
        size += text.len();
        texts.push(text);
        index += 1;
    }
    let redactor = Redactor::new();
    let mut counts = Counts::new();
    let started = std::time::Instant::now();
    let mut out = 0usize;
    for text in &texts {
        out += redactor.redact(text, &mut counts).len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "redacted {:.1} MB in {} texts in {seconds:.2} s: {:.1} MB/s ({out} bytes out); {counts:?}",
        size as f64 / 1e6,
        texts.len(),
        size as f64 / 1e6 / seconds
    );
}
