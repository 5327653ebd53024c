//! The server's `tracing` events, captured for assertions: a layer on a
//! global subscriber (so a test binary that uses it installs it once, and
//! its tests share what it saw).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// One event seen: its level and fields, with `event_target` (the event's
/// target) and `thread` (the name of the thread that emitted it) added.
pub type Seen = (tracing::Level, HashMap<String, String>);

/// Every event captured so far, in order.
pub fn seen() -> &'static Mutex<Vec<Seen>> {
    static SEEN: OnceLock<Mutex<Vec<Seen>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// The events captured so far (also after a test that panicked holding them).
pub fn events() -> std::sync::MutexGuard<'static, Vec<Seen>> {
    seen().lock().unwrap_or_else(|p| p.into_inner())
}

struct Capture {
    target_prefix: &'static str,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with(self.target_prefix) {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        f.0.insert("event_target".into(), event.metadata().target().into());
        let thread = std::thread::current();
        f.0.insert("thread".into(), thread.name().unwrap_or("").into());
        events().push((*event.metadata().level(), f.0));
    }
}

/// Installs the capture, as the global subscriber, of the events at `level`
/// or above whose target starts with `target_prefix`; the first call in a
/// test binary decides both.
pub fn install(target_prefix: &'static str, level: LevelFilter) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let capture = Capture { target_prefix }.with_filter(level);
        let sub = tracing_subscriber::registry().with(capture);
        tracing::subscriber::set_global_default(sub).unwrap();
    });
}

/// The field `name` of an event (empty if it has none).
pub fn field<'a>(s: &'a Seen, name: &str) -> &'a str {
    s.1.get(name).map(String::as_str).unwrap_or("")
}

/// Waits until `cond` holds of the events captured; fails the test, naming
/// `what`, after 10 s.
pub fn wait_for_events(what: &str, cond: impl Fn(&[Seen]) -> bool) {
    let saw = super::poll::wait_until(Duration::from_secs(10), || cond(&events()));
    assert!(saw, "never saw {what}");
}
