"""Avro schemas (the ``.avsc`` files beside this module) and the codec for them."""
