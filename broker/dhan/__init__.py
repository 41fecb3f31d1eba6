"""The DhanHQ client (SPEC §10), owned by the project (not the ``dhanhq`` package).

Built to be driven from a gateway actor: blocking REST calls with explicit timeouts that return
``Answer`` values (never raise for a broker's answer), and socket clients that run on their own
thread and report through callbacks::

    rest.py          DhanRest: orders, look-ups, books, positions, the quote API (QuoteApi)
    wire.py          the HTTP seam: PooledWire (urllib3's pool), WireError (sent or not)
    outcomes.py      Outcome / Answer and the pure classification of every answer
    book.py          order book, trade book and position rows, read liberally
    limits.py        RateLimits: one limiter per bucket with every window
    link.py          Link: a websocket on its own thread with back-off and states
    order_socket.py  OrderSocket: login, raw order-update frames to a sink
    feed.py          MarketFeed: ticker subscriptions, ticks with their receive time
    feed_codec.py    the feed's binary packets and JSON requests (pure)
    token.py         TokenSource, Secret, expiry, scrub

Driving it from a gateway actor (each call blocks at most its timeout plus ``limit_wait``)::

    tokens = TokenSource(path=settings.access_token_file)       # or DHAN_ACCESS_TOKEN
    rest = DhanRest(api_url, client_id, tokens, timeout=3.0)
    answer = rest.place_order(correlation_id=exit_id, instrument=..., txn_type=TxnType.SELL,
                              quantity=75, price=Decimal("101.05"), product="I")
    match answer.outcome:   # OK / REJECTED / UNKNOWN / TOKEN_INVALID / IP_REFUSED / LIMITED
        case Outcome.UNKNOWN: rest.order_by_correlation(exit_id)   # later, after a settle delay
    socket = OrderSocket(order_ws_url, client_id, tokens, sink=tell_order_updates,
                         on_state=tell_link_state, on_connected=tell_reconcile)
    feed = MarketFeed(feed_ws_url, client_id, tokens, on_tick=tell_tick)
    socket.start(); feed.start(); feed.subscribe(instruments)
    ...; socket.stop(); feed.stop(); rest.close()

After TOKEN_INVALID a link's thread has ended; a new token (``tokens.reload()`` / ``set``) and
``start()`` resume it. The REST client resumes by itself once the source gives a new token.

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
from broker.dhan.token import Refusal, Secret, TokenError, TokenSource, scrub

__all__ = [
    "Answer",
    "BrokerOrder",
    "BrokerPosition",
    "BrokerTrade",
    "Bucket",
    "DhanRest",
    "LinkState",
    "MarketFeed",
    "OrderSocket",
    "Outcome",
    "PlacedOrder",
    "RateLimits",
    "Refusal",
    "Secret",
    "TokenError",
    "TokenSource",
    "classify",
    "product_type",
    "scrub",
]
