"""Synthetic coffee-shop data sets in the client's folder layout (PROTOCOL.md §9).

``generate(out_dir, transactions=N, seed=S)`` writes::

    out_dir/menu_items/menu_items.csv                         8 items (2 seasonal)
    out_dir/stores/stores.csv                                 10 stores
    out_dir/payment_methods/payment_methods.csv               5 rows, skipped by clients
    out_dir/vouchers/vouchers.csv                             16 rows, skipped by clients
    out_dir/transactions/transactions_YYYYMM.csv              N rows over 2023-07..2025-06
    out_dir/transaction_items/transaction_items_YYYYMM.csv    1-4 rows per transaction
    out_dir/users/users_YYYYMM.csv                            N // 10 users, by month registered

with the real headers (``HEADERS``, ``SKIPPED_HEADERS``) and the real value
formats: UTF-8, ``\\n`` line ends, ids as plain integers, money as Python
prints a float (``35.0``, ``3.85``), times as ``YYYY-MM-DD HH:MM:SS``, empty
fields for missing values. Reference tables hold non-ASCII names and quoted
fields with commas and quotes. The output is a pure function of
``(transactions, seed)``: the same bytes on every run and machine.
"""
from __future__ import annotations

import calendar
import csv
import datetime
import functools
import itertools
import os
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

__all__ = ["HEADERS", "SKIPPED_HEADERS", "MONTHS", "generate"]

# The five tables a client sends, with their real CSV headers (§9).
HEADERS: Dict[str, Tuple[str, ...]] = {
    "menu_items": ("item_id", "item_name", "category", "price", "is_seasonal",
                   "available_from", "available_to"),
    "stores": ("store_id", "store_name", "street", "postal_code", "city", "state",
               "latitude", "longitude"),
    "transaction_items": ("transaction_id", "item_id", "quantity", "unit_price", "subtotal",
                          "created_at"),
    "transactions": ("transaction_id", "store_id", "payment_method_id", "voucher_id", "user_id",
                     "original_amount", "discount_applied", "final_amount", "created_at"),
    "users": ("user_id", "gender", "birthdate", "registered_at"),
}
# Tables with one file per month (<table>_YYYYMM.csv); the others have one <table>.csv.
_MONTHLY = ("transaction_items", "transactions", "users")
# Folders of the real data set that clients skip.
SKIPPED_HEADERS: Dict[str, Tuple[str, ...]] = {
    "payment_methods": ("method_id", "method_name", "category"),
    "vouchers": ("voucher_id", "voucher_code", "discount_type", "discount_value", "valid_from",
                 "valid_to"),
}
# The months of the public data set, as they appear in the monthly file names.
MONTHS: Tuple[str, ...] = tuple(f"{2023 + (6 + i) // 12}{(6 + i) % 12 + 1:02d}" for i in range(24))

# item_id, item_name, category, price in cents, available_from, available_to (seasonal if set).
_MENU = (
    (1, "Espresso", "coffee", 600, "", ""),
    (2, "Americano", "coffee", 700, "", ""),
    (3, "Latte", "coffee", 800, "", ""),
    (4, "Cappuccino", "coffee", 800, "", ""),
    (5, "Flat White", "coffee", 900, "", ""),
    (6, "Café con Leche", "coffee", 950, "2024-06-01", "2024-08-31"),
    (7, "Hot Chocolate", "non-coffee", 900, "", ""),
    (8, "Crème Brûlée Latte", "coffee", 1200, "2024-12-01", "2025-01-31"),
)
# Relative popularity of each item, and of quantities 1, 2, 3 on a line.
_ITEM_WEIGHTS = (10, 12, 16, 14, 10, 8, 8, 6)
_QUANTITY_WEIGHTS = (5, 3, 2)
# Share of transactions with 1, 2, 3, 4 lines (in percent).
_LINES_WEIGHTS = (25, 35, 27, 13)
_MAX_LINES = len(_LINES_WEIGHTS)
_MAX_QUANTITY = len(_QUANTITY_WEIGHTS)

_STORES = (
    ("1", "G Coffee @ USJ 89q", "Jalan Dewan Bahasa 5/9", "50998", "USJ 89q", "Kuala Lumpur",
     "3.117134", "101.615027"),
    ("2", "G Coffee @ Kondominium Putra", "Jln Yew 6X", "63826", "Kondominium Putra",
     "Selangor Darul Ehsan", "2.959571", "101.51772"),
    ("3", "Café Central @ São Paulo", "Rua Augusta, 1500", "01304-001", "São Paulo", "SP",
     "-23.556282", "-46.662034"),
    ("4", "G Coffee @ Kampung Changkat", "Jln 6/6A", "62941", "Kampung Changkat", "Putrajaya",
     "2.914594", "101.704486"),
    ("5", "G Coffee @ Seksyen 21", "Jalan Anson 4k", "62595", "Seksyen 21", "Putrajaya",
     "2.937599", "101.698478"),
    ("6", "Kaffeehaus Zürich", "Bahnhofstraße 12", "8001", "Zürich", "ZH",
     "47.372397", "8.538666"),
    ("7", "G Coffee @ Damansara Saujana", "Jln 8/74", "65438", "Damansara Saujana",
     "Selangor Darul Ehsan", "3.22081", "101.58459"),
    ("8", "Café Münster", "Salzstraße 21, Eingang B", "48143", "Münster", "Nordrhein-Westfalen",
     "51.962236", "7.628241"),
    ("9", "G Coffee @ Bangsar", "12, Jalan Telawi 3", "59100", "Bangsar", "Kuala Lumpur",
     "3.131874", "101.671082"),
    ("10", 'Kopi "Tiam" @ Taman Damansara', "Jln 2", "67102", "Taman Damansara",
     "Selangor Darul Ehsan", "3.497178", "101.595271"),
)
_PAYMENT_METHODS = (
    ("1", "cash", "cash"),
    ("2", "credit_card", "card"),
    ("3", "debit_card", "card"),
    ("4", "tng", "ewallet"),
    ("5", "grabpay", "ewallet"),
)
# voucher_id, code, type, value in percent (percentage) or cents (fixed), valid_from, valid_to.
_VOUCHERS = (
    (1, "SALES77", "percentage", 7, "2023-07-07", "2023-07-09"),
    (2, "SALES88", "percentage", 8, "2023-08-08", "2023-08-10"),
    (3, "SALES99", "percentage", 9, "2023-09-09", "2023-09-11"),
    (4, "SALES10", "percentage", 10, "2023-10-10", "2023-10-12"),
    (5, "SALES11", "percentage", 11, "2023-11-11", "2023-11-13"),
    (6, "MERDEKA", "fixed", 500, "2023-08-31", "2023-09-02"),
    (7, "SALES66", "percentage", 6, "2024-06-06", "2024-06-08"),
    (8, "SALES77", "percentage", 7, "2024-07-07", "2024-07-09"),
    (9, "SALES88", "percentage", 8, "2024-08-08", "2024-08-10"),
    (10, "SALES99", "percentage", 9, "2024-09-09", "2024-09-11"),
    (11, "SALES10", "percentage", 10, "2024-10-10", "2024-10-12"),
    (12, "SALES11", "percentage", 11, "2024-11-11", "2024-11-13"),
    (13, "MERDEKA", "fixed", 500, "2024-08-31", "2024-09-02"),
    (14, "SALES50", "percentage", 50, "2024-05-01", "2024-05-01"),
    (15, "SALES66", "percentage", 6, "2025-06-06", "2025-06-08"),
    (16, "SALES50", "percentage", 50, "2025-05-01", "2025-05-01"),
)
_VOUCHER_PERCENT = 5        # share of transactions with a voucher
_ANONYMOUS_PERCENT = 15     # share of transactions without a user_id
_NO_GENDER_PERCENT = 3
_TRANSACTIONS_PER_USER = 10
_OPEN_SECONDS = (6 * 3600, 22 * 3600)   # transactions happen between 06:00 and 22:00
_BIRTHDATES = (datetime.date(1950, 1, 1), datetime.date(2007, 12, 31))
# Transactions generated and written per step: bounds memory for any data set size.
_CHUNK = 50_000
_UUID_VARIANT = "89ab" * 4   # the RFC 4122 variant nibble, indexed by a random hex digit


def _money(cents: int) -> str:
    """Format cents as Python prints the float: ``35.0``, ``9.5``, ``3.85``."""
    whole, frac = divmod(cents, 100)
    return f"{whole}.{frac // 10}" if frac % 10 == 0 else f"{whole}.{frac:02d}"


def _uuids(rng: random.Random, n: int) -> List[str]:
    """``n`` version-4 UUID strings drawn from ``rng`` (uuid4 would ignore the seed)."""
    h = rng.randbytes(16 * n).hex()
    v = _UUID_VARIANT
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{v[int(h[i + 16], 16)]}"
            f"{h[i + 17:i + 20]}-{h[i + 20:i + 32]}" for i in range(0, 32 * n, 32)]


def _split(total: int, weights: Sequence[int]) -> List[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder, integers only)."""
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    return shares


def _month_days(month: str) -> int:
    return calendar.monthrange(int(month[:4]), int(month[4:]))[1]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> int:
    # The reference tables carry commas and quotes: the csv module quotes them.
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


@functools.lru_cache(maxsize=None)
def _formatted() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Every time of day ("HH:MM:SS") and every possible order total as money, formatted
    once per process: the hot loop only indexes (a data set of a few hundred
    transactions would otherwise spend most of its time here)."""
    largest_order = _MAX_LINES * _MAX_QUANTITY * max(m[3] for m in _MENU)
    return (tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)),
            tuple(_money(c) for c in range(largest_order + 1)))


class _MonthWriter:
    """Generates and writes one month of users, transactions and transaction items.

    Monthly values are UUIDs, numbers, dates and fixed words that never need
    CSV quoting, so rows are built as plain strings: several times faster than
    ``csv.writer`` on the bulk of the data set.
    """

    def __init__(self, out: Path, tods: Sequence[str], money: Sequence[str]) -> None:
        self.out = out
        self.tods = tods      # "HH:MM:SS" for every second of a day
        self.money = money    # _money(c) for every possible order total c
        self.discount_of = {str(v[0]): (v[2], v[3]) for v in _VOUCHERS}
        # "" (no voucher) or one of the vouchers, each equally likely.
        self.vouchers = ("",) + tuple(self.discount_of)
        self.voucher_cum = list(itertools.accumulate(
            [(100 - _VOUCHER_PERCENT) * len(_VOUCHERS)] + [_VOUCHER_PERCENT] * len(_VOUCHERS)))
        self.stores = [s[0] for s in _STORES]
        self.payment_methods = [p[0] for p in _PAYMENT_METHODS]
        self.birth_first = _BIRTHDATES[0].toordinal()
        self.birth_span = _BIRTHDATES[1].toordinal() - self.birth_first + 1

    def _lines_menu(self, month: str) -> Tuple[List[str], List[int], List[int]]:
        """Per (item, quantity) line: its CSV text after transaction_id, its cents, weight."""
        first = f"{month[:4]}-{month[4:]}-01"
        last = f"{month[:4]}-{month[4:]}-{_month_days(month):02d}"
        texts, cents, weights = [], [], []
        for (item, _, _, price, since, until), popularity in zip(_MENU, _ITEM_WEIGHTS):
            if since and not (since <= last and first <= until):
                continue  # a seasonal item sells only in its season
            for quantity, share in enumerate(_QUANTITY_WEIGHTS, 1):
                texts.append(f"{item},{quantity},{_money(price)},{_money(price * quantity)},")
                cents.append(price * quantity)
                weights.append(popularity * share)
        return texts, cents, weights

    def users(self, rng: random.Random, month: str, first_id: int, count: int) -> int:
        days = [f"{month[:4]}-{month[4:]}-{d:02d} " for d in range(1, _month_days(month) + 1)]
        stamps = sorted(rng.choices(range(86400 * len(days)), k=count))
        genders = rng.choices(("male", "female", ""),
                              cum_weights=(50, 100 - _NO_GENDER_PERCENT, 100), k=count)
        births = rng.choices(range(self.birth_span), k=count)
        fromordinal, first, tods = datetime.date.fromordinal, self.birth_first, self.tods
        lines = [f"{first_id + i},{g},{fromordinal(first + b).isoformat()},"
                 f"{days[s // 86400]}{tods[s % 86400]}\n"
                 for i, (g, b, s) in enumerate(zip(genders, births, stamps))]
        path = self.out / "users" / f"users_{month}.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(",".join(HEADERS["users"]) + "\n")
            f.write("".join(lines))
        return count

    def transactions(self, rng: random.Random, month: str, count: int, known_users: int) -> int:
        """Write ``count`` transactions and their items; return the number of item rows."""
        days = [f"{month[:4]}-{month[4:]}-{d:02d} " for d in range(1, _month_days(month) + 1)]
        opening, closing = _OPEN_SECONDS
        per_day = closing - opening
        stamps = sorted(rng.choices(range(per_day * len(days)), k=count))
        line_texts, line_cents, line_weights = self._lines_menu(month)
        line_cum = list(itertools.accumulate(line_weights))
        lines_cum = list(itertools.accumulate(_LINES_WEIGHTS))
        user_ids = range(1, known_users + 1)
        money, tods, discount_of = self.money, self.tods, self.discount_of
        item_rows = 0
        with open(self.out / "transactions" / f"transactions_{month}.csv", "w",
                  encoding="utf-8", newline="") as tx_file, \
                open(self.out / "transaction_items" / f"transaction_items_{month}.csv", "w",
                     encoding="utf-8", newline="") as item_file:
            tx_file.write(",".join(HEADERS["transactions"]) + "\n")
            item_file.write(",".join(HEADERS["transaction_items"]) + "\n")
            for start in range(0, count, _CHUNK):
                n = min(_CHUNK, count - start)
                ids = _uuids(rng, n)
                created = [f"{days[s // per_day]}{tods[opening + s % per_day]}"
                           for s in stamps[start:start + n]]
                stores = rng.choices(self.stores, k=n)
                methods = rng.choices(self.payment_methods, k=n)
                vouchers = rng.choices(self.vouchers, cum_weights=self.voucher_cum, k=n)
                if known_users:
                    users = [str(u) if keep else "" for u, keep in zip(
                        rng.choices(user_ids, k=n),
                        rng.choices((False, True), cum_weights=(_ANONYMOUS_PERCENT, 100), k=n))]
                else:
                    users = [""] * n  # nobody has registered yet
                counts = rng.choices(range(1, _MAX_LINES + 1), cum_weights=lines_cum, k=n)
                picks = rng.choices(range(len(line_texts)), cum_weights=line_cum, k=sum(counts))
                tx_lines, item_lines = [], []
                pos = 0
                for tid, when, store, method, voucher, user, lines in zip(
                        ids, created, stores, methods, vouchers, users, counts):
                    total = 0
                    for p in picks[pos:pos + lines]:
                        item_lines.append(f"{tid},{line_texts[p]}{when}\n")
                        total += line_cents[p]
                    pos += lines
                    discount = 0
                    if voucher:
                        kind, value = discount_of[voucher]
                        # Half-up rounding to the cent, as a till would.
                        discount = (total * value + 50) // 100 if kind == "percentage" \
                            else min(value, total)
                    tx_lines.append(f"{tid},{store},{method},{voucher},{user},{money[total]},"
                                    f"{money[discount]},{money[total - discount]},{when}\n")
                tx_file.write("".join(tx_lines))
                item_file.write("".join(item_lines))
                item_rows += pos
        return item_rows


def generate(out_dir: Union[str, "os.PathLike[str]"], *, transactions: int = 10_000,
             seed: int = 0) -> Dict[str, Dict[str, int]]:
    """Write a synthetic data set of ``transactions`` transactions into ``out_dir``.

    The layout, headers and value formats are those of PROTOCOL.md §9 and the
    real sample (see the module docstring). Transactions are spread over the
    24 months 2023-07..2025-06, growing month by month, in ``created_at``
    order inside each month; each has 1-4 transaction_items lines at menu
    prices; about 5% use a voucher and 15% have no user_id. There are
    ``transactions // 10`` users, numbered in order of registration, and a
    transaction's user registered no later than its month. Existing files of
    the same names are overwritten; nothing else in ``out_dir`` is touched.

    Returns ``{folder: {"files": n, "rows": n, "bytes": n}}`` for every
    folder written (rows without header lines, bytes as on disk).
    """
    if transactions < 0:
        raise ValueError(f"transactions must be >= 0, got {transactions}")
    out = Path(out_dir)
    for table in (*HEADERS, *SKIPPED_HEADERS):
        (out / table).mkdir(parents=True, exist_ok=True)
    rows = {table: 0 for table in (*HEADERS, *SKIPPED_HEADERS)}

    rows["menu_items"] = _write_csv(out / "menu_items" / "menu_items.csv", HEADERS["menu_items"], [
        (item, name, category, _money(price), "True" if since else "False", since, until)
        for item, name, category, price, since, until in _MENU])
    rows["stores"] = _write_csv(out / "stores" / "stores.csv", HEADERS["stores"], _STORES)
    rows["payment_methods"] = _write_csv(out / "payment_methods" / "payment_methods.csv",
                                         SKIPPED_HEADERS["payment_methods"], _PAYMENT_METHODS)
    rows["vouchers"] = _write_csv(out / "vouchers" / "vouchers.csv", SKIPPED_HEADERS["vouchers"], [
        (vid, code, kind, _money(value if kind == "fixed" else value * 100), since, until)
        for vid, code, kind, value, since, until in _VOUCHERS])

    # Business grows: later months weigh more (days in month x a 2x ramp over two years).
    weights = [_month_days(m) * (23 + i) for i, m in enumerate(MONTHS)]
    tx_per_month = _split(transactions, weights)
    users_per_month = _split(transactions // _TRANSACTIONS_PER_USER, weights)
    tods, money = _formatted()
    writer = _MonthWriter(out, tods, money)
    # One generator per month, seeded in month order from the master seed.
    master = random.Random(seed)
    known_users = 0
    for month, n_tx, n_users in zip(MONTHS, tx_per_month, users_per_month):
        rng = random.Random(master.getrandbits(64))
        rows["users"] += writer.users(rng, month, known_users + 1, n_users)
        known_users += n_users
        rows["transaction_items"] += writer.transactions(rng, month, n_tx, known_users)
        rows["transactions"] += n_tx

    summary = {}
    for table, count in rows.items():
        files = ([out / table / f"{table}_{m}.csv" for m in MONTHS] if table in _MONTHLY
                 else [out / table / f"{table}.csv"])
        summary[table] = {"files": len(files), "rows": count,
                          "bytes": sum(p.stat().st_size for p in files)}
    return summary
