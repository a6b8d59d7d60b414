//! Taking over the terminal and giving it back: raw mode, the alternate screen and mouse
//! capture on entry; all three undone on quit, on an error return (the guard's drop), on a panic
//! (a hook that restores first, then prints the message and where the log is) and on
//! SIGTERM/SIGHUP (a flag the event loop turns into a clean exit).

use std::io::{self, Stdout, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crossterm::cursor::{Hide, Show};
use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// The terminal type the studio draws on.
pub type Term = Terminal<CrosstermBackend<Stdout>>;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// The signal that asked the studio to end (SIGTERM, SIGHUP or SIGINT), if any.
pub fn pending_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Why the studio cannot draw here, or `None` when it can.
///
/// The studio needs a terminal on both ends (keys in, a screen out) that can move its cursor:
/// `TERM=dumb` (Emacs shells, some CI logs) says it cannot, and drawing there only fills the
/// log with escape sequences.
pub fn unfit_reason() -> Option<String> {
    use std::io::IsTerminal;

    if !io::stdout().is_terminal() {
        return Some("stdout is not a terminal".into());
    }
    if !io::stdin().is_terminal() {
        return Some("stdin is not a terminal".into());
    }
    match std::env::var("TERM") {
        Ok(t) if t == "dumb" => {
            Some("the terminal is dumb (TERM=dumb): it cannot move the cursor".into())
        }
        _ => None,
    }
}

/// Owns the terminal while the studio runs; restores it when dropped.
pub struct TerminalGuard {
    /// The ratatui terminal.
    pub terminal: Term,
}

impl TerminalGuard {
    /// Enters raw mode, the alternate screen and mouse capture, and installs the panic hook
    /// and signal handlers; `log` is named after a panic.
    pub fn enter(log: PathBuf) -> io::Result<Self> {
        install_panic_hook(log);
        install_signal_handlers();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, EnableMouseCapture, Hide) {
            restore();
            return Err(e);
        }
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()));
        match terminal {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back (idempotent): mouse capture off, main screen, cursor, cooked mode.
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = io::stdout();
    // Errors are ignored: after a hang-up there is no terminal left to restore.
    let _ = execute!(out, DisableMouseCapture, LeaveAlternateScreen, Show);
    let _ = disable_raw_mode();
    let _ = out.flush();
}

fn install_panic_hook(log: PathBuf) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
        eprintln!("log: {}", log.display());
    }));
}

/// How long the event loop gets to act on a signal before the studio ends without it.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Ends the process when a signal has been pending for [`SIGNAL_GRACE`] while the terminal is
/// still held. After a hang-up the terminal's input can report readiness forever, and a read
/// of it can then spin inside crossterm without returning to the event loop; the trainer is
/// in a session of its own, so it carries on.
fn spawn_signal_watchdog() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let watchdog = std::thread::Builder::new()
        .name("signal-watchdog".into())
        .spawn(|| {
            let mut since: Option<std::time::Instant> = None;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let Some(sig) = pending_signal() else {
                    continue;
                };
                let first = *since.get_or_insert_with(std::time::Instant::now);
                if first.elapsed() >= SIGNAL_GRACE && ACTIVE.load(Ordering::SeqCst) {
                    tracing::warn!("signal {sig} not handled within {SIGNAL_GRACE:?}; leaving now");
                    restore();
                    std::process::exit(128 + sig);
                }
            }
        });
    if let Err(e) = watchdog {
        tracing::warn!("no signal watchdog: {e}");
    }
}

fn install_signal_handlers() {
    spawn_signal_watchdog();
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}
