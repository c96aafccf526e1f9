"""The synthetic data set: layout, headers, determinism and referential integrity."""
from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

import fastframe
from fastframe.client import read_table_csv
from fastframe.datagen import HEADERS, MONTHS, SKIPPED_HEADERS, generate
from fastframe.schema import TABLES

TRANSACTIONS = 3_000
SEED = 7

# The header lines of PROTOCOL.md §9, verbatim.
PROTOCOL_HEADERS = {
    "menu_items": "item_id,item_name,category,price,is_seasonal,available_from,available_to",
    "stores": "store_id,store_name,street,postal_code,city,state,latitude,longitude",
    "transaction_items": "transaction_id,item_id,quantity,unit_price,subtotal,created_at",
    "transactions": "transaction_id,store_id,payment_method_id,voucher_id,user_id,"
                    "original_amount,discount_applied,final_amount,created_at",
    "users": "user_id,gender,birthdate,registered_at",
}
MONTHLY = ("transaction_items", "transactions", "users")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z")
MONEY = re.compile(r"\d+\.\d\d?\Z")


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows_file(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, strict=True))


def read_rows(root: Path, table: str) -> list:
    return [row for path in sorted((root / table).glob("*.csv")) for row in read_rows_file(path)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, generate(root, transactions=TRANSACTIONS, seed=SEED)


@pytest.fixture(scope="module")
def tables(dataset):
    root, _ = dataset
    return {table: read_rows(root, table) for table in (*HEADERS, *SKIPPED_HEADERS)}


def test_same_seed_gives_same_bytes_in_another_process(dataset, tmp_path):
    root, _ = dataset
    # A different hash seed would expose any dependence on set or dict ordering.
    script = ("import sys; from fastframe.datagen import generate; "
              f"generate(sys.argv[1], transactions={TRANSACTIONS}, seed={SEED})")
    # The child imports the fastframe under test (installed, or the source tree), not ../src.
    package_root = str(Path(fastframe.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                        os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    assert tree_digest(tmp_path) == tree_digest(root)


def test_different_seed_gives_different_data(dataset, tmp_path):
    root, _ = dataset
    generate(tmp_path, transactions=TRANSACTIONS, seed=SEED + 1)
    for table in MONTHLY:
        name = f"{table}/{table}_202401.csv"
        assert (tmp_path / name).read_bytes() != (root / name).read_bytes()


def test_layout_and_file_names(dataset):
    root, _ = dataset
    expected = {f"{t}/{t}.csv" for t in ("menu_items", "stores", *SKIPPED_HEADERS)}
    expected |= {f"{t}/{t}_{m}.csv" for t in MONTHLY for m in MONTHS}
    assert set(tree_digest(root)) == expected
    assert MONTHS[0] == "202307" and MONTHS[-1] == "202506" and len(MONTHS) == 24
    assert list(MONTHS) == sorted(set(MONTHS))


def test_header_lines_are_those_of_protocol(dataset):
    root, _ = dataset
    assert {t: ",".join(h) for t, h in HEADERS.items()} == PROTOCOL_HEADERS
    for path in root.rglob("*.csv"):
        table = path.parent.name
        header = (HEADERS | SKIPPED_HEADERS)[table]
        assert path.read_bytes().split(b"\n", 1)[0] == ",".join(header).encode(), path


def test_headers_match_the_real_sample(conformance_dir):
    for table, header in (HEADERS | SKIPPED_HEADERS).items():
        for path in (conformance_dir / "sample_data" / table).glob("*.csv"):
            with open(path, newline="", encoding="utf-8") as f:
                assert tuple(next(csv.reader(f))) == header, path


def test_summary_counts_rows_files_and_bytes(dataset, tables):
    root, summary = dataset
    assert set(summary) == set(HEADERS) | set(SKIPPED_HEADERS)
    for table, entry in summary.items():
        files = list((root / table).glob("*.csv"))
        assert entry["files"] == len(files)
        assert entry["bytes"] == sum(p.stat().st_size for p in files)
        assert entry["rows"] == len(tables[table])
    assert summary["transactions"]["rows"] == TRANSACTIONS
    assert summary["users"]["rows"] == TRANSACTIONS // 10
    assert (summary["menu_items"]["rows"], summary["stores"]["rows"]) == (8, 10)
    assert summary["payment_methods"]["rows"] > 0 and summary["vouchers"]["rows"] > 0


def test_transactions_spread_over_every_month_in_time_order(dataset):
    root, _ = dataset
    for month in MONTHS:
        rows = read_rows_file(root / "transactions" / f"transactions_{month}.csv")
        stamps = [r["created_at"] for r in rows]
        assert stamps, month
        assert stamps == sorted(stamps)
        prefix = f"{month[:4]}-{month[4:]}-"
        assert all(TIMESTAMP.match(s) and s.startswith(prefix) for s in stamps), month


def test_transaction_values(tables):
    transactions = tables["transactions"]
    ids = [r["transaction_id"] for r in transactions]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)
    assert {r["store_id"] for r in transactions} == {str(i) for i in range(1, 11)}
    assert {r["payment_method_id"] for r in transactions} == {str(i) for i in range(1, 6)}
    for r in transactions:
        for key in ("original_amount", "discount_applied", "final_amount"):
            assert MONEY.match(r[key]), r
        assert (Decimal(r["original_amount"]) - Decimal(r["discount_applied"])
                == Decimal(r["final_amount"])), r
        assert (r["discount_applied"] != "0.0") == (r["voucher_id"] != ""), r


def test_some_user_and_voucher_ids_are_empty(tables):
    transactions = tables["transactions"]
    empty_users = sum(r["user_id"] == "" for r in transactions)
    vouchers = sum(r["voucher_id"] != "" for r in transactions)
    assert 0 < empty_users < len(transactions) // 3
    assert 0 < vouchers < len(transactions) // 10
    voucher_ids = {r["voucher_id"] for r in tables["vouchers"]}
    assert {r["voucher_id"] for r in transactions} - {""} <= voucher_ids
    # Plain integers, as in the real sample (no "12.0").
    assert all(r["user_id"].isdigit() for r in transactions if r["user_id"])


def test_users_are_numbered_by_registration_and_referenced_after(tables):
    users = tables["users"]
    assert [r["user_id"] for r in users] == [str(i) for i in range(1, len(users) + 1)]
    assert [r["registered_at"] for r in users] == sorted(r["registered_at"] for r in users)
    assert {r["gender"] for r in users} <= {"male", "female", ""}
    assert all(re.match(r"\d{4}-\d\d-\d\d\Z", r["birthdate"]) for r in users)
    registered = {r["user_id"]: r["registered_at"][:7] for r in users}
    for r in tables["transactions"]:
        if r["user_id"]:
            assert registered[r["user_id"]] <= r["created_at"][:7], r


def test_items_reference_transactions_and_menu(tables):
    transactions = {r["transaction_id"]: r for r in tables["transactions"]}
    menu = {r["item_id"]: r for r in tables["menu_items"]}
    lines = Counter()
    totals = Counter()
    for r in tables["transaction_items"]:
        tx = transactions[r["transaction_id"]]
        item = menu[r["item_id"]]
        assert r["created_at"] == tx["created_at"]
        assert r["unit_price"] == item["price"]
        assert Decimal(r["subtotal"]) == Decimal(r["unit_price"]) * int(r["quantity"])
        if item["is_seasonal"] == "True":
            assert item["available_from"] <= r["created_at"][:10] <= item["available_to"]
        lines[r["transaction_id"]] += 1
        totals[r["transaction_id"]] += Decimal(r["subtotal"])
    assert set(lines) == set(transactions)
    assert set(lines.values()) == {1, 2, 3, 4}
    assert all(Decimal(t["original_amount"]) == totals[i] for i, t in transactions.items())
    assert {r["item_id"] for r in tables["transaction_items"]} == set(menu)


def test_non_ascii_and_quoted_fields_round_trip(dataset, tables):
    root, _ = dataset
    stores = tables["stores"]
    text = " ".join(v for r in stores for v in r.values())
    for name in ("São Paulo", "Café Münster", "Bahnhofstraße", "Zürich"):
        assert name in text
    assert any(", " in r["street"] for r in stores)
    assert any('"' in r["store_name"] for r in stores)
    raw = (root / "stores" / "stores.csv").read_text(encoding="utf-8")
    assert '"12, Jalan Telawi 3"' in raw
    assert any(not r["item_name"].isascii() for r in tables["menu_items"])


def test_client_reads_every_file(dataset, tables):
    root, summary = dataset
    for spec in TABLES:
        rows = [values for path in sorted((root / spec.name).glob("*.csv"))
                for _, values in read_table_csv(path, spec)]
        assert len(rows) == summary[spec.name]["rows"]
        assert all(len(v) == len(spec.required_keys) for v in rows)


def test_zero_transactions_writes_headers_only(tmp_path):
    summary = generate(tmp_path, transactions=0)
    for table in MONTHLY:
        assert summary[table]["rows"] == 0
        for path in (tmp_path / table).glob("*.csv"):
            assert path.read_text() == ",".join(HEADERS[table]) + "\n"


def test_negative_transactions_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="transactions"):
        generate(tmp_path, transactions=-1)
