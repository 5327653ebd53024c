//! A switch-routed flow: each document goes to the one branch that suits it.
//!
//! ```text
//! sequential
//! ├── thread   Normalise           (id, raw text) -> Doc
//! ├── switch   by text length
//! │   ├── 0: thread    Glance      short texts: cheap, stay in the server process
//! │   ├── 1: sequential            long texts: heavy, in a pool of processes
//! │   │   ├── process  Tokenise (2 processes)
//! │   │   └── process  Profile
//! │   └── 2: thread    Reject      empty texts: an error, as a value
//! └── thread   Render              Summary -> String
//! ```
//!
//! Every branch of a switch takes and returns the same types (here `Doc` and
//! `Summary`), and any servlet can be a branch, a sequence included. Results
//! come back in input order (`stream_with`), errors in their place
//! (`return_exceptions(true)`), and the servlet tree's counters show how many
//! items took each route.
//!
//! Run: `cargo run --example switch`

use std::collections::BTreeMap;

use mpserver::metrics::ServletSnapshot;
use mpserver::prelude::*;
use serde::{Deserialize, Serialize};

/// A document after normalisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doc {
    id: usize,
    text: String,
}

/// A document cut into lower-case words (between the two process stages).
#[derive(Debug, Serialize, Deserialize)]
struct Tokens {
    id: usize,
    words: Vec<String>,
}

/// What every branch produces.
#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    id: usize,
    route: String,
    words: usize,
    note: String,
}

fn normalise((id, raw): (usize, String)) -> Doc {
    let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    Doc { id, text }
}

/// Which branch a document takes.
fn route(d: &Doc) -> usize {
    match d.text.len() {
        0 => 2,
        1..=40 => 0,
        _ => 1,
    }
}

/// Branch 0: a glance is enough for a short text.
fn glance(d: Doc) -> Summary {
    Summary {
        id: d.id,
        route: "short".into(),
        words: d.text.split(' ').count(),
        note: format!("{:?}", d.text),
    }
}

/// Branch 1, stage 1 (a process worker).
#[derive(Serialize, Deserialize)]
struct Tokenise;

impl Worker for Tokenise {
    type Input = Doc;
    type Output = Tokens;
    fn call(&mut self, d: Doc) -> Result<Tokens, WorkerError> {
        let words = d
            .text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        Ok(Tokens { id: d.id, words })
    }
}

/// Branch 1, stage 2 (a process worker): the most frequent long word.
#[derive(Serialize, Deserialize)]
struct Profile {
    min_len: usize,
}

impl Worker for Profile {
    type Input = Tokens;
    type Output = Summary;
    fn call(&mut self, t: Tokens) -> Result<Summary, WorkerError> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for w in t.words.iter().filter(|w| w.chars().count() >= self.min_len) {
            *counts.entry(w).or_default() += 1;
        }
        // Highest count; ties go to the alphabetically first word.
        let top = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        let note = match top {
            Some((w, n)) => format!("most frequent long word {w:?} ({n}x)"),
            None => "no long words".to_string(),
        };
        Ok(Summary {
            id: t.id,
            route: "long".into(),
            words: t.words.len(),
            note,
        })
    }
}

/// Branch 2: an empty document is an error for that item only.
fn reject(d: Doc) -> Result<Summary, WorkerError> {
    Err(WorkerError::new(
        "EmptyDocument",
        format!("document {} has no text", d.id),
    ))
}

fn render(s: Summary) -> String {
    format!("#{} {:<5} {:>3} words: {}", s.id, s.route, s.words, s.note)
}

const DOCS: &[&str] = &[
    "The quick brown fox.",
    "Servlets are only a description of the flow; the server starts them, \
     connects them and feeds them. A servlet runs a worker in processes or \
     threads, and compound servlets arrange other servlets.",
    "   ",
    "Hello,   world!",
    "A switch servlet sends each item to exactly one member, picked by a \
     function of the item. Members may be simple or compound servlets, and \
     every member takes and returns the same types as the switch.",
    "",
    "Short again.",
];

fn items_in(s: &ServletSnapshot) -> u64 {
    // A compound branch counts the items that entered its first stage.
    if s.members.is_empty() {
        s.items_in
    } else {
        items_in(&s.members[0])
    }
}

fn main() -> Result<(), mpserver::Error> {
    let switch = SwitchServlet::new(route)
        .member(ThreadServlet::new(worker_fn(glance)).name("Glance"))
        .member(sequential![
            ProcessServlet::new(Tokenise).workers(2),
            ProcessServlet::new(Profile { min_len: 5 }),
        ])
        .member(ThreadServlet::new(try_worker_fn(reject)).name("Reject"));
    let flow = sequential![
        ThreadServlet::new(worker_fn(normalise)).name("Normalise"),
        switch,
        ThreadServlet::new(worker_fn(render)).name("Render"),
    ];
    let server = Server::start(flow)?;

    let inputs: Vec<(usize, String)> = DOCS
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.to_string()))
        .collect();
    let opts = StreamOptions::default().return_exceptions(true);
    for result in server.stream_with(inputs, opts) {
        match result {
            Ok(line) => println!("{line}"),
            Err(e) => match e.worker_error() {
                Some(w) => println!("error {}: {}", w.type_name(), w.message()),
                None => println!("error: {e}"),
            },
        }
    }

    // The servlet tree mirrors the flow: sequential [normalise, switch, render].
    let tree = server.servlets();
    let switch = &tree.members[1];
    let routes: Vec<String> = ["short", "long", "empty"]
        .iter()
        .zip(&switch.members)
        .map(|(name, m)| format!("{name} {}", items_in(m)))
        .collect();
    println!("routes: {}", routes.join(", "));
    Ok(())
}
