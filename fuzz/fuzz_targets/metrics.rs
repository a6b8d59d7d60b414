//! The metrics reader: any text gives at most one record per line, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (records, _torn) = facestudio::run::parse_metrics(&text);
    assert!(records.len() <= text.lines().count());
});
