"""A tiny HTTP client for tests (stdlib only, so nothing stands between test and server)."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from typing import Any


def post(
    url: str, body: bytes | Any, key: str | None = None, timeout: float = 30, bearer: bool = False
) -> tuple[int, Any]:
    """POST ``body`` (bytes as is, anything else as JSON) -> (status, decoded JSON answer);
    ``key`` as a collector's write key (Basic), or as an API key (``bearer``)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if key is not None and bearer:
        request.add_header("Authorization", f"Bearer {key}")
    elif key is not None:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace")


def post_json(url: str, body: Any, key: str) -> tuple[int, Any]:
    """POST JSON with an API key (Bearer)."""
    return post(url, body, key, bearer=True)


def get(url: str, timeout: float = 10) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def get_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def get_json(url: str, key: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    """GET -> (status, decoded JSON answer); a Bearer key when given."""
    request = urllib.request.Request(url)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(lines: list[str], name: str, **labels: str) -> float:
    """One sample's value from Prometheus text: ``name`` with exactly these labels (in
    any order), 0 when there is no such sample yet."""
    want = dict(labels)
    found = []
    for line in lines:
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        base, _, rest = series.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if have == want:
            found.append(float(value))
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else 0.0


def accepted(answer: tuple[int, Any]) -> tuple[int, Any]:
    """A collector's answer without its read-your-write token (checked to be one)."""
    status, body = answer
    if isinstance(body, dict) and "read_after" in body:
        body = dict(body)
        assert str(body.pop("read_after")).isdigit(), body
    return status, body
