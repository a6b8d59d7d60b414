//! The studio on a hostile terminal: a pseudo-terminal that never answers capability queries
//! and is read back slowly, as over a thin SSH link. The studio must start within its query
//! timeout, keep answering keys, never let its unsent output pile up, and exit cleanly.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pseudo-terminal pair of `cols` x `rows` cells: (controller, device).
fn openpty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut controller, mut device) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers are valid for the call; the name buffer may be null.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut device,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(device),
        )
    }
}

/// Resident memory of a process in KiB, 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_silent_terminal_neither_hangs_the_studio_nor_queues_its_output() {
    let dir = tempfile::tempdir().unwrap();
    common::write_small_config(dir.path(), 100_000);
    let (controller, device) = openpty(100, 30);

    let mut cmd = Command::new(common::bin());
    cmd.args(["--run", "slow"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join(".cache"))
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(Stdio::from(device.try_clone().unwrap()))
        .stdout(Stdio::from(device.try_clone().unwrap()))
        .stderr(Stdio::from(device));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pseudo-terminal on stdin, as a login shell would have.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    // The child holds the device side now; the link sees the end when the studio exits.
    drop(cmd);

    // The link: about 16 KiB/s, and nothing ever answers a query.
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut reader = File::from(controller.try_clone().unwrap());
    let (r, d) = (received.clone(), done.clone());
    let link = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut seen = Vec::new();
        // Throttled while the studio runs; drained at full speed once it has exited.
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    r.fetch_add(n, Ordering::SeqCst);
                    if seen.len() < 1 << 22 {
                        seen.extend_from_slice(&buf[..n]);
                    }
                }
            }
            if !d.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        seen
    });

    let first_frame = loop {
        if received.load(Ordering::SeqCst) > 2000 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no frame within 30 s on a silent terminal"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the studio exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // Let it draw for a while over the slow link, watching its memory.
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(3));
    let rss_before = rss_kib(pid);
    std::thread::sleep(Duration::from_secs(8));
    let rss_after = rss_kib(pid);

    let mut keys = File::from(controller);
    keys.write_all(b"q").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    keys.write_all(b"s").unwrap();
    let asked = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if asked.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the studio did not quit within 60 s of q, s over a slow link");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    done.store(true, Ordering::SeqCst);
    drop(keys);
    let seen = link.join().unwrap();
    let text = String::from_utf8_lossy(&seen);

    eprintln!(
        "first frame after {first_frame:?}; quit took {:?}; {} bytes read; rss {rss_before} -> \
         {rss_after} KiB",
        asked.elapsed(),
        received.load(Ordering::SeqCst)
    );
    assert!(status.success(), "the studio exited with {status}");
    assert!(
        first_frame < Duration::from_secs(10),
        "the first frame took {first_frame:?}: the capability queries did not time out"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the studio grew from {rss_before} to {rss_after} KiB while its output waited"
    );
    let entered = text
        .find("\x1b[?1049h")
        .expect("the alternate screen was never entered");
    let left = text
        .rfind("\x1b[?1049l")
        .expect("the alternate screen was never left");
    assert!(
        left > entered,
        "the terminal was not given back after the studio drew"
    );
    // The trainer the studio started was stopped, not orphaned.
    let status_json =
        std::fs::read_to_string(dir.path().join("runs/slow/status.json")).unwrap_or_default();
    assert!(status_json.contains("\"stopped\""), "{status_json}");
}
