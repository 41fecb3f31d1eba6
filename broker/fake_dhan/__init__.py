"""A loopback fake DhanHQ for tests and benchmarks: REST, order socket and market feed driven by
the paper exchange and market (``server.FakeDhan``)."""

from broker.fake_dhan.server import FakeDhan, Recorded

__all__ = ["FakeDhan", "Recorded"]
