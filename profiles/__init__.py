"""The domain core: pure Python, no Kafka, no Redis client.

Normalization of identifiers, the touchpoint model and its validation, and the
profile state with the rules that fold events into it. The Redis view in
``profiles.view`` is the one adapter that lives here, behind a Protocol.
"""
