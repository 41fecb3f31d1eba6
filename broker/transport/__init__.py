"""How order updates and prices travel between processes (SPEC §13): ``ports.py`` (the
``Transport`` protocol and the subjects), ``local.py`` (in process, the default: a single
``python run.py`` needs no NATS) and ``jetstream.py`` (NATS JetStream, for several runners)."""
