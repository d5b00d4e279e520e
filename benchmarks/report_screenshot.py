"""Take the README's screenshot of a report.html with headless Chromium (Debian's, through Playwright).

    convdeploy demo --out demo-run
    python benchmarks/report_screenshot.py demo-run/report.html benchmarks/report_screenshot.png
    python benchmarks/report_screenshot.py --quick   # a report of the tests' tiny bundle, into a temp dir

The page is opened from disk with the same flags as the report's browser test, the top
of it (summary, checks, accuracy) is captured with the bench section below it (``--also``:
the latencies per batch and per image sit at the page's end), and the PNG is reduced to a
256-colour palette so that the committed file stays small (< 300 KB). Prints the size.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screenshot(page: Path, out: Path, *, width: int = 1100, height: int = 1090, also: str | None = "#bench") -> int:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("no Chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": width,
                                                                                      "height": height})
        try:
            tab = context.new_page()
            tab.goto(page.resolve().as_uri(), wait_until="load")
            raw = Path(profile) / "shot.png"
            tab.screenshot(path=str(raw))
            image = Image.open(raw).convert("RGB")
            if also and tab.locator(also).count():
                extra = Path(profile) / "also.png"
                tab.locator(also).screenshot(path=str(extra))
                below = Image.open(extra).convert("RGB")
                gap = 24
                whole = Image.new("RGB", (image.width, image.height + gap + below.height), "#fafafa")
                whole.paste(image, (0, 0))
                whole.paste(below, ((image.width - below.width) // 2, image.height + gap))
                image = whole
        finally:
            context.close()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out.stat().st_size


def tiny_report(work: Path) -> Path:
    """A real report.html (``check --report``'s) of the tests' tiny bundle, verified here: for ``--quick``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from convdeploy.runtime.parity.report_document import write_check_report
    from convdeploy.runtime.verify import verify_bundle
    from tests.runtime.conftest import save_sample_photos, write_bundle

    bundle = write_bundle(work / "bundle", save_sample_photos(work / "photos"))
    files = write_check_report(work / "report", verify_bundle(bundle, "onnxruntime"), bundle)
    if files.html is None:
        raise SystemExit(f"no report.html: {files.note}")
    return files.html


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, nargs="?", help="a report.html")
    parser.add_argument("out", type=Path, nargs="?", help="the PNG to write")
    parser.add_argument("--height", type=int, default=1090, help="pixels of the page's top to capture")
    parser.add_argument("--also", default="#bench", help="a CSS selector captured below the top ('' for none)")
    parser.add_argument("--quick", action="store_true",
                        help="screenshot a report of the tests' tiny bundle into a temporary directory")
    args = parser.parse_args()
    if args.quick and args.page is None:
        with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
            size = screenshot(tiny_report(Path(tmp)), Path(tmp) / "shot.png", height=args.height,
                              also=args.also or None)
        print(f"report of the tests' tiny bundle: {size / 1024:.0f} KB")
        return
    if args.page is None or args.out is None:
        parser.error("PAGE and OUT are required (or pass --quick)")
    size = screenshot(args.page, args.out, height=args.height, also=args.also or None)
    print(f"{args.out}: {size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
