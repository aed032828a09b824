"""The canonical event contract shared by every stage.

A canonical event data set is Parquet with one row per behavior and these columns:

- ``user_id``     string, never null or empty
- ``ts``          timestamp with time zone UTC (microseconds)
- ``behavior``    one of :data:`BEHAVIORS`
- ``item_id``     string, nullable
- ``category_id`` string, nullable
- ``channel``     one of :data:`CHANNELS`, nullable
- ``amount``      float64 >= 0, nullable (order value, in the shop's currency)
"""

from __future__ import annotations

import pyarrow as pa

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "ts", "behavior")
OPTIONAL_COLUMNS: tuple[str, ...] = ("item_id", "category_id", "channel", "amount")
CANONICAL_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

BEHAVIORS: tuple[str, ...] = ("view", "fav", "cart", "buy", "visit")
BEHAVIOR_ALIASES: dict[str, str] = {
    "pv": "view",
    "click": "view",
    "favorite": "fav",
    "favourite": "fav",
    "collect": "fav",
    "addtocart": "cart",
    "add_to_cart": "cart",
    "transaction": "buy",
    "purchase": "buy",
    "order": "buy",
    "session": "visit",
}
CHANNELS: tuple[str, ...] = ("search", "recommend", "ad", "live", "promo", "other")
ACTIVE_CHANNELS: tuple[str, ...] = ("search", "ad")
PASSIVE_CHANNELS: tuple[str, ...] = ("recommend",)


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a canonical event file (column order as :data:`CANONICAL_COLUMNS`)."""
    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("behavior", pa.string(), nullable=False),
            pa.field("item_id", pa.string()),
            pa.field("category_id", pa.string()),
            pa.field("channel", pa.string()),
            pa.field("amount", pa.float64()),
        ]
    )
