"""The Faust app: one module per stage, wired together by ``streams.app.create_app``."""
