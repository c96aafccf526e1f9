"""Row classes: one named tuple per table, fields in the spec's key order.

Named tuples because they are what a Python user expects (attribute access,
``_asdict()``, equality with tuples) and because the Cython codec can build
them as fast as plain tuples. In a projected batch (PROTOCOL.md §8) the
columns that were not kept are ``None``.

Also the names of the three row shapes a decoder can give (``RowType``) and
their types: ``TableRow`` (a row object), ``DictRow`` and ``TupleRow``.
"""
from __future__ import annotations

from typing import Dict, Literal, NamedTuple, Optional, Tuple, Union

__all__ = [
    "RawMenuItems", "RawStore", "RawTransactionItem", "RawTransaction", "RawUser",
    "RowType", "TableRow", "DictRow", "TupleRow",
]

#: What ``row_type=`` accepts: row objects (the table's row class), dicts or tuples.
RowType = Literal["object", "dict", "tuple"]


class RawMenuItems(NamedTuple):
    product_id: Optional[str]
    name: Optional[str]
    category: Optional[str]
    price: Optional[str]
    is_seasonal: Optional[str]
    available_from: Optional[str]
    available_to: Optional[str]


class RawStore(NamedTuple):
    store_id: Optional[str]
    store_name: Optional[str]
    street: Optional[str]
    postal_code: Optional[str]
    city: Optional[str]
    state: Optional[str]
    latitude: Optional[str]
    longitude: Optional[str]


class RawTransactionItem(NamedTuple):
    transaction_id: Optional[str]
    item_id: Optional[str]
    quantity: Optional[str]
    unit_price: Optional[str]
    subtotal: Optional[str]
    created_at: Optional[str]


class RawTransaction(NamedTuple):
    transaction_id: Optional[str]
    store_id: Optional[str]
    payment_method_id: Optional[str]
    user_id: Optional[str]
    original_amount: Optional[str]
    discount_applied: Optional[str]
    final_amount: Optional[str]
    created_at: Optional[str]


class RawUser(NamedTuple):
    user_id: Optional[str]
    gender: Optional[str]
    birthdate: Optional[str]
    registered_at: Optional[str]


#: A row object of any table (``row_type="object"``).
TableRow = Union[RawMenuItems, RawStore, RawTransactionItem, RawTransaction, RawUser]
#: A row as a dict (``row_type="dict"``): the keys the row carries, in the batch's order.
DictRow = Dict[str, str]
#: A row as a tuple (``row_type="tuple"``): values in column order, ``None`` for a key
#: a projection left out.
TupleRow = Tuple[Optional[str], ...]
