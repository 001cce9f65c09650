"""HMA-compatible lookup: the service spoken to as Meta's Hasher-Matcher-Actioner
clients speak to HMA (its paths, parameters and shapes), started for real on
a loopback port as in test_service.py, over watchlists made from hash lists."""

from __future__ import annotations

import io
import json
import uuid
from urllib.parse import urlencode

import pytest
from PIL import Image

pytest.importorskip("fastapi")

import imgmatch  # noqa: E402
from test_service import FIXTURES, Client, serving  # noqa: E402

PICTURES = {name: FIXTURES / "originals" / f"{name}.jpg"
            for name in ("astronaut", "cat", "coffee", "rocket", "temple")}
#: a repost of the astronaut, 4 bits from the original's PDQ
REPOST = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"


def pdq_of(data: bytes) -> str:
    return imgmatch.hash_bytes(data, ["pdq"])["signals"]["pdq"]["hex"]


def flipped(hex_value: str, bits: int) -> str:
    """A hash ``bits`` bits away from ``hex_value``."""
    value = int(hex_value, 16) ^ ((1 << bits) - 1)
    return f"{value:064x}"


def multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of (field, filename, bytes) files, and its header."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                  f"filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(client: Client, path: str, data: bytes, field: str = "photo") -> tuple[int, dict]:
    """``curl --form photo=@FILE``: HMA's upload, the field named for the content type."""
    body, headers = multipart([(field, "upload.jpg", data)])
    return client.request("POST", path, body, headers)


def get(client: Client, path: str, **params: object) -> tuple[int, dict]:
    return client.request("GET", f"{path}?{urlencode(params)}" if params else path)


@pytest.fixture(scope="module")
def hma(tmp_path_factory):
    root = tmp_path_factory.mktemp("hma")
    db = root / "c.db"
    pdq = {name: pdq_of(path.read_bytes()) for name, path in PICTURES.items()}
    # a partner's list in python-threatexchange's format, another as Meta's
    # hasher writes it (CSV with a header), and a negative list of stock photos
    (root / "partner-a.txt").write_text(
        "".join(f"pdq {pdq[n]} {n}-ad\n" for n in ("astronaut", "cat", "rocket")))
    (root / "partner-b.csv").write_text(
        "hash,quality,filename\n" + "".join(f"{pdq[n]},100,{n}.jpg\n"
                                            for n in ("astronaut", "coffee")))
    (root / "stock.txt").write_text("".join(f"pdq {pdq[n]}\n" for n in ("rocket", "temple")))
    with imgmatch.Collection.open(db) as c:
        c.watchlist_add("PARTNER_A", root / "partner-a.txt", source="partner A")
        c.watchlist_add("PARTNER_B", root / "partner-b.csv", source="partner B")
        c.watchlist_add("STOCK", root / "stock.txt", negative=True)
        entries = {(m.watchlist, name): m.entry_id for name in pdq
                   for m in c.watch_lookup(imgmatch.parse_hash(pdq[name]))}
        # an entry held for review, as flood control holds one that hit too much
        with c.catalog.transaction():
            c.catalog.watch.quarantine_in(entries[("PARTNER_B", "coffee")])
        keys = {scope: c.add_key(f"{scope}-client", [scope])
                for scope in ("read", "ingest", "admin")}
    with serving(db, root) as port:
        yield {"port": port, "keys": keys, "db": db, "pdq": pdq, "entries": entries,
               "read": Client(port, keys["read"])}


# ---------------------------------------------------------------- keys
ROUTES = [("GET", "/m/raw_lookup?signal_type=pdq&signal=" + "0" * 64),
          ("GET", "/m/lookup?signal_type=pdq&signal=" + "0" * 64),
          ("POST", "/m/lookup"), ("GET", "/m/index/status"), ("POST", "/m/compare"),
          ("GET", "/h/hash?url=https://example.org/a.jpg"), ("POST", "/h/hash")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_hma_route_needs_a_key_with_the_read_scope(hma, method, path):
    port, keys = hma["port"], hma["keys"]
    status, body = Client(port).request(method, path)
    assert status == 401 and body["error"]["reason"] == "unauthorized"
    assert Client(port, "imk_not-a-key").request(method, path)[0] == 401
    status, body = Client(port, keys["ingest"]).request(method, path)
    assert status == 403 and "'read'" in body["error"]["message"]


def test_the_read_and_admin_keys_are_let_in(hma):
    for scope in ("read", "admin"):
        client = Client(hma["port"], hma["keys"][scope])
        assert get(client, "/m/index/status")[0] == 200


# --------------------------------------------------------- raw lookup
def test_raw_lookup_gives_bank_content_ids_closest_first(hma):
    client, pdq, entries = hma["read"], hma["pdq"], hma["entries"]
    status, body = get(client, "/m/raw_lookup", signal_type="pdq", signal=pdq["astronaut"])
    assert status == 200
    assert sorted(body["matches"]) == sorted([entries[("PARTNER_A", "astronaut")],
                                              entries[("PARTNER_B", "astronaut")]])
    status, body = get(client, "/m/raw_lookup", signal_type="pdq",
                       signal=flipped(pdq["cat"], 3), include_distance="true")
    assert status == 200
    assert body == {"matches": [{"bank_content_id": entries[("PARTNER_A", "cat")],
                                 "distance": "3"}]}
    far = f"{int(pdq['cat'], 16) ^ (2**256 - 1):064x}"  # every bit different
    assert get(client, "/m/raw_lookup", signal_type="pdq", signal=far) == (200, {"matches": []})


def test_raw_lookup_takes_the_banks_filter(hma):
    client, pdq, entries = hma["read"], hma["pdq"], hma["entries"]
    status, body = get(client, "/m/raw_lookup", signal_type="pdq", signal=pdq["astronaut"],
                       banks="PARTNER_B,NOT_A_BANK")
    assert (status, body) == (200, {"matches": [entries[("PARTNER_B", "astronaut")]]})
    assert get(client, "/m/raw_lookup", signal_type="pdq", signal=pdq["astronaut"],
               banks="NOT_A_BANK") == (200, {"matches": []})


# ------------------------------------------------------------- lookup
def test_lookup_by_hash_gives_matches_by_bank(hma):
    client, pdq, entries = hma["read"], hma["pdq"], hma["entries"]
    status, body = get(client, "/m/lookup", signal_type="pdq", signal=pdq["astronaut"],
                       bypass_coinflip="true", seed="1234")
    assert status == 200
    assert body == {
        "PARTNER_A": [{"bank_content_id": entries[("PARTNER_A", "astronaut")], "distance": "0"}],
        "PARTNER_B": [{"bank_content_id": entries[("PARTNER_B", "astronaut")], "distance": "0"}]}
    status, body = get(client, "/m/lookup", signal_type="pdq", signal=pdq["astronaut"],
                       banks="PARTNER_A")
    assert status == 200 and list(body) == ["PARTNER_A"]
    status, body = get(client, "/m/lookup", signal_type="pdq", signal=flipped(pdq["cat"], 40))
    assert (status, body) == (200, {})


def test_lookup_finds_a_mirrored_copy(hma):
    """Unlike HMA, a hash is looked up with its rotations and mirrors."""
    out = io.BytesIO()
    Image.open(PICTURES["astronaut"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        out, "JPEG", quality=90)
    mirrored = pdq_of(out.getvalue())
    assert imgmatch.parse_hash(mirrored) - imgmatch.parse_hash(hma["pdq"]["astronaut"]) > 100
    status, body = get(hma["read"], "/m/lookup", signal_type="pdq", signal=mirrored)
    assert status == 200 and set(body) == {"PARTNER_A", "PARTNER_B"}
    assert int(body["PARTNER_A"][0]["distance"]) <= 31


def test_negative_lists_and_quarantined_entries_are_never_matches(hma):
    """The temple is on a negative list only; the rocket on a partner's list and
    a negative one (a known stock photo: no alert, so no match); the coffee
    entry is quarantined."""
    client, pdq = hma["read"], hma["pdq"]
    for name in ("temple", "rocket", "coffee"):
        assert get(client, "/m/lookup", signal_type="pdq", signal=pdq[name]) == (200, {})
        assert get(client, "/m/raw_lookup", signal_type="pdq", signal=pdq[name],
                   include_distance="true") == (200, {"matches": []})
        assert get(client, "/m/lookup", signal_type="pdq", signal=pdq[name],
                   banks="STOCK") == (200, {})


def test_lookup_of_an_uploaded_photo(hma):
    client, entries = hma["read"], hma["entries"]
    status, body = upload(client, "/m/lookup?bypass_coinflip=false", REPOST.read_bytes())
    assert status == 200
    assert body == {"pdq": {
        "PARTNER_A": [{"bank_content_id": entries[("PARTNER_A", "astronaut")], "distance": "4"}],
        "PARTNER_B": [{"bank_content_id": entries[("PARTNER_B", "astronaut")], "distance": "4"}]}}
    status, body = upload(client, "/m/lookup?banks=PARTNER_B", REPOST.read_bytes())
    assert status == 200 and list(body["pdq"]) == ["PARTNER_B"]
    status, body = upload(client, "/m/lookup", PICTURES["temple"].read_bytes())
    assert (status, body) == (200, {"pdq": {}})


def test_an_upload_is_one_file_in_the_photo_field(hma):
    client, data = hma["read"], REPOST.read_bytes()
    for path in ("/m/lookup", "/h/hash"):
        status, body = upload(client, path, data, field="video")
        assert status == 400 and "'photo'" in body["error"]["message"]
        body_bytes, headers = multipart([("photo", "a.jpg", data), ("photo", "b.jpg", data)])
        status, body = client.request("POST", path, body_bytes, headers)
        assert status == 400 and "one file" in body["error"]["message"]
        status, body = client.post_form(path, {"photo": "not a file"})
        assert status == 400 and body["error"]["reason"] == "bad-request"


def test_a_lookup_by_url_is_refused(hma):
    """imgmatch fetches no URL a client names (SSRF): POST the picture."""
    client = hma["read"]
    for path in ("/m/lookup", "/h/hash"):
        status, body = get(client, path, url="http://169.254.169.254/latest/meta-data/")
        assert status == 400 and body["error"]["reason"] == "bad-request"
        assert "POST" in body["error"]["message"] and "'photo'" in body["error"]["message"]
    status, body = get(client, "/m/lookup")
    assert status == 400 and "signal_type" in body["error"]["message"]


# ------------------------------------------------------------- hashing
def test_hash_of_an_uploaded_photo(hma):
    client = hma["read"]
    status, body = upload(client, "/h/hash", PICTURES["cat"].read_bytes())
    assert (status, body) == (200, {"pdq": hma["pdq"]["cat"]})
    status, body = upload(client, "/h/hash?types=pdq,phash", PICTURES["cat"].read_bytes())
    assert status == 200 and set(body) == {"pdq", "phash"} and len(body["phash"]) == 16
    status, body = upload(client, "/h/hash?types=orb", PICTURES["cat"].read_bytes())
    assert status == 400 and "pdq" in body["error"]["message"]


def test_an_unusable_upload_gets_400_with_its_reason(hma):
    """Decoded in the sandbox, as every upload is: a broken file is the client's."""
    client = hma["read"]
    status, body = upload(client, "/h/hash", PICTURES["cat"].read_bytes()[:2000])
    assert status == 400 and body["error"]["reason"] == "decode-error"
    status, body = upload(client, "/m/lookup", b"<svg/>")
    assert status == 400 and body["error"]["reason"] == "unsupported-format"


# ------------------------------------------------------------- compare
def test_compare_gives_hma_s_comparison_per_signal(hma):
    client, pdq = hma["read"], hma["pdq"]

    def compare(payload: object) -> tuple[int, dict]:
        return client.request("POST", "/m/compare", json.dumps(payload).encode(),
                              {"Content-Type": "application/json"})

    assert compare({"pdq": [pdq["cat"], flipped(pdq["cat"], 9)]}) == (
        200, {"pdq": [True, {"distance": 9}]})
    assert compare({"pdq": [pdq["cat"], flipped(pdq["cat"], 32)],
                    "dhash": ["00" * 8, "ff" * 8]}) == (
        200, {"pdq": [False, {"distance": 32}], "dhash": [False, {"distance": 64}]})
    status, body = compare({"pdq": [pdq["cat"], "xyz"]})
    assert status == 400 and body["error"]["reason"] == "bad-hash"
    status, body = compare({"video_md5": ["00", "00"]})
    assert status == 400 and "signal type" in body["error"]["message"]
    for bad in ({"pdq": [pdq["cat"]]}, {"pdq": pdq["cat"]}, {"pdq": [1, 2]}, [pdq["cat"]]):
        status, body = compare(bad)
        assert status == 400 and body["error"]["reason"] == "bad-request"
    status, body = client.request("POST", "/m/compare", b"[" * 100_000,
                                  {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["reason"] == "bad-request"


# ---------------------------------------------------------- index status
def test_index_status_per_signal(hma):
    client = hma["read"]
    status, body = get(client, "/m/index/status")
    assert status == 200
    # 3 + 2 entries of partners' lists, 2 of the negative list
    assert body["pdq"]["present"] is True and body["pdq"]["size"] == 7
    assert body["pdq"]["built_to"] > 1_700_000_000
    assert body["phash"] == {"present": False, "size": 0, "built_to": -1}
    status, body = get(client, "/m/index/status", signal_type="pdq")
    assert status == 200 and list(body) == ["pdq"]
    status, body = get(client, "/m/index/status", signal_type="video_md5")
    assert status == 400 and "pdq" in body["error"]["message"]


# ------------------------------------------------------- bad requests
def test_bad_hashes_and_unknown_signal_types_get_400(hma):
    client = hma["read"]
    for path in ("/m/raw_lookup", "/m/lookup"):
        status, body = get(client, path, signal_type="pdq", signal="xyz")
        assert status == 400 and body["error"]["reason"] == "bad-hash"
        status, body = get(client, path, signal_type="pdq", signal="ab" * 31)
        assert status == 400 and "64 hex digits" in body["error"]["message"]
        status, body = get(client, path, signal_type="video_md5", signal="0" * 32)
        assert status == 400 and "pdq" in body["error"]["message"]
    status, body = get(client, "/m/raw_lookup", signal_type="pdq")
    assert status == 400 and "signal" in body["error"]["message"]
    status, body = get(client, "/m/raw_lookup", signal_type="pdq", signal="0" * 64,
                       include_distance="perhaps")
    assert status == 400 and "include_distance" in body["error"]["message"]


def test_lookups_are_audited_without_a_hash_or_a_bank_name(hma):
    # its own lookups: the fixture is per worker, and this test may run first
    client, pdq = hma["read"], hma["pdq"]
    assert get(client, "/m/lookup", signal_type="pdq", signal=pdq["astronaut"],
               banks="PARTNER_A")[0] == 200
    assert get(client, "/m/raw_lookup", signal_type="pdq", signal=pdq["cat"])[0] == 200
    assert upload(client, "/m/lookup", PICTURES["temple"].read_bytes())[0] == 200
    with imgmatch.Collection.open(hma["db"], readonly=True) as c:
        entries = [e for e in c.audit_entries() if e.action == "hma-lookup"]
    assert entries and all(e.actor == "key:read-client" for e in entries)
    text = json.dumps([e.details for e in entries])
    assert not any(value in text for value in hma["pdq"].values())
    assert "PARTNER" not in text and '"images": 1' in text and '"hashes": 1' in text


def test_openapi_lists_the_hma_routes(hma):
    status, doc = Client(hma["port"]).request("GET", "/openapi.json")
    assert status == 200
    assert {"/m/raw_lookup", "/m/lookup", "/m/index/status", "/m/compare",
            "/h/hash"} <= set(doc["paths"])
