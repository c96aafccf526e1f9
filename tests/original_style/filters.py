"""Column filters: each table keeps the columns its queries need, in this order."""
from typing import Any, Dict, List

from .protocol import NewMenuItems, NewStores, NewTransactionItems, NewTransactions, NewUsers


def filter_menu_items(rows: List[Any]) -> List[Dict[str, str]]:
    return [{"product_id": r.product_id, "name": r.name, "price": r.price} for r in rows]


def filter_stores(rows: List[Any]) -> List[Dict[str, str]]:
    return [{"store_id": r.store_id, "store_name": r.store_name} for r in rows]


def filter_transaction_items(rows: List[Any]) -> List[Dict[str, str]]:
    return [{"transaction_id": r.transaction_id, "item_id": r.item_id, "quantity": r.quantity,
             "subtotal": r.subtotal, "created_at": r.created_at} for r in rows]


def filter_transactions(rows: List[Any]) -> List[Dict[str, str]]:
    return [{"transaction_id": r.transaction_id, "store_id": r.store_id, "user_id": r.user_id,
             "final_amount": r.final_amount, "created_at": r.created_at} for r in rows]


def filter_users(rows: List[Any]) -> List[Dict[str, str]]:
    return [{"user_id": r.user_id, "birthdate": r.birthdate} for r in rows]


# message class -> (its filter, the query ids its rows serve)
FILTERS = {
    NewMenuItems: (filter_menu_items, [2]),
    NewStores: (filter_stores, [3]),
    NewTransactionItems: (filter_transaction_items, [2]),
    NewTransactions: (filter_transactions, [1, 3, 4]),
    NewUsers: (filter_users, [4]),
}
