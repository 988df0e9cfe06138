//! Reading a report the way a person does: headless Chromium (Debian's `chromium`) loads the
//! page from disk and hands back the DOM it built, or a screenshot. The tests of the reports
//! go through here, so a page that a browser cannot lay out fails them.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Headless Chromium on a local page, with `extra` arguments; its stdout.
fn chromium(page: &Path, extra: &[&str]) -> Result<Vec<u8>> {
    let page =
        std::fs::canonicalize(page).with_context(|| format!("no page at {}", page.display()))?;
    // Root has no sandbox to drop into; the page is our own file and has no scripts.
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .context("cannot start chromium (cargo xtask deps installs it)")?;
    if !out.status.success() {
        bail!(
            "chromium failed on {}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The DOM Chromium built from the page, serialized (`--dump-dom`).
pub fn dump_dom(page: &Path) -> Result<String> {
    let dom = String::from_utf8(chromium(page, &["--dump-dom"])?)?;
    if !dom.contains("<body") {
        bail!("chromium returned no document for {}", page.display());
    }
    Ok(dom)
}

/// A PNG screenshot of the page's first `height` pixels at 1280 wide; its size in bytes.
pub fn screenshot(page: &Path, png: &Path, height: u32) -> Result<u64> {
    let _ = std::fs::remove_file(png);
    chromium(
        page,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size=1280,{height}"),
        ],
    )?;
    let bytes = std::fs::read(png).with_context(|| format!("no screenshot {}", png.display()))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("{} is not a PNG", png.display());
    }
    Ok(bytes.len() as u64)
}

/// How many elements of the DOM open with `<tag` and carry every one of `attrs` (exact
/// `name="value"` text as the DOM serializes it).
pub fn count(dom: &str, tag: &str, attrs: &[&str]) -> usize {
    dom.split(&format!("<{tag} "))
        .skip(1)
        .filter(|el| {
            let head = el.split('>').next().unwrap_or("");
            attrs.iter().all(|a| head.contains(a))
        })
        .count()
}
