"""Build the natural-text corpus from Debian's `fortunes` package (fortune-mod data, BSD).

The GPU machine has no network, so the corpus is built here and carried there as a file:

    python benchmarks/data/fortunes.py            # writes benchmarks/data/fortunes.txt

Only the package's plain-text cookie files are read (the package holds no offensive set);
ASCII art and the translation stubs are skipped, and every fortune is kept only if it is
printable ASCII, so the byte tokenizer sees plain English.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

SKIP = {"art", "ascii-art", "translate-me"}
OUT = Path(__file__).with_name("fortunes.txt")
SEP = "\n%\n"


def extract(deb_dir: Path) -> Path:
    """Download and unpack the package (no install); returns its cookie-file folder."""
    subprocess.run(["apt-get", "download", "fortunes"], cwd=deb_dir, check=True)
    deb = next(deb_dir.glob("fortunes_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(deb_dir / "x")], check=True)
    return deb_dir / "x" / "usr" / "share" / "games" / "fortunes"


def fortunes(folder: Path, max_chars: int) -> list[str]:
    """Every printable-ASCII fortune of at most `max_chars`, in a fixed (sorted) order."""
    out: list[str] = []
    for f in sorted(folder.iterdir()):
        if f.suffix in (".dat", ".u8") or f.name in SKIP or not f.is_file():
            continue
        for item in f.read_text(encoding="latin-1").split("\n%\n"):
            text = item.strip("\n%").rstrip().expandtabs(8)
            if 0 < len(text) <= max_chars and all(c.isprintable() or c == "\n" for c in text):
                if text.isascii():
                    out.append(text)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--max-chars", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = fortunes(extract(Path(tmp)), a.max_chars)
    a.out.write_text(SEP.join(items) + "\n")
    print(f"{len(items)} fortunes, {a.out.stat().st_size / 1e6:.2f} MB -> {a.out}")


if __name__ == "__main__":
    main()
