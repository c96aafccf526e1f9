"""Row classes: one named tuple per table, fields in the spec's key order.

Named tuples because they are what a Python user expects (attribute access,
``_asdict()``, equality with tuples) and because the Cython codec can build
them as fast as plain tuples. In a projected batch (PROTOCOL.md §8) the
columns that were not kept are ``None``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = ["RawMenuItems", "RawStore", "RawTransactionItem", "RawTransaction", "RawUser"]


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
