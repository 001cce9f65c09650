"""Imports flow one way: every module's imports, parsed, against the layers.

Top to bottom (a module may import from its own layer only where an entry of
SAME_LAYER says why, and from the layers below it):

    shells      the CLI (and its progress display), the HTTP service, the
                Scrapy pipeline: they import only the public package and its
                exceptions, as any program would
    facade      the public package (imgmatch/__init__.py) and Collection
    pipeline    ingest, upgrade, matching, clustering, reports, the link pass,
                hash lists, inputs, the index cache, API keys, workers
    storage     the SQLite catalog, index files, multi-index tables, the
                descriptor index, all-pairs search; the signals, local
                features and the evidence model
    base        plain records and result types, decoding, errors, text
                helpers, orphan-proof processes, the catalog's PostgreSQL
                dialect: nothing from the layers above

The modules of one package (imgmatch.signals, imgmatch.report) may import
each other. Imports under ``if TYPE_CHECKING:`` count like any other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imgmatch"

LAYERS: list[tuple[str, frozenset[str]]] = [
    ("shells", frozenset({
        "imgmatch.cli", "imgmatch.cli_progress", "imgmatch.service", "imgmatch.service_hma",
        "imgmatch.integrations", "imgmatch.integrations.scrapy"})),
    ("facade", frozenset({"imgmatch", "imgmatch.collection"})),
    ("pipeline", frozenset({
        "imgmatch.ingest", "imgmatch.upgrade", "imgmatch.match", "imgmatch.cluster",
        "imgmatch.report", "imgmatch.analysis", "imgmatch.workers", "imgmatch.sources",
        "imgmatch.warc", "imgmatch.inputs", "imgmatch.hashlists", "imgmatch.hash_import",
        "imgmatch.hash_export",
        "imgmatch.link_pass", "imgmatch.index_cache", "imgmatch.keys", "imgmatch.explain",
        "imgmatch.sandbox", "imgmatch.watchlists", "imgmatch.alert_delivery",
        "imgmatch.dask_pool"})),
    ("storage", frozenset({
        "imgmatch.catalog", "imgmatch.watch_store", "imgmatch.index", "imgmatch.index_files",
        "imgmatch.descriptors",
        "imgmatch.mih", "imgmatch.pairs", "imgmatch.signals", "imgmatch.features",
        "imgmatch.evidence"})),
    ("base", frozenset({
        "imgmatch.decode", "imgmatch.errors", "imgmatch.text", "imgmatch.records",
        "imgmatch.model", "imgmatch.orphans", "imgmatch.audit", "imgmatch.pg"})),
]

#: What the shells may import of imgmatch: the public names and the exceptions.
SHELL_IMPORTS = frozenset({"imgmatch", "imgmatch.errors"})

#: Imports within one layer, each with the reason it is allowed.
SAME_LAYER: dict[tuple[str, str], str] = {
    ("imgmatch.cli", "imgmatch.cli_progress"): "the CLI's own progress display",
    ("imgmatch.cli", "imgmatch.service"): "'imgmatch serve' starts the HTTP service",
    ("imgmatch.service", "imgmatch.service_hma"): "the service answers HMA's lookups too",
    ("imgmatch", "imgmatch.collection"): "the public package is the facade's front door",
    ("imgmatch.ingest", "imgmatch.analysis"): "ingest runs the analysis (in process)",
    ("imgmatch.ingest", "imgmatch.workers"): "ingest hands files to supervised workers",
    ("imgmatch.ingest", "imgmatch.dask_pool"): "... or to a Dask cluster, when given a client",
    ("imgmatch.dask_pool", "imgmatch.workers"): "each Dask task runs in a capped worker process",
    ("imgmatch.dask_pool", "imgmatch.analysis"): "... and answers with the analysis",
    ("imgmatch.ingest", "imgmatch.sources"): "ingest consumes the items sources make",
    ("imgmatch.upgrade", "imgmatch.analysis"): "an upgrade analyses images again",
    ("imgmatch.upgrade", "imgmatch.workers"): "... in supervised workers, as ingest does",
    ("imgmatch.workers", "imgmatch.analysis"): "the analysis is what a worker runs",
    ("imgmatch.sandbox", "imgmatch.analysis"): "a sandbox worker analyses an upload",
    ("imgmatch.sandbox", "imgmatch.match"): "... and makes its query as a query does",
    ("imgmatch.sandbox", "imgmatch.workers"): "... capped as an ingest worker is",
    ("imgmatch.warc", "imgmatch.sources"): "web archive records become the same items",
    ("imgmatch.inputs", "imgmatch.sources"): "inputs chains every kind of source",
    ("imgmatch.inputs", "imgmatch.warc"): "... web archives included",
    ("imgmatch.hash_import", "imgmatch.hashlists"): "importing a list reads it",
    ("imgmatch.link_pass", "imgmatch.match"): "the link pass scores pairs as queries do",
    ("imgmatch.ingest", "imgmatch.watchlists"): "ingest checks new images against watchlists",
    ("imgmatch.watchlists", "imgmatch.match"): "a watch hit is scored as a match is",
    ("imgmatch.catalog", "imgmatch.watch_store"): "the catalog's watchlist tables",
    ("imgmatch.report", "imgmatch.match"): "a report states the score a match needs",
    ("imgmatch.explain", "imgmatch.match"): "an explanation measures a pair as a query does",
    ("imgmatch.explain", "imgmatch.upgrade"): "... reading the picture again as an upgrade does",
    ("imgmatch.index", "imgmatch.index_files"): "an index saves through the shared folder code",
    ("imgmatch.index", "imgmatch.mih"): "a hash index is multi-index tables",
    ("imgmatch.descriptors", "imgmatch.index_files"): "... and so does the descriptor index",
    ("imgmatch.descriptors", "imgmatch.features"): "it indexes local features' descriptors",
    ("imgmatch.pairs", "imgmatch.mih"): "the all-pairs join cuts codes as the tables do",
    ("imgmatch.signals", "imgmatch.features"): "local features are a signal kind of the registry",
    ("imgmatch.signals", "imgmatch.evidence"): "... whose agreement threshold is the model's",
    ("imgmatch.evidence", "imgmatch.features"): "verified pairs list local features by name",
    ("imgmatch.records", "imgmatch.errors"): "a hash value raises SignalError",
    ("imgmatch.records", "imgmatch.text"): "a sighting cleans crawled text and dates",
    ("imgmatch.model", "imgmatch.records"): "results carry sightings and hash values",
    ("imgmatch.decode", "imgmatch.errors"): "decoding raises the input errors",
    ("imgmatch.audit", "imgmatch.errors"): "an entry that would name a picture raises AuditError",
    ("imgmatch.audit", "imgmatch.model"): "the chain is checked over audit entries",
    ("imgmatch.pg", "imgmatch.errors"): "a PostgreSQL server it cannot reach is a CatalogError",
}

#: Third-party modules a module must never import (STYLE: the catalog never
#: imports FAISS, the indexes never SQL, decoding only Pillow and numpy).
FORBIDDEN: dict[str, frozenset[str]] = {
    "imgmatch.catalog": frozenset({"faiss"}),
    **{m: frozenset({"sqlite3"}) for m in ("imgmatch.index", "imgmatch.index_files",
                                             "imgmatch.descriptors", "imgmatch.mih",
                                             "imgmatch.pairs", "imgmatch.features")},
    **{m: frozenset({"sqlite3", "faiss"}) for m in LAYERS[-1][1] | {"imgmatch.signals"}},
}

#: Attributes of a Collection that are not for programs: the shells never touch them.
PRIVATE_HANDLES = frozenset({"catalog", "indexes", "descriptors"})


def _within(module: str, member: str) -> bool:
    """Whether a module is the listed one, or inside a listed package (the root
    package's modules are listed one by one)."""
    return module == member or (member != "imgmatch" and module.startswith(member + "."))


def _unit(module: str) -> str:
    """The listed name a module belongs to (a package's modules: the package)."""
    return max((m for _, ms in LAYERS for m in ms if _within(module, m)), key=len,
               default=module)


def layer_of(module: str) -> str | None:
    """The layer of a module (None: it is in none)."""
    unit = _unit(module)
    return next((name for name, members in LAYERS if unit in members), None)


def _rank(layer: str) -> int:
    return [name for name, _ in LAYERS].index(layer)


def imports_of(module: str, source: str, *, is_package: bool = False,
               known: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, module) of every import in a module's source: relative imports
    resolved, ``from X import name`` counted as X unless X.name is a module."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in known else target))
    return out


def violations(module: str, source: str, *, is_package: bool = False,
               known: frozenset[str] = frozenset()) -> list[str]:
    """What breaks the layering in one module's source, one line per import."""
    layer = layer_of(module)
    if layer is None:
        return [f"{module} is in no layer: add it to LAYERS in tests/test_layering.py"]
    out = []
    for line, target in imports_of(module, source, is_package=is_package, known=known):
        top = target.split(".")[0]
        if top in FORBIDDEN.get(_unit(module), ()):
            out.append(f"{module}:{line} imports {target}, which it must never import")
        if top != "imgmatch":
            continue
        where = layer_of(target)
        if where is None:
            out.append(f"{module}:{line} imports {target}, which is in no layer")
            continue
        mine, theirs = _unit(module), _unit(target)
        if mine == theirs:
            continue  # within one module or one package
        if layer == "shells" and where != "shells" and target not in SHELL_IMPORTS:
            out.append(f"{module}:{line} ({layer}) imports {target}: a shell uses only "
                       f"the public package and imgmatch.errors")
        elif _rank(where) < _rank(layer):
            out.append(f"{module}:{line} ({layer}) imports {target} ({where}), a layer above")
        elif where == layer and (mine, theirs) not in SAME_LAYER:
            out.append(f"{module}:{line} ({layer}) imports {target} from its own layer; "
                       f"allow it in SAME_LAYER with the reason, or move one of them")
    return out


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_imports_flow_one_way():
    modules = _modules()
    known = frozenset(modules)
    found = []
    for name, path in modules.items():
        found += violations(name, path.read_text(), is_package=path.name == "__init__.py",
                            known=known)
    for line in found:
        print(line)
    assert not found, "\n".join(found)


def test_every_allowed_exception_is_still_needed():
    """An allowance nobody uses any more goes, so the list stays true."""
    modules = _modules()
    known = frozenset(modules)
    used = set()
    for name, path in modules.items():
        for _, target in imports_of(name, path.read_text(),
                                    is_package=path.name == "__init__.py", known=known):
            used.add((_unit(name), _unit(target)))
    stale = sorted(set(SAME_LAYER) - used)
    for pair in stale:
        print("unused:", pair)
    assert not stale


def test_shells_leave_the_collection_s_handles_alone():
    found = []
    for name, path in _modules().items():
        if layer_of(name) != "shells":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_HANDLES:
                found.append(f"{name}:{node.lineno} uses .{node.attr}")
    for line in found:
        print(line)
    assert not found


# ------------------------------------------------------------- the checker
def test_the_checker_catches_an_import_from_above():
    fake = "from .catalog import Catalog\nimport numpy\n"
    found = violations("imgmatch.decode", fake, known=frozenset({"imgmatch.catalog"}))
    assert found == ["imgmatch.decode:1 (base) imports imgmatch.catalog (storage), "
                     "a layer above"]


def test_the_checker_holds_shells_to_the_public_package():
    fake = ("from . import Collection\nfrom .errors import ImgmatchError\n"
            "from .ingest import DEFAULT_BATCH\nfrom .collection import Collection\n")
    found = violations("imgmatch.cli", fake, known=frozenset({"imgmatch.ingest"}))
    assert [f.split(" ")[0] for f in found] == ["imgmatch.cli:3", "imgmatch.cli:4"]
    assert all("public package" in f for f in found)


def test_the_checker_asks_a_reason_for_same_layer_imports():
    found = violations("imgmatch.cluster", "from .keys import SCOPES\n")
    assert len(found) == 1 and "own layer" in found[0]
    assert violations("imgmatch.ingest", "from .workers import Job\n") == []


def test_the_checker_resolves_relative_imports_in_packages():
    assert violations("imgmatch.report.table", "from ..text import printable\n"
                      "from .names import ClusterNames\n") == []
    found = violations("imgmatch.signals.pdq", "from ..ingest import ingest\n")
    assert found and "a layer above" in found[0]
    assert imports_of("imgmatch.report", "from . import html\n", is_package=True,
                      known=frozenset({"imgmatch.report.html"})) == [(1, "imgmatch.report.html")]
    assert imports_of("imgmatch.integrations.scrapy", "from .. import Collection\n") == [
        (1, "imgmatch")]


def test_the_checker_knows_forbidden_packages_and_unknown_modules():
    assert violations("imgmatch.catalog", "import faiss\n") == [
        "imgmatch.catalog:1 imports faiss, which it must never import"]
    assert "in no layer" in violations("imgmatch.newthing", "")[0]
    assert "in no layer" in violations("imgmatch.cluster", "from .newthing import x\n")[0]


# ------------------------------------------------------------ import weight
def test_importing_a_low_module_loads_no_storage_and_no_facade():
    """A worker imports imgmatch.decode; the package's names load on first use."""
    code = ("import sys, imgmatch.decode, imgmatch.records, imgmatch.signals\n"
            "heavy = {'sqlite3', 'faiss', 'imgmatch.collection', 'imgmatch.catalog'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_lazy_names_match_what_type_checkers_are_told():
    """imgmatch/__init__.py names each lazily loaded export twice: in _LAZY, and
    in the ``if TYPE_CHECKING:`` imports that give checkers its type."""
    import imgmatch

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    told = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1
                for alias in imp.names:
                    where = imp.module if alias.asname is None or alias.asname == alias.name \
                        else f"{imp.module}:{alias.name}"
                    told[alias.asname or alias.name] = where
    assert told == imgmatch._LAZY
    assert set(imgmatch.__all__) == set(told) | set(imgmatch.errors.__all__)
