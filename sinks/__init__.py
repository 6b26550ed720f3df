"""Where profiles go: every output behind one ``Sink`` interface (``sinks.base``) —
the Redis view (``sinks.redis_view``), ``profile-updates`` and ``profile-merges``
(``sinks.kafka``); the destinations of later issues (webhooks, databases, two-way
sync) plug in the same way."""
