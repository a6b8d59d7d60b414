//! The NPY reader: any file gives images or an error that names the file, never a panic or an
//! allocation the file's size does not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("facestudio-fuzz-{}.npy", std::process::id()));
    std::fs::write(&path, data).expect("writing the input");
    match facestudio::data::npy::read(&path) {
        Ok(images) => assert!(images.pixels.len() <= data.len()),
        Err(e) => assert!(e.to_string().contains("facestudio-fuzz-"), "{e}"),
    }
});
