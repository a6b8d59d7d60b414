//! The checkpoint metadata reader: any bytes give metadata or an error that names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = facestudio::checkpoint::parse_meta(data, Path::new("step-00000001.json")) {
        assert!(e.to_string().contains("step-00000001.json"), "{e}");
    }
});
