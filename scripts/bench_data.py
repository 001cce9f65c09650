"""Benchmark data: the shared dev corpus (built if missing) and ad-sized JPEGs.

The dev corpus comes from ../shared/bench (its README): a builder that fetches
public Debian and PyPI packages and derives references and reposted queries.
The build needs its own pinned libraries, so it runs in a separate virtual
environment under the data folder. Nothing here is committed: the data lives
beside the repository in ../imgmatch-bench-data/.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = ROOT.parent / "imgmatch-bench-data"


def emit(lines: list[str], md: Path | None) -> int:
    """Print a benchmark's Markdown table (and write it to ``md`` if given)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if md:
        md.write_text(text)
    return 0


def shared_bench() -> Path:
    bench = SHARED / "bench"
    if not (bench / "build_dev_corpus.py").exists():
        sys.exit(f"the shared benchmark is not at {bench}")
    return bench


def ensure_dev_corpus(data: Path = DATA) -> Path:
    """Build ../shared/bench's dev set into ``data``/dev unless it is there."""
    dev = data / "dev"
    if (dev / "manifest.json").exists() and (dev / "queries.csv").exists():
        return dev
    bench = shared_bench()
    venv = data / ".venv-bench"
    python = venv / "bin" / "python"
    data.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        print(f"creating {venv} for the corpus builder", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                        str(bench / "requirements.txt")], check=True)
    print("building the dev corpus (downloads about 250 MB of packages)", file=sys.stderr)
    subprocess.run([str(python), str(bench / "build_dev_corpus.py"), "--out", str(dev),
                    "--cache", str(data / ".cache")], check=True)
    return dev


def bench_photos(dev: Path) -> list[Path]:
    """Every reference and query image of the dev corpus."""
    return sorted(p for sub in ("references", "queries") for p in (dev / sub).iterdir()
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def ensure_ad_sized(dev: Path, count: int = 600, data: Path = DATA) -> Path:
    """JPEGs of 0.3 to 2 megapixels (typical ad photos), cut from the references."""
    from PIL import Image

    out = data / f"adsized-{count}"
    stamp = out / "done.json"
    if stamp.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261129)
    refs = sorted((dev / "references").glob("*.jpg"))
    refs = [p for p in refs if max(Image.open(p).size) >= 640]
    aspects = (3 / 4, 4 / 5, 2 / 3, 1.0, 4 / 3, 3 / 2, 9 / 16)
    for n in range(count):
        src = Image.open(refs[n % len(refs)]).convert("RGB")
        megapixels = rng.uniform(0.3, 2.0)
        aspect = rng.choice(aspects)  # width / height
        w = int((megapixels * 1e6 * aspect) ** 0.5)
        h = int(w / aspect)
        # a random window of the source with the target aspect, scaled to size
        cw = min(src.width, int(src.height * aspect))
        ch = int(cw / aspect)
        x = rng.randint(0, src.width - cw)
        y = rng.randint(0, src.height - ch)
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.LANCZOS)
        img.save(out / f"ad_{n:05d}.jpg", quality=rng.randint(75, 92))
    stamp.write_text(json.dumps({"count": count}))
    return out


if __name__ == "__main__":
    dev = ensure_dev_corpus()
    print(dev, ensure_ad_sized(dev))


def wrapped_cli(work: Path, changed: dict[tuple[str, str], object]) -> Path:
    """This environment's ``imgmatch`` CLI, or where ``changed`` holds
    settings ({(module, name): value} of ``imgmatch.MODULE``), a wrapper in
    ``work`` that sets them first: a crawl run through the CLI then uses them."""
    exe = Path(sys.executable).parent / "imgmatch"
    if not changed:
        return exe
    exe = work / "imgmatch"
    modules = sorted({module for module, _ in changed})
    exe.write_text(f"#!{sys.executable}\nimport sys\n"
                   f"from imgmatch import {', '.join(modules)}\n"
                   + "".join(f"{module}.{name} = {value!r}\n"
                             for (module, name), value in changed.items())
                   + "from imgmatch.cli import main\nsys.exit(main())\n")
    exe.chmod(0o700)
    return exe
