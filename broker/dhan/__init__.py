"""The DhanHQ client (SPEC §10), owned by the project (not the ``dhanhq`` package).

Built to be driven from a gateway actor: blocking REST calls with explicit timeouts that return
``Answer`` values (never raise for a broker's answer), and socket clients that run on their own
thread and report through callbacks::

    rest.py          DhanRest: orders, look-ups, books, positions, the quote API (QuoteApi)
    outcomes.py      Outcome / Answer and the pure classification of every answer
    book.py          order book, trade book and position rows, read liberally
    limits.py        RateLimits: one limiter per bucket with every window
    link.py          Link: a websocket on its own thread with back-off and states
    order_socket.py  OrderSocket: login, raw order-update frames to a sink
    feed.py          MarketFeed: ticker subscriptions, ticks with their receive time
    feed_codec.py    the feed's binary packets and JSON requests (pure)
    token.py         TokenSource, Secret, expiry, scrub

Error tree (everything else is an outcome value)::

    broker.ports.GatewayError      quote API only (the QuoteApi port raises)
    ├── QuoteThrottled
    └── QuoteTimeout
    TokenError                     no token could be read (env var / file)
    FeedDecodeError (ValueError)   a feed message that cannot be read; logged and skipped
    RowError (ValueError)          a REST row that cannot be read; logged and skipped
"""

from broker.dhan.book import BrokerOrder, BrokerPosition, BrokerTrade, product_type
from broker.dhan.feed import MarketFeed
from broker.dhan.limits import Bucket, RateLimits
from broker.dhan.link import LinkState
from broker.dhan.order_socket import OrderSocket
from broker.dhan.outcomes import Answer, Outcome, classify
from broker.dhan.rest import DhanRest, PlacedOrder
from broker.dhan.token import Secret, TokenError, TokenSource, scrub

__all__ = [
    "Answer", "BrokerOrder", "BrokerPosition", "BrokerTrade", "Bucket", "DhanRest", "LinkState",
    "MarketFeed", "OrderSocket", "Outcome", "PlacedOrder", "RateLimits", "Secret", "TokenError",
    "TokenSource", "classify", "product_type", "scrub",
]
