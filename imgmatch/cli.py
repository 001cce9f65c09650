"""The ``imgmatch`` command line: parse, call the library, format.

No logic lives here that the library lacks: it imports only the public names
of :mod:`imgmatch` and its exceptions (and its own progress display), as any
program would. ``--json`` output is the stable machine interface
(docs/cli.md); tables are for people. Exit codes, mapped in one place
(:func:`main`):

    0  everything worked
    1  partial: some inputs failed (each was recorded or reported with its reason)
    2  usage error (bad options or arguments)
    3  nothing could be done (no collection, unreadable manifest, ...)
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from . import (
    DEFAULT_BATCH,
    DEFAULT_FLOOD,
    DEFAULT_MAX_MEMORY,
    DEFAULT_SIGNALS,
    DEFAULT_TIMEOUT,
    HASH_EXPORT_FORMATS,
    HASH_SIGNALS,
    KEY_SCOPES,
    MATCH_SCORE,
    MIN_SHA256_PREFIX,
    REPORT_FORMATS,
    ROBUST_SIGNALS,
    Collection,
    Explanation,
    HashValue,
    ImageRecord,
    IngestSummary,
    Item,
    Match,
    connect_dask,
    date_bound,
    catalog_address,
    default_db_path,
    default_workers,
    hash_bytes,
    parse_hash,
    parse_signals,
    printable,
    read_hash_list,
    sources_for,
    write_report,
    AlertDeliverer,
    FileSink,
    WebhookSink,
)
from .cli_progress import Progress
from .errors import AuditError, ImgmatchError, InputError, SignalError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def _echo_json(obj: object) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, sort_keys=False, default=str))


def _plural(n: int, word: str, plural: str | None = None) -> str:
    """'1 image', '2 images': counts people read."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


# ------------------------------------------------------------------ arguments
# Malformed arguments are refused while click parses them, as click.BadParameter:
# exit code 2 with one line naming the option, before any collection is opened.

def _pdq_hashes(ctx: click.Context, param: click.Parameter,
                values: tuple[str, ...]) -> tuple[tuple[str, HashValue], ...]:
    """--pdq HEX...: (the text as given, its value)."""
    try:
        return tuple((text, parse_hash(text, "pdq")) for text in values)
    except SignalError as exc:
        raise click.BadParameter(str(exc)) from None


def _signal_list(ctx: click.Context, param: click.Parameter,
                 value: str | None) -> tuple[str, ...] | None:
    """--signals a,b: the names, each known (None when not given)."""
    if not value:
        return None
    try:
        return parse_signals(value)
    except SignalError as exc:
        raise click.BadParameter(str(exc)) from None


def _signal_names(ctx: click.Context, param: click.Parameter,
                  values: tuple[str, ...]) -> tuple[str, ...]:
    """--signal NAME (repeatable): each a known signal."""
    try:
        return tuple(dict.fromkeys(name for v in values if v.strip()
                                   for name in parse_signals(v)))
    except SignalError as exc:
        raise click.BadParameter(str(exc)) from None


_SHA256_PREFIX = re.compile(rf"[0-9a-fA-F]{{{MIN_SHA256_PREFIX},64}}")


def _sha256_prefixes(ctx: click.Context, param: click.Parameter,
                     value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
    """SHA256 arguments: whole SHA-256s or prefixes of them (tables print them
    shortened); which image a prefix names is the collection's to say."""
    for text in (value,) if isinstance(value, str) else value or ():
        if not _SHA256_PREFIX.fullmatch(text.strip()):
            raise click.BadParameter(
                f"{text!r} is not a SHA-256: give {MIN_SHA256_PREFIX} to 64 hex digits "
                "(a unique prefix is enough)")
    return value


def _check_db(db: Path | str) -> None:
    """--db's folder must exist: a mistyped path should not leave new folders,
    and an empty collection in them, behind. (A PostgreSQL catalog's database
    must exist too; opening it says so.)"""
    if not isinstance(db, Path):
        return
    folder = db.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise click.BadParameter(f"the folder {folder} {why}; create it first or name "
                                 "another (imgmatch creates no folders)", param_hint="'--db'")


def _open(db: Path | str, *, readonly: bool = False) -> Collection:
    """The collection at --db, once :func:`_check_db` agrees."""
    _check_db(db)
    return Collection.open(db, readonly=readonly)


def _actor() -> str:
    """Who runs this command, as the audit log names them: the operating
    system's user name (a uid where the system has no name for it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _check_output(path: Path | None) -> None:
    """-o FILE: refuse a file that cannot be written before any work is done."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise click.BadParameter(f"the folder {folder} {why}; create it first or write "
                                 "elsewhere", param_hint="'-o' / '--output'")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{path} cannot be written here (permissions)",
                                 param_hint="'-o' / '--output'")


def _worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--workers, --timeout and --max-memory: how the files a command decodes
    are isolated (ingest, and upgrade, which decodes them again)."""
    for option in reversed((
            click.option("--workers", type=click.IntRange(0, 256), default=default_workers(),
                         show_default="all cores this process may use",
                         help="Worker processes for decoding and hashing "
                              "(0: in this process, without crash isolation)."),
            click.option("--timeout", type=click.FloatRange(0.1), default=DEFAULT_TIMEOUT,
                         show_default=True,
                         help="Seconds one file may take before it is given up."),
            click.option("--max-memory", type=click.IntRange(0),
                         default=DEFAULT_MAX_MEMORY >> 20, show_default=True, metavar="MB",
                         help="Memory one worker may take beyond its size at start (0: no "
                              "cap); a file that needs more is recorded as out-of-memory. "
                              "Linux only."))):
        command = option(command)
    return command


def _dask_client(address: str | None) -> Any:
    """--dask ADDRESS: a client of that scheduler (DaskError, exit code 3, if it
    cannot be had), closed when the command ends; None without the option."""
    if not address:
        return None
    client = connect_dask(address)
    click.get_current_context().call_on_close(client.close)
    return client


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar="IMGMATCH_DB", metavar="FILE|URL",
              help="Catalog of the collection: an SQLite file, or a PostgreSQL database "
                   "shared by several nodes (postgresql://USER@HOST/DB) (env IMGMATCH_DB; "
                   "default ./imgmatch.db). "
                   "Indexes live beside it in DB.indexes/.")
@click.version_option(package_name="imgmatch")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """Find where the same photos are reused across websites and over time."""
    ctx.obj = catalog_address(db) if db else default_db_path()
    # everything a command writes (catalogs, indexes, reports, exports) is
    # about victims: readable by its owner only, whatever the shell's umask
    os.umask(os.umask(0o077) | 0o077)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", "manifests", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or JSONL manifest: a 'path' per row (relative to the manifest's "
                   "folder) and sighting metadata. Repeatable.")
@click.option("--jsonl", "jsonl", type=click.File("r", encoding="utf-8", errors="replace"),
              help="JSON lines ('-' for standard input), each with a 'path' or base64 "
                   "'data' and sighting metadata.")
@click.option("--scrapy-items", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Items feed (JSON lines) of Scrapy's FilesPipeline or ImagesPipeline.")
@click.option("--scrapy-store", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The FILES_STORE/IMAGES_STORE folder the items' paths are relative to.")
@click.option("--platform", help="Platform (site) name for sightings that do not give one.")
@click.option("--file-times", is_flag=True,
              help="Take each image file's modification time (of files and folders given "
                   "as PATH) as its collected_at: only for files as the crawler saved them, "
                   "never for copies.")
@click.option("--signals", "signal_list", default=None, callback=_signal_list,
              help=f"Comma-separated signals to compute (default: the robust tier, "
                   f"{','.join(DEFAULT_SIGNALS)}: the hashes and local features).")
@click.option("--fast", is_flag=True,
              help=f"The hash tier only ('--signals {','.join(HASH_SIGNALS)}'): about four "
                   "times faster to ingest, but blind to most crops, borders, rotations, "
                   "screenshots and collages ('imgmatch upgrade' adds the local features "
                   "later). A collection that holds local features keeps adding them.")
@click.option("--robust", is_flag=True, hidden=True,
              help="The robust tier: the default now; kept for the scripts that pass it.")
@_worker_options
@click.option("--dask", "dask_address", metavar="ADDRESS",
              help="Decode and hash on the Dask cluster whose scheduler is at ADDRESS "
                   "(tcp://HOST:8786) instead of local worker processes, with the same "
                   "--timeout and --max-memory per file: paths are read by the Dask workers "
                   "(shared storage), bytes (--jsonl data, WARC records) are sent to them; "
                   "this process still links and writes. Needs 'imgmatch[dask]'.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=DEFAULT_BATCH,
              show_default=True, help="Images per catalog transaction, at most: with "
              "workers, the images ready go to an idle writer sooner (8 or more).")
@click.option("--thumbnails", is_flag=True, help="Also store a small thumbnail of each new "
              "image, for the HTML report (off by default: only hashes and metadata are kept).")
@click.option("--all-frames", is_flag=True,
              help="Hash every frame of an animated GIF, WebP or PNG (up to 100) as an image "
                   "of its own, seen where the file was; by default the first frame stands "
                   "for the file.")
@click.option("--link/--no-link", default=True, show_default=True,
              help="Link new images to their near-duplicates as they are written. "
                   "Linking holds the indexes in memory (about 40 bytes per image "
                   "per 64-bit hash; the robust tier's descriptor votes about 6 KB per image "
                   "up to some 65,000 images, 1.1 KB past them); --no-link streams in memory "
                   "that does not grow, and "
                   "'imgmatch link' links afterwards (values as stored: mirrored and "
                   "rotated copies are linked only by an ingest that links).")
@click.option("--emit-matches", is_flag=True,
              help="Write one JSON line per item to standard output, as soon as it is "
                   "catalogued, with its status and matches (for pipelines; implies "
                   "--quiet and a summary on standard error).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress display and no summary: nothing on standard output, "
                   "a count of the files that failed on standard error.")
@click.option("--alerts", "alerts_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Append watchlist alerts to this file as JSON lines ('-': standard "
                   "output), as they are raised; any left from a run that was killed first.")
@click.option("--webhook", help="POST each watchlist alert to this address as it is raised "
              "(retried until it answers 2xx; left ones go with the next run).")
@click.option("--webhook-token", envvar="IMGMATCH_WEBHOOK_TOKEN",
              help="Bearer token sent to the webhook.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_obj
def ingest(db: Path | str, paths: tuple[Path, ...], manifests: tuple[Path, ...],
           jsonl: TextIO | None, scrapy_items: Path | None, scrapy_store: Path | None, platform: str | None,
           file_times: bool,
           signal_list: tuple[str, ...] | None, fast: bool, robust: bool, workers: int,
           timeout: float,
           max_memory: int, dask_address: str | None,
           batch_size: int, thumbnails: bool, all_frames: bool, link: bool,
           emit_matches: bool, quiet: bool, alerts_to: Path | None, webhook: str | None,
           webhook_token: str | None, as_json: bool) -> int:
    """Catalogue images from files, folders (recursive), manifests, WARC/ARC files,
    JSON lines and Scrapy output. Files ending .warc, .warc.gz, .arc or .arc.gz
    are read as web archives."""
    if not (paths or manifests or jsonl or scrapy_items):
        raise click.UsageError("give image files, folders, WARC files, --manifest, --jsonl "
                               "or --scrapy-items")
    if bool(scrapy_items) != bool(scrapy_store):
        raise click.UsageError("--scrapy-items and --scrapy-store go together")
    if emit_matches and not link:
        raise click.UsageError("--emit-matches reports the links an ingest finds; "
                               "it cannot go with --no-link")
    if paths and not (manifests or jsonl or scrapy_items) and \
            not any(p.exists() for p in paths):
        # beside inputs that exist, a missing file is a failure recorded with the
        # batch; alone, it is a mistyped command line, and nothing is created
        raise click.BadParameter(
            f"{_listing(paths)} {'does' if len(paths) == 1 else 'do'} not exist; "
            "nothing to ingest", param_hint="PATHS")
    if alerts_to is not None and str(alerts_to) == "-" and (emit_matches or as_json
                                                            or not quiet):
        raise click.UsageError("--alerts - writes alerts to standard output: add --quiet "
                               "(and neither --emit-matches nor --json), or give a file")
    if fast and (robust or signal_list):
        raise click.UsageError("--fast is the hash tier: it cannot go with "
                               f"{'--robust' if robust else '--signals'}")
    _check_db(db)  # before the background count starts
    names = HASH_SIGNALS if fast else _with_local_features(signal_list or DEFAULT_SIGNALS,
                                                           robust)
    client = _dask_client(dask_address)  # fails before any work
    deliverers = [AlertDeliverer(db, sink, on_error=lambda e: click.echo(
        f"alert delivery: {e} (retrying)", err=True)).start()
        for sink in ([FileSink(alerts_to)] if alerts_to is not None else [])
        + ([WebhookSink(webhook, token=webhook_token)] if webhook else [])]

    def written(records: list) -> None:
        if emitter is not None:
            emitter.written(records)
        for d in deliverers:
            d.poke()

    def items() -> Iterator[Item]:
        return sources_for(paths, manifests=manifests, jsonl=jsonl, scrapy_items=scrapy_items,
                           scrapy_store=scrapy_store, platform=platform, file_times=file_times)

    progress = Progress(enabled=False if (quiet or as_json or emit_matches) else None)
    if jsonl is None:  # a stream cannot be counted ahead: no total, no ETA
        progress.count_in_background(items)

    emitter: _MatchEmitter | None = None

    def on_progress(summary: IngestSummary, final: bool = False) -> None:
        if emitter is not None:
            emitter.summarised(summary)
        progress.update(summary.files_seen, summary.images_added, len(summary.failures),
                        force=final)

    with _open(db) as collection:
        emitter = _MatchEmitter(collection) if emit_matches else None
        try:
            summary = collection.ingest(
                items(), signals=names, workers=workers, timeout=timeout,
                max_memory=(max_memory << 20) or None, client=client,
                batch_size=1 if emit_matches else batch_size, on_progress=on_progress,
                on_written=written if emitter or deliverers else None,
                thumbnails=thumbnails,
                all_frames=all_frames, link=link,
                args={"paths": [str(p) for p in paths], "manifests": [str(m) for m in manifests],
                      "platform": platform, "signals": list(names), "link": link})
            on_progress(summary, final=True)  # the last line shows the whole run
        finally:
            progress.finish()
            for d in deliverers:
                left = d.close()
                if left:
                    click.echo(f"{_plural(left, 'alert')} not yet delivered to "
                               f"{d.sink.target}: 'imgmatch alerts' delivers them "
                               "(or the next ingest)", err=True)
    if as_json and not emit_matches:
        _echo_json(summary.to_json())
    elif emit_matches:  # each failure was a line of its own: the summary counts them
        click.echo(json.dumps({k: v for k, v in summary.to_json().items()
                               if k != "failures"}), err=True)
    elif not quiet:
        _print_summary(summary)
    elif summary.failures:
        click.echo(f"{_plural(len(summary.failures), 'file')} could not be used "
                   "('imgmatch stats' lists them)", err=True)
    if summary.lacking and not as_json:
        _lacking_note(summary.lacking, names)
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def _with_local_features(names: tuple[str, ...], robust: bool) -> tuple[str, ...]:
    """--robust: the signals asked for, and the robust tier's local features."""
    if not robust:
        return names
    return tuple(dict.fromkeys(names + ROBUST_SIGNALS))


def _lacking_note(lacking: dict[str, int], signals: Sequence[str]) -> None:
    """Say which signals some images lack, and the command that adds them."""
    what = ", ".join(f"{n} image{'s' if n != 1 else ''} lack{'s' if n == 1 else ''} {name}"
                     for name, n in sorted(lacking.items()))
    click.echo(f"note: {what} (catalogued with fewer signals, so no query finds them "
               f"through it); 'imgmatch upgrade --signals {','.join(signals)}' adds them",
               err=True)


def _listing(paths: Sequence[Path], shown: int = 5) -> str:
    """'a.jpg, b.jpg and 3 more': paths named in a message."""
    names = ", ".join(str(p) for p in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


class _MatchEmitter:
    """Prints each committed item of an ingest as a JSON line with its matches,
    or with its error as ``{"reason", "message"}`` (the shape of query errors).

    Ingest hands over a batch's records once it is committed, and its summary
    right after; a failed record carries its message but not its reason, which
    is in the summary's failures (appended in the records' order). So records
    wait for the summary, at most one batch.
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.pending: list[Any] = []

    def written(self, records: list[Any]) -> None:
        self.pending.extend(records)

    def summarised(self, summary: IngestSummary) -> None:
        if not self.pending:
            return
        n_failed = sum(1 for r in self.pending if r[2] == "failed")
        recent = summary.failures[len(summary.failures) - n_failed:] if n_failed else []
        reasons = {source: reason for source, reason, _ in recent}
        for item, sha256, status, detail in self.pending:
            out: dict[str, Any] = {"source": item.source, "sha256": sha256, "status": status}
            if item.line is not None:
                out["line"] = item.line
            if status == "failed":
                reason = item.error.reason if item.error is not None else \
                    reasons.get(item.source, "error")
                out["error"] = {"reason": reason, "message": detail or reason}
            else:
                out["matches"] = [link.to_json() | {"sightings": self._sightings(link.sha256)}
                                  for link in self.collection.image(sha256).links]
            click.echo(json.dumps(out, ensure_ascii=False))
        self.pending.clear()
        sys.stdout.flush()

    def _sightings(self, sha256: str | None) -> list[dict[str, Any]]:
        """A linked image's sightings (none for an imported hash, which is
        known by its hash, not a SHA-256)."""
        if sha256 is None:
            return []
        return [s.to_json() for s in self.collection.image(sha256).sightings]


def _print_summary(summary: IngestSummary) -> None:
    rate = summary.files_seen / summary.seconds if summary.seconds else 0.0
    click.echo(f"files seen:       {summary.files_seen} in {summary.seconds:.1f} s "
               f"({rate:,.0f}/s)")
    click.echo(f"images added:     {summary.images_added}")
    click.echo(f"already known:    {summary.images_known}")
    click.echo(f"new sightings:    {summary.sightings_added}")
    click.echo(f"known sightings:  {summary.sightings_known}")
    if summary.revisits:
        click.echo(f"from revisits:    {summary.revisits}")
    click.echo(f"new links:        {summary.links_added}")
    if summary.alerts_added:
        click.echo(f"watchlist alerts: {summary.alerts_added}")
    if summary.skipped:
        click.echo("skipped:          " + ", ".join(
            f"{k} {v}" for k, v in sorted(summary.skipped.items())))
    click.echo(f"failures:         {len(summary.failures)}")
    for source, reason, detail in summary.failures[:50]:
        click.echo(f"  {reason:18} {printable(source, 80, keep_end=True)}: "
                   f"{printable(detail, 160)}")
    if len(summary.failures) > 50:
        click.echo(f"  ... and {len(summary.failures) - 50} more ('imgmatch stats')")


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--pdq", "pdq_hex", multiple=True, callback=_pdq_hashes,
              help="Query a PDQ hash (64 hex digits). Repeatable.")
@click.option("--pdq-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Query every hash of a hash list ('pdq HEX' lines or Meta's "
                   "hash,quality,filename CSV), one JSON line each with its elapsed_ms.")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Most matches reported per query, best first.")
@click.option("--min-score", type=click.FloatRange(0, 1), default=MATCH_SCORE,
              show_default=True, help="Lowest score reported (scores estimate the chance "
                                      "of the same picture; from 0.98 precision reached "
                                      "0.99 where they were fitted); 0 returns the top K candidates.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query per line.")
@click.pass_obj
def query(db: Path | str, images: tuple[Path, ...], pdq_hex: tuple[tuple[str, HashValue], ...],
          pdq_file: Path | None, top_k: int, min_score: float, as_json: bool) -> int:
    """Where else has this image appeared? Matches best first."""
    if not images and not pdq_hex and not pdq_file:
        raise click.UsageError("give image files, --pdq HEX or --pdq-file FILE")
    failed = found = 0
    with _open(db, readonly=True) as collection:
        asked: tuple[str, ...] = ("pdq",) if (pdq_hex or pdq_file) else ()
        asked += tuple(collection.coverage()) if images else ()
        lacking = collection.missing_signals(tuple(dict.fromkeys(asked)))
        if lacking:  # a query cannot find images through a signal they lack
            _lacking_note(lacking, tuple(dict.fromkeys(
                (*DEFAULT_SIGNALS, *collection.coverage(), *lacking))))
        if pdq_file is not None:
            return _query_hash_list(collection, pdq_file, top_k, min_score)
        jobs: list[tuple[str, Path | HashValue]] = \
            [(str(p), p) for p in images] + [(h, v) for h, v in pdq_hex]
        for label, asked_for in jobs:
            try:
                if isinstance(asked_for, HashValue):
                    matches = collection.query_hash(asked_for, top_k=top_k, min_score=min_score)
                else:
                    matches = collection.query(asked_for, top_k=top_k, min_score=min_score)
            except (InputError, OSError, ImgmatchError) as exc:
                failed += 1
                reason = getattr(exc, "reason", "error")
                message = getattr(exc, "detail", None) or str(exc)
                if as_json:
                    _echo_json({"query": label, "error": {"reason": reason, "message": message},
                                "matches": []})
                else:
                    click.echo(f"{printable(label)}: error ({reason}): {printable(message)}")
                continue
            found += len(matches)
            if as_json:
                _echo_json({"query": label, "matches": [m.to_json() for m in matches]})
            else:
                _print_matches(label, matches)
        # what was asked, never which picture: see the audit section of docs/cli.md
        collection.audit("query", _actor(), {
            "images": len(images), "hashes": len(pdq_hex), "failed": failed,
            "matches": found, "top_k": top_k, "min_score": min_score})
    return EXIT_PARTIAL if failed else EXIT_OK


def _query_hash_list(collection: Collection, path: Path, top_k: int,
                     min_score: float) -> int:
    """One JSON line per hash of a list, each with the time its query took."""
    collection.load_indexes(local_features=False)  # hash queries; before the clock starts
    failed = asked = found = 0
    for line in read_hash_list(path):
        label = line.name or f"{path.name}:{line.line_no}"
        if line.hash is None:
            failed += 1
            _echo_json({"query": label, "error": {"reason": "bad-hash", "message": line.error},
                        "matches": []})
            continue
        started = time.perf_counter()
        matches = collection.query_hash(line.hash, top_k=top_k, min_score=min_score)
        elapsed = (time.perf_counter() - started) * 1000
        asked += 1
        found += len(matches)
        _echo_json({"query": label, "pdq": line.hash.hex, "elapsed_ms": round(elapsed, 3),
                    "matches": [m.to_json() for m in matches]})
    collection.audit("query", _actor(), {"hash_list": True, "hashes": asked, "failed": failed,
                                         "matches": found, "top_k": top_k,
                                         "min_score": min_score})
    return EXIT_PARTIAL if failed else EXIT_OK


def _print_matches(label: str, matches: list[Match]) -> None:
    click.echo(f"{printable(label)}: {_plural(len(matches), 'match', 'matches')}")
    for m in matches:
        dist = ", ".join(f"{k} {v}" for k, v in sorted(m.distances.items()))
        if m.inliers is not None:  # verified geometrically (robust tier)
            dist = ", ".join(filter(None, (dist, f"{m.inliers} inliers")))
        flag = "  (low information)" if m.low_information else ""
        # an imported hash has no SHA-256: it is named by its hash (pdq:<hex>)
        name = m.sha256 or next((f"{k}:{v}" for k, v in sorted(m.signals.items())), "?")
        click.echo(f"  {m.score:.3f}  {name}  [{dist}; {m.transform}]{flag}")
        for s in m.sightings:
            when = (s.seen_at or "?")[:10]
            click.echo(f"      {when}  {printable(s.platform or '-', 16):16} "
                       f"{printable(s.url or s.source, 80, keep_end=True)}")


@cli.command("hash")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--signals", "signal_list", default=None, callback=_signal_list,
              help=f"Comma-separated signals (default: {','.join(HASH_SIGNALS)}; "
                   f"'{','.join(ROBUST_SIGNALS)}' adds the count of local features).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file per line.")
def hash_cmd(images: tuple[Path, ...], signal_list: tuple[str, ...] | None,
             as_json: bool) -> int:
    """Print the signals of image files; stores nothing."""
    names = signal_list or HASH_SIGNALS
    failed = False
    for path in images:
        result: dict[str, Any]
        try:
            data = path.read_bytes()
        except OSError as exc:
            result = {"error": {"reason": "missing-file", "message": exc.strerror or str(exc)}}
        else:
            result = hash_bytes(data, names, str(path))
        failed |= "error" in result
        if as_json:
            _echo_json({"file": str(path), **result})
        elif "error" in result:
            click.echo(f"{printable(path)}: error ({result['error']['reason']}): "
                       f"{printable(result['error']['message'])}")
        else:
            parts = [f"{k}={v['hex']}" + (f" q={v['quality']}" if k == "pdq" else "")
                     for k, v in result["signals"].items()]
            click.echo(f"{printable(path)}  sha256={result['sha256']}  " + "  ".join(parts))
    return EXIT_PARTIAL if failed else EXIT_OK


@cli.command()
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="table",
              show_default=True, help="table and json for people and programs; csv "
              "(one row per sighting), links-csv, graphml and gexf for link-analysis tools; "
              "html: one offline file with timelines.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output.")
@click.option("--min-sightings", type=click.IntRange(1), default=2, show_default=True,
              help="Only pictures seen at least this many times.")
@click.option("--platform", "platforms", multiple=True, help="Only clusters seen on this "
              "platform. Repeatable.")
@click.option("--cross-platform", is_flag=True, help="Only clusters seen on 2+ platforms.")
@click.option("--since", help="Only clusters seen on or after this date (YYYY-MM-DD).")
@click.option("--until", help="Only clusters seen on or before this date (YYYY-MM-DD).")
@click.option("--fields", default="", help="Comma-separated metadata fields whose distinct "
              "values each cluster lists (for example phone,city).")
@click.option("--raw", is_flag=True, help="CSV: do not neutralise spreadsheet formulas.")
@click.option("--thumbnails", is_flag=True,
              help="HTML: embed the thumbnails stored at ingest (each still hidden until "
                   "clicked). Off by default: the file stays small and holds no pictures.")
@click.pass_obj
def report(db: Path | str, fmt: str, output: Path | None, min_sightings: int,
           platforms: tuple[str, ...], cross_platform: bool, since: str | None,
           until: str | None, fields: str, raw: bool, thumbnails: bool) -> int:
    """Clusters of the same picture with their sightings, cross-platform first."""
    since_d, until_d = _date_option(since, "--since"), _date_option(until, "--until")
    names = tuple(f.strip() for f in fields.split(",") if f.strip())
    _check_output(output)
    with _open(db, readonly=True) as collection:
        clusters = collection.clusters(min_sightings=min_sightings, platforms=platforms,
                                       cross_platform_only=cross_platform, since=since_d,
                                       until=until_d)
        # images known only by a partner's hash have no bytes, so no thumbnail
        pictures = collection.thumbnails(
            img["sha256"] for c in clusters for img in c.images if img["sha256"]) \
            if fmt == "html" and thumbnails else {}
        made = collection.made_with()
        # an export, and with thumbnails a reveal of pictures: recorded before it is written
        collection.audit("report", _actor(), {
            "format": fmt, "clusters": len(clusters), "min_sightings": min_sightings,
            "platforms": list(platforms), "cross_platform": cross_platform,
            "since": since_d, "until": until_d, "fields": list(names), "raw": raw,
            "thumbnails": len(pictures), "to_file": output is not None})
    try:
        out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    except OSError as exc:  # checked above; a race, or a place only opening tells
        raise click.FileError(str(output), hint=exc.strerror or str(exc)) from None
    try:
        write_report(clusters, out, fmt, raw=raw, fields=names, thumbnails=pictures,
                     made_with=made)
    finally:
        if output:
            out.close()
    return EXIT_OK


def _date_option(value: str | None, name: str) -> str | None:
    if not value:
        return None
    bound = date_bound(value)
    if bound is None:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=f"'{name}'")
    return bound


def _linked_names(record: ImageRecord) -> list[str]:
    """The name of each image ``record`` links to, in order: its SHA-256, else (an
    imported hash, which has none) its hash, ``pdq:<hex>``."""
    return [link.sha256 or link.hash_key or "imported hash" for link in record.links]


@cli.command()
@click.argument("sha256", required=False, callback=_sha256_prefixes)
@click.option("--cluster", "cluster_id", type=int, help="Show this cluster instead.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the image's, or the cluster's as in the report).")
@click.pass_obj
def show(db: Path | str, sha256: str | None, cluster_id: int | None, as_json: bool) -> int:
    """One image (its signals, sightings and links) or one cluster. SHA256 may be
    any unique prefix of 8 or more hex digits."""
    if (sha256 is None) == (cluster_id is None):
        raise click.UsageError("give an image's SHA256 or --cluster ID")
    with _open(db, readonly=True) as collection:
        collection.audit("show", _actor(), {"what": "image" if sha256 else "cluster"})
        if sha256 is not None:
            record = collection.image(collection.resolve(sha256))
            if as_json:
                _echo_json(record.to_json())
                return EXIT_OK
            click.echo(f"image {record.sha256}: {record.width}x{record.height} "
                       f"{record.format}, {record.size_bytes} bytes"
                       + (f", taken {record.captured_at} (camera's clock)"
                          if record.captured_at else ""))
            for name, value in sorted(record.signals.items()):
                click.echo(f"  {name:6} {value.hex}" + (f"  quality {value.quality}"
                                                       if value.quality is not None else ""))
            click.echo(f"sightings ({len(record.sightings)}):")
            for s in record.sightings:
                click.echo(f"  {(s.seen_at or '?')[:10]}  {printable(s.platform or '-', 16):16} "
                           f"{printable(s.url or s.source, 80, keep_end=True)}")
            click.echo(f"links ({len(record.links)}):")
            for link, name in zip(record.links, _linked_names(record)):
                click.echo(f"  {link.score:.3f}  {name}  {', '.join(link.agreed)} "
                           f"({link.transform})")
            if record.watched:
                click.echo(f"on watchlists ({len(record.watched)}):")
            for w in record.watched:
                click.echo(f"  {printable(w['watchlist'], 30)}  entry "
                           f"{printable(w.get('name') or w['entry_id'], 40)}  "
                           f"{w['distance']} bits ({w['transform']})  shared by "
                           f"{printable(w.get('source') or '?', 40)}, terms "
                           f"{printable(w.get('licence') or '?', 40)}"
                           + ("  [negative]" if w.get("negative") else "")
                           + ("" if w.get("alerting") else "  [too plain to alert]"))
            return EXIT_OK
        found = [c for c in collection.clusters(min_sightings=1) if c.id == cluster_id]
    if not found:
        raise ImgmatchError(f"no cluster {cluster_id} (cluster ids are in 'imgmatch report')")
    if as_json:
        _echo_json(found[0].to_json())
    else:
        write_report(found, sys.stdout, "table")
    return EXIT_OK


@cli.command()
@click.argument("a", callback=_sha256_prefixes)
@click.argument("b", callback=_sha256_prefixes)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as one JSON object.")
@click.pass_obj
def explain(db: Path | str, a: str, b: str, as_json: bool) -> int:
    """Why two catalogued images match or not: each signal's values, distance,
    threshold, version and verdict, the geometric verification, the score, the
    rules that capped it and the precision measured at it. A and B are
    SHA-256s or unique prefixes of 8+ hex digits; A plays the query."""
    with _open(db, readonly=True) as collection:
        explanation = collection.explain(a, b)
        collection.audit("explain", _actor(), {
            "verdict": explanation.verdict, "score": round(explanation.score, 4),
            "linked": explanation.link is not None})
    if as_json:
        _echo_json(explanation.to_json())
    else:
        _print_explanation(explanation)
    return EXIT_OK


def _print_explanation(e: Explanation) -> None:
    """The verdict first, then a line per signal, the verification, the score
    and where it falls in the calibration table."""
    click.echo(e.summary)
    click.echo(f"  A {e.a}  (the query)")
    click.echo(f"  B {e.b}")
    click.echo(f"signals (tier {e.tier}, best as A's {e.transform}):")
    for s in e.signals:
        scale = f", scale {s.scale:g}" if s.scale is not None else ""
        quality = f", quality {s.quality}" if s.quality is not None else ""
        stored = "" if s.versions == (s.version, s.version) else \
            f" (values of versions {s.versions[0]} and {s.versions[1]})"
        click.echo(f"  {s.signal:6} {s.verdict:13} {s.distance:3} of {s.bits} bits "
                   f"(threshold {s.threshold}{scale}{quality}), version {s.version}{stored}")
        click.echo(f"         A {s.a}" + ("" if s.transform == "identity"
                                               else f"  (A's {s.transform})"))
        click.echo(f"         B {s.b}")
    v = e.verification
    if v is None:
        click.echo("verification: none (local features were not compared)")
    else:
        aligned = "not measured" if v["aligned"] is None else f"{v['aligned']} bits" + (
            " on B's centre" if v.get("aligned_on") == "centre" else "")
        framed = "" if v["framed_share"] is None else \
            f", a share of {v['framed_share']} of them on the picture A frames"
        repeated = "not measured" if v["repeated"] is None else v["repeated"]
        click.echo(f"verification: {v['inliers']} inliers of {v['matches']} matches, "
                   f"support {v['support']}, spread {v['spread']}, coverage {v['coverage']}, "
                   f"shared area {v['shared_area']}, overlap {v['overlap']}, aligned PDQ "
                   f"{aligned}, repeats of one pattern {repeated}"
                   f"{', in a tile of either image' if v['in_tile'] else ''}{framed}"
                   f"{', with B as the query' if v['reversed'] else ''}: "
                   f"{'agreed' if v['agreed'] else 'not enough to agree'}")
        where = v.get("regions") or {}
        if any(where.values()):
            click.echo("  the inliers lie " + "; ".join(
                f"in {side.upper()} at x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f}"
                for side, box in where.items() if box) + " (shares of each image's width and height)")
    how = (f"the {e.weighed_by} model, the {e.tier} tier ranking by PDQ first"
           if e.weighed_by and e.weighed_by != e.tier else f"the {e.tier} model")
    click.echo(f"score: {e.score:.4f} ({how}: {e.model_score:.4f})")
    for name, meaning in e.rules.items():
        click.echo(f"  capped by {name}: {meaning}")
    click.echo("  log-odds: " + ", ".join(f"{k} {v:+.2f}" for k, v in e.terms.items()))
    cal = e.calibration
    if cal:
        click.echo(f"calibration: precision {cal['precision']:.4f}, recall {cal['recall']:.3f} "
                   f"at scores >= {cal['at_least']:.2f} ({e.tier} tier, {cal['table']})")
    else:
        click.echo("calibration: under the lowest row of the table (0.30)")
    t = e.thresholds
    click.echo(f"thresholds: a lead from {t['match']}, links from {t['link']}, "
               f"clusters from {t['cluster']}")
    if e.link is None:
        click.echo("link: none stored")
    else:
        click.echo(f"link: stored, score {e.link.score:.4f}, agreed "
                   f"{', '.join(e.link.agreed) or '-'} ({e.link.transform})")
    for note in e.notes:
        click.echo(f"note: {note}")


@cli.command()
@click.argument("sha256s", nargs=-1, callback=_sha256_prefixes)
@click.option("--pdq", "pdq_hex", multiple=True, callback=_pdq_hashes,
              help="Ignore every image within the PDQ threshold of this hash (64 hex "
                   "digits). Repeatable.")
@click.option("--reason", default="ignored", show_default=True,
              help="Why (stock photo, site logo, template...).")
@click.option("--list", "list_", is_flag=True, help="List what is ignored.")
@click.option("--remove", "remove", type=int, multiple=True, help="Stop ignoring entry ID.")
@click.pass_obj
def ignore(db: Path | str, sha256s: tuple[str, ...], pdq_hex: tuple[tuple[str, HashValue], ...],
           reason: str, list_: bool, remove: tuple[int, ...]) -> int:
    """Mark images or hashes as known stock photos, logos or templates, so their
    links stop shaping clusters. A SHA256 may be a unique prefix of 8+ hex digits."""
    if not (sha256s or pdq_hex or list_ or remove):
        raise click.UsageError("give image SHA256s, --pdq HEX, --list or --remove ID")
    with _open(db, readonly=list_ and not (sha256s or pdq_hex or remove)) as c:
        images = [c.resolve(prefix) for prefix in sha256s]  # each names one, or nothing changes
        for entry in remove:
            if not c.unignore(entry):
                raise ImgmatchError(f"no ignore entry {entry} ('imgmatch ignore --list')")
        for sha in images:
            c.ignore(sha256=sha, reason=reason)
        for _, value in pdq_hex:
            c.ignore(value=value, reason=reason)
        if list_:
            for row in c.ignored():
                what = row["sha256"] or f"{row['signal']} {row['hex']}"
                click.echo(f"{row['id']:4}  {what}  {printable(row['reason'], 60)}  "
                           f"{row['created_at']}")
    return EXIT_OK


@cli.command("import-hashes")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--platform", help="Platform of the sightings (for example the partner's name).")
@click.option("--shared-by", help="Who shared the list: kept with every hash it brings.")
@click.option("--licence", help="The terms it was shared under: kept with every hash.")
@click.option("--link/--no-link", default=True, show_default=True,
              help="Link the new hashes to their near-duplicates (as 'imgmatch link' does).")
@click.option("--workers", type=click.IntRange(0), default=0,
              help="Processes for linking (0: all cores).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary (lines, hashes and sightings added, bad lines with "
                   "their numbers) as one JSON object.")
@click.pass_obj
def import_hashes(db: Path | str, file: Path, platform: str | None, shared_by: str | None,
                  licence: str | None, link: bool, workers: int, as_json: bool) -> int:
    """Load a hash list without pictures: 'pdq HEX' lines (python-threatexchange)
    or the hash,quality,filename CSV of Meta's hasher."""
    with _open(db) as collection:
        summary = collection.import_hashes(file, platform=platform, link=link, workers=workers,
                                           shared_by=shared_by, licence=licence)
    if as_json:
        _echo_json(summary)
    else:
        click.echo(f"lines: {summary['lines']}, hashes added: {summary['images_added']}, "
                   f"sightings added: {summary['sightings_added']}, bad lines: "
                   f"{summary['failed']}" + (f", links added: {summary['links_added']}"
                                              if "links_added" in summary else ""))
        for f in summary["failures"][:20]:
            click.echo(f"  {printable(f['detail'], 160)}")
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK


def _one_signal(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--signal NAME: one known signal."""
    try:
        names = parse_signals(value)
    except SignalError as exc:
        raise click.BadParameter(str(exc)) from None
    if len(names) != 1:
        raise click.BadParameter(f"name one signal, not {', '.join(names)}")
    return names[0]


class _Staged:
    """An export written aside, put in place by :meth:`commit` once it is
    audited: a temporary file beside FILE renamed over it, or a spool copied
    to standard output. An export that fails half-way leaves nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._temp: Path | None = None
        if path is None:
            self.stream: TextIO = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
            return
        try:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        except OSError as exc:  # checked before; a race, or what only writing tells
            raise click.FileError(str(path), hint=exc.strerror or str(exc)) from None
        self._temp = Path(name)
        self.stream = open(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        if self.path is None:
            self.stream.seek(0)
            shutil.copyfileobj(self.stream, sys.stdout)
            sys.stdout.flush()
            self.stream.close()
        elif self._temp is not None:
            self.stream.close()
            os.replace(self._temp, self.path)
            self._temp = None

    def discard(self) -> None:
        self.stream.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)


@cli.command("export-hashes")
@click.option("--format", "fmt", type=click.Choice(HASH_EXPORT_FORMATS), default="pytx",
              show_default=True,
              help="pytx: 'pdq HEX' lines for python-threatexchange's local file (with -o, "
                   "FILE.meta.jsonl beside it says what each line is); hma-csv: "
                   "signal_type,signal_str,quality,content_id rows for HMA's bank API; "
                   "meta-csv: hash,quality,filename as Meta's pdq-photo-hasher prints; "
                   "jsonl: a header, then one object per hash with its provenance.")
@click.option("--signal", default="pdq", show_default=True, callback=_one_signal,
              help="The signal whose hashes are written (pytx, hma-csv and meta-csv "
                   "carry pdq only).")
@click.option("--cluster", "clusters", type=int, multiple=True,
              help="Only this cluster's images (ids as 'imgmatch report' prints them). "
                   "Repeatable.")
@click.option("--platform", "platforms", multiple=True,
              help="Only images seen on this platform. Repeatable.")
@click.option("--since", help="Only images seen on or after this date (YYYY-MM-DD).")
@click.option("--until", help="Only images seen on or before this date (YYYY-MM-DD).")
@click.option("--min-quality", type=click.IntRange(0, 100), default=None,
              help="Leave out hashes below this quality (counted as skipped). By default "
                   "every hash is written, a low-quality one with its quality.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output.")
@click.pass_obj
def export_hashes(db: Path | str, fmt: str, signal: str, clusters: tuple[int, ...],
                  platforms: tuple[str, ...], since: str | None, until: str | None,
                  min_quality: int | None, output: Path | None) -> int:
    """Write the collection's hashes for partners' tools: hashes, qualities
    and imgmatch's names for the images, never a picture or crawled text. A
    JSON summary (lines written, low-quality hashes among them) goes to
    standard error; the export is recorded in the audit log."""
    since_d, until_d = _date_option(since, "--since"), _date_option(until, "--until")
    _check_output(output)
    sidecar = output.with_name(output.name + ".meta.jsonl") \
        if output is not None and fmt == "pytx" else None
    with _open(db, readonly=True) as collection:
        staged = [_Staged(output)] + ([_Staged(sidecar)] if sidecar is not None else [])
        try:
            summary = collection.export_hashes(
                staged[0].stream, fmt, signal=signal, clusters=clusters,
                platforms=platforms, since=since_d, until=until_d, min_quality=min_quality,
                sidecar=staged[1].stream if sidecar is not None else None)
            # hashes leave the collection: recorded before they reach their file
            collection.audit("export-hashes", _actor(), {
                "format": fmt, "signal": signal, "lines": summary["lines"],
                "low_quality": summary["low_quality"],
                "skipped_low_quality": summary["skipped_low_quality"],
                "clusters": len(set(clusters)), "platforms": list(platforms),
                "since": since_d, "until": until_d, "min_quality": min_quality,
                "to_file": output is not None})
            for part in staged:
                part.commit()
        finally:
            for part in staged:
                part.discard()
    summary |= {"output": str(output) if output else None,
                "sidecar": str(sidecar) if sidecar else None}
    click.echo(json.dumps(summary, ensure_ascii=True), err=True)
    return EXIT_OK


@cli.command()
@click.option("--signal", "signals", multiple=True, callback=_signal_names,
              help="Signal to link on (repeatable; default: every hash signal held).")
@click.option("--workers", type=click.IntRange(0), default=0, help="Processes (0: all cores).")
@click.option("--dask", "dask_address", metavar="ADDRESS",
              help="Run the search's tables on the Dask cluster whose scheduler is at "
                   "ADDRESS (tcp://HOST:8786) instead of local processes; the pairs are the "
                   "same, and this process writes the links. Needs 'imgmatch[dask]'.")
@click.option("--json", "as_json", is_flag=True,
              help="Print, per signal, the images searched, pairs found and links added "
                   "as one JSON object.")
@click.pass_obj
def link(db: Path | str, signals: tuple[str, ...], workers: int, dask_address: str | None,
         as_json: bool) -> int:
    """Link near-duplicates among images added since the last link pass.

    An all-pairs search over each signal's index: the new images against
    each other and against the older ones. Ingest links images as they
    arrive; this is for hash lists and for collections built without it.
    """
    _check_db(db)
    client = _dask_client(dask_address)  # fails before any work
    with _open(db) as collection:
        result = collection.link_pairs(list(signals) or None, workers=workers, client=client)
    if as_json:
        _echo_json(result)
    else:
        for name, r in result.items():
            click.echo(f"{name}: {_plural(r['searched'], 'new image')} searched, "
                       f"{_plural(r['pairs'], 'pair')} within the threshold, "
                       f"{_plural(r['links_added'], 'link')} added")
    return EXIT_OK


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the counts, signals, failure reasons and the "
                   "last runs.")
@click.pass_obj
def stats(db: Path | str, as_json: bool) -> int:
    """Counts of images, sightings, signals, platforms and failures."""
    with _open(db, readonly=True) as collection:
        info = collection.stats()
    if as_json:
        _echo_json(info | {"last_runs": [_run_json(run) for run in info["last_runs"]]})
        return EXIT_OK
    click.echo(f"collection:  {info['path']}")
    for key in ("images", "sightings", "platforms", "links", "failures", "runs"):
        click.echo(f"{key + ':':12} {info[key]}")
    click.echo("signals:     " + ", ".join(f"{k} {v}" for k, v in info["signals"].items()))
    if info["local_features"]:
        click.echo(f"local features: {_plural(info['local_features'], 'image')} "
                   "(robust tier)")
    if info["platforms_by_sightings"]:
        click.echo("platforms:   " + ", ".join(
            f"{printable(k or '-', 30)} {v}" for k, v in info["platforms_by_sightings"].items()))
    if info["failure_reasons"]:
        click.echo("failures:    " + ", ".join(
            f"{k} {v}" for k, v in info["failure_reasons"].items()))
    watch = info["watch"]
    if watch["watchlists"]:
        click.echo(f"watchlists:  {watch['watchlists']} with {watch['entries']} hashes"
                   + (f" ({watch['quarantined']} quarantined)" if watch["quarantined"] else "")
                   + f"; {_plural(watch['alerts'], 'alert')}")
    for d in watch["deliveries"]:
        click.echo(f"  delivered to {printable(d['target'], 60)}: up to alert "
                   f"{d['delivered_to']}, {d['waiting']} waiting"
                   + (f" (last error: {printable(d['last_error'], 80)})"
                      if d["last_error"] else ""))
    return EXIT_OK


def _run_json(run: dict) -> dict:
    """A recorded run as stats shows it. A run keeps its counts; the lists it
    left out (stored as null) are the catalog's to give: its failures are in
    the failures table, by reason in ``failure_reasons``."""
    kept = {k: v for k, v in run["stats"].items()
            if not (v is None and k in ("failures", "unreachable_images"))}
    return run | {"stats": kept}


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True,
              help="Port to listen on.")
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=20.0, show_default=True,
              help="Largest upload accepted; larger ones get 413 before they are read.")
@click.option("--header-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers; slower ones are "
                   "disconnected.")
@click.option("--max-connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections at most; more are closed at once.")
@click.option("--decode-workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Processes that decode uploads: at most this many decodes at once.")
@click.option("--timeout", type=click.FloatRange(0.1), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds one upload may take to decode and hash.")
@click.option("--max-memory", type=click.IntRange(0), default=DEFAULT_MAX_MEMORY >> 20,
              show_default=True, metavar="MB",
              help="Memory each decoding process may take beyond its size at start "
                   "(0: no cap).")
@click.option("--webhook", help="POST each watchlist alert to this address as it is raised "
              "(retried until it answers 2xx).")
@click.option("--webhook-token", envvar="IMGMATCH_WEBHOOK_TOKEN",
              help="Bearer token sent to the webhook.")
@click.option("--fast", is_flag=True,
              help="Uploads get the hash tier only, as 'ingest --fast' (a collection "
                   "that holds local features keeps adding them).")
@click.pass_obj
def serve(db: Path | str, host: str, port: int, max_upload_mb: float, header_timeout: float,
          max_connections: int, decode_workers: int, timeout: float, max_memory: int,
          webhook: str | None, webhook_token: str | None, fast: bool) -> int:
    """Run the HTTP service over this collection (API keys: 'imgmatch keys')."""
    _check_db(db)  # refused here, not when the service first writes
    try:
        from .service import DecodeLimits
        from .service import serve as run
    except ImportError as exc:
        raise ImgmatchError(f"the HTTP service needs its extra packages ({exc.name}): "
                            "pip install 'imgmatch[service]'") from None
    run(db, host, port, max_upload_mb, header_timeout=header_timeout,
        max_connections=max_connections,
        decoding=DecodeLimits(decode_workers, timeout, (max_memory << 20) or None),
        webhook=WebhookSink(webhook, token=webhook_token) if webhook else None,
        signals=HASH_SIGNALS if fast else DEFAULT_SIGNALS)
    return EXIT_OK


@cli.group()
def keys() -> None:
    """API keys of the HTTP service (stored only as hashes)."""


@keys.command("add")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(KEY_SCOPES), help="read, ingest or admin. Repeatable.")
@click.pass_obj
def keys_add(db: Path | str, name: str, scopes: tuple[str, ...]) -> int:
    """Create a key; it is printed once, alone on the last line."""
    with _open(db) as collection:
        key = collection.add_key(name, scopes)
        collection.audit("keys-add", _actor(), {"key": name, "scopes": list(scopes)})
    click.echo(f"key for {printable(name)} with scopes {', '.join(scopes)} (shown only now):")
    click.echo(key)
    return EXIT_OK


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as one JSON array.")
@click.pass_obj
def keys_list(db: Path | str, as_json: bool) -> int:
    """Keys by name, scopes and dates (never the keys themselves)."""
    with _open(db, readonly=True) as collection:
        rows = collection.keys()
    if as_json:
        _echo_json(rows)
        return EXIT_OK
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        click.echo(f"{r['id']:4}  {printable(r['name'], 30):30} {r['scopes']:20} "
                   f"created {r['created_at']}  {state}")
    return EXIT_OK


@keys.command("revoke")
@click.argument("name_or_id")
@click.pass_obj
def keys_revoke(db: Path | str, name_or_id: str) -> int:
    """Revoke the active keys with this name (or this id)."""
    with _open(db) as collection:
        n = collection.revoke_key(name_or_id)
        # a name that matched no key may be anything (a key pasted by mistake): not kept
        collection.audit("keys-revoke", _actor(),
                         {"revoked": n, **({"key": name_or_id} if n else {})})
    if not n:
        raise ImgmatchError(f"no active key named {name_or_id!r}")
    click.echo(f"revoked {_plural(n, 'key')}")
    return EXIT_OK


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry per line.")
@click.option("--limit", type=click.IntRange(0), default=None,
              help="Only the last N entries (default: all).")
@click.pass_context
def audit(ctx: click.Context, as_json: bool, limit: int | None) -> int:
    """The audit log: who queried, explained, exported, erased and used a key,
    oldest first ('imgmatch audit verify' checks its hash chain)."""
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    with _open(ctx.obj, readonly=True) as collection:
        entries = collection.audit_entries(limit)
    for entry in entries:
        if as_json:
            _echo_json(entry.to_json())
        else:
            details = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                                for k, v in entry.details.items())
            click.echo(f"{entry.seq:6}  {entry.at}  {printable(entry.actor, 30):30} "
                       f"{entry.action:12} {printable(details, 200)}")
    return EXIT_OK


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the check as one JSON object.")
@click.pass_obj
def audit_verify(db: Path | str, as_json: bool) -> int:
    """Check the audit log's hash chain; exit code 3 naming the first entry
    that was changed, or that follows a removed one."""
    with _open(db, readonly=True) as collection:
        check = collection.verify_audit()
    if as_json:
        _echo_json(check)
    elif check["ok"]:
        click.echo(f"audit log intact: {_plural(check['entries'], 'entry', 'entries')}"
                   + (f", last digest {check['head']}" if check["head"] else ""))
    if not check["ok"]:
        raise AuditError(f"the audit log is broken at entry {check['first_bad']}: "
                         f"{check['problem']}")
    return EXIT_OK


@cli.command()
@click.argument("sha256s", nargs=-1, required=True, callback=_sha256_prefixes)
@click.pass_obj
def erase(db: Path | str, sha256s: tuple[str, ...]) -> int:
    """Remove images for good (their signals, sightings, links and thumbnails),
    for example on a takedown or a victim's request. A SHA256 may be a unique
    prefix of 8+ hex digits; if any names no image, or several, nothing is erased."""
    with _open(db) as collection:
        n = collection.erase([collection.resolve(prefix) for prefix in sha256s])
        collection.audit("erase", _actor(), {"images": n})  # how many, never which
    click.echo(f"erased {_plural(n, 'image')}")
    return EXIT_OK


@cli.command()
@click.pass_obj
def reindex(db: Path | str) -> int:
    """Rebuild every index from the catalog (indexes are caches)."""
    with _open(db) as collection:
        counts = collection.reindex()
    for name, n in counts.items():
        click.echo(f"{name}: {_plural(n, 'code')}")
    return EXIT_OK


@cli.command()
@click.option("--signals", "signal_list", default=None, callback=_signal_list,
              help="Signals every image should have (default: the collection's own and "
                   f"the robust tier's, {','.join(DEFAULT_SIGNALS)}).")
@click.option("--robust", is_flag=True, help="Also local features (the robust tier), "
              "beside a --signals list.")
@_worker_options
@click.option("--quiet", "-q", is_flag=True,
              help="No progress display and no summary: nothing on standard output, "
                   "a count of the images left as they were on standard error.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_obj
def upgrade(db: Path | str, signal_list: tuple[str, ...] | None, robust: bool, workers: int,
            timeout: float, max_memory: int, quiet: bool, as_json: bool) -> int:
    """Give every image the signals it lacks, read again from where it was seen
    (its file, WARC record or Scrapy store), and link it anew. Images that no
    source holds any more are listed with the reason; run again when they are
    back: what was done is kept."""
    with _open(db) as collection:
        names = _with_local_features(
            signal_list or tuple(dict.fromkeys((*DEFAULT_SIGNALS, *collection.coverage()))),
            robust)
        progress = Progress(enabled=False if (quiet or as_json) else None)
        try:
            summary = collection.upgrade(
                names, workers=workers, timeout=timeout, max_memory=(max_memory << 20) or None,
                on_progress=lambda s: progress.update(
                s.images_upgraded + len(s.unreachable), s.images_upgraded,
                len(s.unreachable)))
        finally:
            progress.finish()
    if as_json:
        _echo_json(summary.to_json())
    elif quiet:
        if summary.unreachable:
            click.echo(f"{_plural(len(summary.unreachable), 'image')} could not be read "
                       "again ('imgmatch upgrade --json' lists them)", err=True)
    else:
        click.echo(f"signals:          {', '.join(summary.signals)}")
        click.echo(f"images lacking:   {summary.images_missing}")
        click.echo(f"upgraded:         {summary.images_upgraded} in {summary.seconds:.1f} s")
        click.echo(f"new links:        {summary.links_added}")
        click.echo(f"unreachable:      {len(summary.unreachable)}")
        for key, why in summary.unreachable[:50]:
            click.echo(f"  {key[:16]}  {printable(why, 160)}")
        if len(summary.unreachable) > 50:
            click.echo(f"  ... and {len(summary.unreachable) - 50} more (--json lists 1000)")
    return EXIT_PARTIAL if summary.unreachable else EXIT_OK


@cli.group()
def watchlist() -> None:
    """Partners' hash lists to watch for: every new image is checked against them."""


@watchlist.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", help="Who shared the list (an organisation, an exchange).")
@click.option("--licence", help="The terms it was shared under.")
@click.option("--threshold", type=click.IntRange(0), default=None,
              help="Largest distance that matches (default: the signal's own, PDQ 31).")
@click.option("--negative", is_flag=True,
              help="Never alert on these (stock photos, logos, site banners); what they hit "
                   "is kept out of links and clusters.")
@click.option("--flood", type=click.IntRange(1), default=None,
              help=f"Different pictures one entry may hit in a day before it is quarantined "
                   f"(default {DEFAULT_FLOOD}).")
@click.option("--signal", default="pdq", show_default=True, help="The list's hash signal.")
@click.option("--append", is_flag=True, help="Add the file's hashes to an existing list.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_obj
def watchlist_add(db: Path | str, name: str, file: Path, source: str | None, licence: str | None,
                  threshold: int | None, negative: bool, flood: int | None, signal: str,
                  append: bool, as_json: bool) -> int:
    """Watch the hashes of FILE (lines 'pdq HEX', or 'hash,quality,filename') as
    watchlist NAME. Images already catalogued are checked at once."""
    with _open(db) as collection:
        done = collection.watchlist_add(name, file, source=source, licence=licence,
                                        threshold=threshold, negative=negative, flood=flood,
                                        signal=signal, append=append)
        collection.audit("watchlist-add", _actor(), {
            "watchlist": name, "entries": done["entries_added"], "negative": negative})
    if as_json:
        _echo_json(done)
    else:
        added = _plural(done["entries_added"], "hash", "hashes")
        click.echo(f"watchlist {printable(name)}: {added}"
                   f" added ({done['already_listed']} already listed, "
                   f"{done['low_quality']} of low quality); {done['hits']} hits among the "
                   f"images catalogued, {_plural(done['alerts_added'], 'alert')} raised")
        for f in done["failures"][:20]:
            click.echo(f"  unreadable: {printable(f['detail'], 160)}", err=True)
    return EXIT_PARTIAL if done["failures"] else EXIT_OK


@watchlist.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the lists as one JSON array.")
@click.pass_obj
def watchlist_list(db: Path | str, as_json: bool) -> int:
    """Watchlists with their source, terms, threshold and entries."""
    with _open(db, readonly=True) as collection:
        rows = collection.watchlists()
    if as_json:
        _echo_json(rows)
        return EXIT_OK
    for w in rows:
        kind = "negative" if w["negative"] else "alerts"
        threshold = "default" if w["threshold"] is None else w["threshold"]
        quarantined = f", {w['quarantined']} quarantined" if w["quarantined"] else ""
        click.echo(f"{printable(w['name'], 30):30} {w['signal']:5} {kind:8} "
                   f"{w['entries']:>9} entries{quarantined}  threshold {threshold}  "
                   f"source {printable(w['source'] or '-', 40)}  licence "
                   f"{printable(w['licence'] or '-', 40)}  since {w['created_at']}")
    return EXIT_OK


@watchlist.command("remove")
@click.argument("name")
@click.argument("hashes", nargs=-1)
@click.option("--file", "hash_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Remove the hashes listed in this file (a partner's deletions).")
@click.pass_obj
def watchlist_remove(db: Path | str, name: str, hashes: tuple[str, ...],
                     hash_file: Path | None) -> int:
    """Remove watchlist NAME, or only the HASHES given (or listed in --file),
    with their hits and alerts."""
    values = list(hashes)
    if hash_file is not None:
        values += [line.value.hex() for line in read_hash_list(hash_file)
                   if line.value is not None]
    with _open(db) as collection:
        if hashes or hash_file is not None:
            n = collection.watchlist_remove_hashes(name, values)
        else:
            n = collection.watchlist_remove(name)
        collection.audit("watchlist-remove", _actor(), {"watchlist": name, "entries": n})
    click.echo(f"removed {_plural(n, 'entry', 'entries')}"
               + ("" if hashes or hash_file else f" and watchlist {printable(name)}"))
    return EXIT_OK


@watchlist.command("release")
@click.argument("name")
@click.argument("hashes", nargs=-1)
@click.pass_obj
def watchlist_release(db: Path | str, name: str, hashes: tuple[str, ...]) -> int:
    """Lift the flood quarantine of NAME's entries (all, or the HASHES given)."""
    with _open(db) as collection:
        n = collection.watchlist_release(name, list(hashes) or None)
        collection.audit("watchlist-release", _actor(), {"watchlist": name, "entries": n})
    click.echo(f"released {_plural(n, 'entry', 'entries')}")
    return EXIT_OK


@cli.command()
@click.option("--after", type=click.IntRange(0), default=0, show_default=True,
              help="Only alerts numbered above this (the last one you have).")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="At most this many.")
@click.option("--to", "to_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Deliver the alerts this file has not had yet (appended as JSON lines; "
                   "'-' for standard output), remembering how far it got.")
@click.option("--webhook", help="Deliver the alerts this address has not had yet "
              "(POST, one JSON object each), remembering how far it got.")
@click.option("--webhook-token", envvar="IMGMATCH_WEBHOOK_TOKEN",
              help="Bearer token sent to the webhook.")
@click.pass_obj
def alerts(db: Path | str, after: int, limit: int, to_file: Path | None, webhook: str | None,
           webhook_token: str | None) -> int:
    """Watchlist alerts as JSON lines, oldest first; or, with --to or --webhook,
    deliver the ones not yet delivered there (at least once, in order)."""
    if to_file is not None or webhook is not None:
        sink = FileSink(to_file) if to_file is not None else \
            WebhookSink(str(webhook), token=webhook_token)
        deliverer = AlertDeliverer(_db_checked(db), sink,
                                   on_error=lambda e: click.echo(f"retrying: {e}", err=True))
        pending = deliverer.start().close(drain=60.0)
        click.echo(f"delivered {deliverer.delivered}; {pending} still to deliver", err=True)
        return EXIT_PARTIAL if pending else EXIT_OK
    with _open(db, readonly=True) as collection:
        for alert in collection.alerts(after=after, limit=limit):
            click.echo(json.dumps(alert, ensure_ascii=False, sort_keys=True))
    return EXIT_OK


def _db_checked(db: Path | str) -> Path | str:
    _check_db(db)
    return db


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map outcomes to exit codes."""
    try:
        code = cli.main(args=argv, prog_name="imgmatch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except ImgmatchError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
    return int(code or 0) if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
