"""Pseudonyms: unique per distinct normalised name within a data set, stable, 6 hex unless
two names of the data collide; keyed by a secret key of the user's."""

from __future__ import annotations

import hmac
from itertools import count

import pandas as pd
import pytest
from handmade import PORTS, make_records

import geoflow.privacy as privacy
from geoflow.aggregate import build_tables, by_purchaser, findings
from geoflow.privacy import pseudonym, pseudonymise, user_key


def _hex(name: str) -> str:
    """The HMAC behind a pseudonym under the user's key (conftest: a test config folder)."""
    return hmac.digest(user_key().secret, name.encode(), "sha256").hex()


@pytest.fixture(scope="module")
def clash() -> tuple[str, str]:
    """Two invented names whose 6-hex ids collide under the user's key, and whose 8-hex ids
    do not (brute force: a collision is expected after ~5,000 names; one in 256 collides at
    8 digits too, and would need 10: the tests would fail for that session's key)."""
    seen: dict[str, str] = {}
    for i in count():
        name = f"person {i}"
        prefix = _hex(name)[:6]
        if prefix in seen and _hex(seen[prefix])[:8] != _hex(name)[:8]:
            return seen[prefix], name
        seen.setdefault(prefix, name)
    raise AssertionError("unreachable")


def test_colliding_names_get_distinct_longer_ids_others_keep_six_digits(clash):
    first, second = clash
    ids = pseudonym(pd.Series([first, "Rogelio Barajas", second.upper(), f"  {first} ", None]))
    assert ids[0] == ids[3] != ids[2]  # same normalised name, same id; different people differ
    assert ids[0] == "P-" + _hex(first)[:8] and ids[2] == "P-" + _hex(second)[:8]
    assert ids[1] == "P-" + _hex("rogelio barajas")[:6]  # no collision: still P-xxxxxx
    assert pd.isna(ids[4])
    # alone (no collision in the data), a name keeps its 6-digit id
    assert pseudonym(pd.Series([first]))[0] == "P-" + _hex(first)[:6]
    # stable: the same data gives the same ids
    assert pseudonym(pd.Series([second, first]))[1] == ids[0]


def test_ids_are_unique_and_as_short_as_possible_over_several_rounds(monkeypatch):
    # a tiny id space (2 hex digits) forces collisions at 2, 4 and often 6 digits
    monkeypatch.setattr(privacy, "ID_DIGITS", 2)
    names = pd.Series([f"name {i}" for i in range(600)])
    ids = pseudonym(names)
    assert ids.is_unique
    assert set(ids.str.len()) >= {4, 6}  # 2 and 4 hex digits, after "P-"
    for name, pid in zip(names, ids, strict=True):
        digits = pid[2:]
        assert _hex(name).startswith(digits) and len(digits) % 2 == 0
        assert not any(o != pid and o.startswith(pid) for o in ids)  # no id prefixes another
        if len(digits) > 2:  # lengthened only because a shorter id was shared
            shorter = "P-" + digits[:-2]
            assert sum(o.startswith(shorter) for o in ids) > 1


def test_purchaser_and_possessor_share_one_collision_free_id_space(clash):
    first, second = clash
    frame = pd.DataFrame({"purchaser_name": [first, "Ana Uno"],
                          "possessor_name": [second, first.title()]})
    out = pseudonymise(frame)
    assert out["purchaser_id"][0] != out["possessor_id"][0]  # different people
    assert out["purchaser_id"][0] == out["possessor_id"][1]  # the same person in both roles
    assert len(out["purchaser_id"][0]) == 10


def test_ids_are_categoricals_of_each_roles_own_sorted_ids():
    frame = pd.DataFrame({"purchaser_name": ["Zoe Ruiz", "Ana Uno", None, "ANA  UNO", "Eva"],
                          "possessor_name": ["Eva", None, "Luis Mar", "zoe ruiz", "Eva"]})
    out = pseudonymise(frame, key=b"a fixed test key")
    for role in ("purchaser", "possessor"):
        ids = out[f"{role}_id"]
        assert isinstance(ids.dtype, pd.CategoricalDtype)
        expected = pseudonym(frame[f"{role}_name"], key=b"a fixed test key")
        assert ids.astype("string").tolist() == expected.tolist()  # the same ids, NA kept
        # only the ids the role uses, in order: what the tables' grouping expects
        assert ids.cat.categories.tolist() == sorted(expected.dropna().unique())
    assert out["purchaser_id"][1] == out["purchaser_id"][3]  # one person, two spellings
    assert out["purchaser_id"][0] == out["possessor_id"][3]


def test_ids_of_many_names_with_longer_ids_sort_as_their_text():
    # 20,000 names: about a dozen pairs share 6 hex digits and get 8, so the sort of the
    # ids by their digests' numbers must agree with a sort of their text, shorter ids
    # included
    names = pd.Series([f"Person {i:05d}" for i in range(20_000)], dtype="string")
    frame = pd.DataFrame({"purchaser_name": names, "possessor_name": names[::-1].to_numpy()})
    out = pseudonymise(frame, key=b"a fixed test key")
    ids = out["purchaser_id"]
    assert ids.astype("string").str.len().max() > 8  # some ids are longer
    assert ids.cat.categories.tolist() == sorted(ids.astype(str).unique())
    assert ids.astype("string").tolist() == pseudonym(names, key=b"a fixed test key").tolist()
    assert out["possessor_id"].astype("string").tolist() == ids.astype("string")[::-1].tolist()


def test_colliding_purchasers_are_separate_rows_in_by_purchaser(clash):
    first, second = clash
    records = make_records([
        {"purchaser": first, "dealer": "Store A", "n": 7},
        {"purchaser": second, "dealer": "Store B", "n": 5},
    ])
    records = records.assign(purchaser_label=records["purchaser_id"])
    table = by_purchaser(records)
    assert len(table) == 2
    assert dict(zip(table["top_dealer"], table["guns"], strict=True)) == {
        "Store A": 7, "Store B": 5}
    assert set(table["purchaser"]) == {"P-" + _hex(first)[:8], "P-" + _hex(second)[:8]}
    # merged they would be one 12-gun purchaser; apart neither reaches 10
    found = {f["id"]: f for f in findings(records, build_tables(records, ports=PORTS))}
    assert found["prolific_purchasers"]["numbers"]["purchasers"] == 0



def test_trafficker_filter_explains_a_pseudonym_lengthened_in_this_data(clash):
    from geoflow.errors import FilterError
    from geoflow.select import filter_records

    first, second = clash
    records = make_records([{"purchaser": first, "n": 2}, {"purchaser": second}])
    short = "P-" + _hex(first)[:6]  # the id `first` has in data where nothing collides
    with pytest.raises(FilterError, match="ambiguous") as caught:
        filter_records(records, traffickers=[short])
    assert "P-" + _hex(first)[:8] in str(caught.value)
    assert "P-" + _hex(second)[:8] in str(caught.value)
    picked, _ = filter_records(records, traffickers=["P-" + _hex(first)[:8]])
    assert picked["purchaser_name"].tolist() == [first, first]


def test_names_worked_in_batches_get_the_ids_of_one_batch(monkeypatch):
    # many distinct names are normalised and hashed a batch at a time (bounded memory); the
    # ids, their lengths after collisions and the NA of blank names must not depend on it
    names = pd.Series([f"Name {i} Pérez" for i in range(3_000)] + [None, "  ", "NAME 7 perez"])
    whole = pseudonym(names, key=b"k" * 32)
    monkeypatch.setattr(privacy, "_BATCH", 7)
    batched = pseudonym(names, key=b"k" * 32)
    pd.testing.assert_series_equal(batched, whole)
    assert whole.iloc[-1] == whole.iloc[7] and whole.iloc[-3:-1].isna().all()


def test_names_colliding_past_sixteen_digits_get_ids_from_their_whole_digest(monkeypatch):
    # only the first 8 bytes of each digest are kept; names whose ids still collide at 16
    # hex digits are hashed again in full. A digest that zeroes 9 bytes for names starting
    # with "x" forces that path: each id must be the shortest unique prefix of its digest
    import hashlib

    def digest_of(name: bytes | memoryview) -> bytes:  # a message is any bytes-like
        name = bytes(name)
        whole = hashlib.sha256(name).digest()
        return bytes(9) + whole[9:] if name.startswith(b"x") else whole

    monkeypatch.setattr(privacy, "_hmac_sha256", lambda secret: digest_of)
    names = [f"x{i}" for i in range(40)] + [f"y{i}" for i in range(40)]
    ids = pseudonym(pd.Series(names))
    hexes = {name: digest_of(name.encode()).hex() for name in names}
    for name, pid in zip(names, ids, strict=True):
        width = next(w for w in range(6, 65, 2)
                     if sum(h[:w] == hexes[name][:w] for h in hexes.values()) == 1)
        assert pid == "P-" + hexes[name][:width], name
    assert ids.str.len().max() > 18 and ids.is_unique


@pytest.mark.parametrize("secret", [b"", b"k" * 16, b"x" * 64, bytes(range(200))])
def test_pseudonym_hash_is_standard_hmac_sha256(secret):
    # the padded key is hashed once for speed: the digests must stay RFC 2104 HMAC-SHA256,
    # or every pseudonym made before would change
    digest = privacy._hmac_sha256(secret)
    for message in (b"", b"rogelio barajas", "josé".encode(), b"a" * 300):
        assert digest(message) == hmac.digest(secret, message, "sha256")


def test_name_normalisation_is_match_key_for_any_text():
    """Names are normalised in Arrow (ASCII) or pandas (the rest); either way a name gets
    the form ``--trafficker NAME`` matches with (``select.match_key``), so a filter finds
    exactly the people who share a pseudonym."""
    from geoflow.select import match_key

    names = pd.Series(
        ["  José  DE LA-Rosa ", "STRAßE", "ﬁnal", "ＦＵＬＬ", "İstanbul", "Ωmega", "😀 Bob",
         "e\u0301", "", "   ", None, "ǅemo", "Ⅻ", "½ Pint", "\u00a0nbsp\u2003x", "O'Brien",
         "a\tb\nc", "ﬀ", "Ⓐbc", "𝐀𝐁", "\x00x", "ı", "ABC", "a  b", " a", "x_y", "!!!",
         "rogelio barajas", "Rogelio Barajas", "ROGELIO  BARAJAS."] * 3,
        dtype="string", index=range(500, 590))
    normal = privacy.normalise_names(names)
    assert normal.index.equals(names.index)
    expected = [None if pd.isna(name) or not match_key(name) else match_key(name)
                for name in names]
    assert [None if pd.isna(v) else v for v in normal] == expected
    assert normal.iloc[-3:].nunique() == 1  # one person, one pseudonym


def test_names_hashed_by_helper_processes_get_the_same_ids(monkeypatch):
    # a large data set's names are hashed by child processes (geoflow.digests, a real
    # Python each): every digest must be the RFC 2104 HMAC, in order, names with accents and
    # of any length included
    names = pd.Series([f"Name {i} Pérez" + "x" * (i % 90) for i in range(5_000)],
                      dtype="string")
    secret = b"a fixed test key"
    helped = privacy._Hashers(secret, 2)

    def here(message: bytes) -> bytes:  # the children hash every name: this process waits
        raise AssertionError("a name was hashed in the main process")

    helped.digest = here
    try:
        assert len(helped.children) == 2
        digests = helped(names)
        again = helped(names.iloc[:3])  # a second request to the same children
    finally:
        helped.close()
    expected = [hmac.digest(secret, name.encode(), "sha256") for name in names]
    assert [row.tobytes() for row in digests] == expected
    assert [row.tobytes() for row in again] == expected[:3]
    alone = pseudonym(names, key=secret)
    monkeypatch.setattr(privacy, "_helper_count", lambda count: 1)
    pd.testing.assert_series_equal(pseudonym(names, key=secret), alone)


def test_a_failing_helper_process_is_reported_and_its_share_hashed_here(
        monkeypatch, tmp_path, caplog):
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    monkeypatch.setattr(privacy.digests, "__file__", str(broken))
    monkeypatch.setattr(privacy, "_helper_count", lambda count: 1)
    names = pd.Series([f"Name {i}" for i in range(3_000)], dtype="string")
    with caplog.at_level("WARNING", logger="geoflow.privacy"):
        ids = pseudonym(names, key=b"a fixed test key")
    assert "helper process failed" in caplog.text
    monkeypatch.setattr(privacy, "_helper_count", lambda count: 0)
    pd.testing.assert_series_equal(ids, pseudonym(names, key=b"a fixed test key"))


def test_a_cell_with_no_known_purchaser_is_small_only_by_its_guns():
    cells = pd.DataFrame({"guns": [50, 2, 50, 50, 3], "purchasers": [0, 0, 1, 2, 3]})
    # 50 guns of no known purchaser name no one; 2 guns are a record about one gun or two;
    # 50 guns of one or two purchasers are a record about them
    assert privacy.small_cells(cells, 3).tolist() == [False, True, True, True, False]
    assert not privacy.small_cells(cells, 1).any()
