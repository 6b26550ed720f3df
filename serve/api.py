"""The read API (``unifier api``): the unified view over HTTP, JSON in and out.

    GET /v1/profiles/{id}                  a profile (a merged-away id answers with the survivor)
    GET /v1/profiles?type=email&value=...  the profile holding an identifier (normalized first)
        both take ?min_version=N or ?read_after=TOKEN (and wait_ms): read your own write
    GET /v1/profiles/{id}/why              how its identifiers were linked, its merges, refusals
    GET /v1/segments                       the segments in force, with their member counts
    GET /v1/segments/{name}/members        a page of a segment's member ids (?cursor=&limit=)
    POST /v1/privacy/erasures              erase a person (admin): a receipt id
    GET /v1/privacy/erasures/{receipt}     an erasure's steps (admin)
    GET /v1/privacy/export?type=&value=    everything held about a person (admin)
    POST /v1/identity/splits               split a wrong merge (admin): a split id
    GET /health                            the process answers
    GET /ready                             ... Redis answers and the view is complete
    GET /openapi.json                      the OpenAPI document of all this

API keys (``UNIFIER_API_KEYS``, key -> scopes) go in ``Authorization: Bearer KEY``;
profile reads need the ``read`` scope, privacy requests ``admin``. Identifiers and
personal traits come back masked (``a***@x.com``) unless the key also has the
``read_pii`` scope. Every read of a profile and every privacy request is on the audit
trail (the key's name, the profile; never the key or personal data). Errors are
``{"error": "..."}`` with a 4xx that says what to fix, or a 5xx without internals
(the log has them).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from config import httpmetrics
from config.settings import Settings
from profiles.configured import identifier_priorities
from profiles.lookup import IdentifierRefused, UnknownIdentifierType, lookup_key
from profiles.privacy import Sealer, mask, mask_view, open_document
from schemas.records import iso_ms
from serve import privacy
from serve.privacy import Auditor
from serve.view import AsyncRedisView
from sinks.keys import personal_traits, sealer_for

log = logging.getLogger("unifier.api")

VIEW: web.AppKey[AsyncRedisView] = web.AppKey("view", AsyncRedisView)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SEALER: web.AppKey[Sealer | None] = web.AppKey("sealer", object)  # type: ignore[arg-type]
AUDIT: web.AppKey[Auditor] = web.AppKey("audit", Auditor)
SCANS: web.AppKey[set[Any]] = web.AppKey("scans", set)  # dead-letter searches running
#: The scopes and the name of the request's API key (set by the guard).
SCOPES: web.RequestKey[frozenset[str]] = web.RequestKey("scopes", frozenset)
KEY_NAME: web.RequestKey[str] = web.RequestKey("key_name", str)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _stored(body: bytes) -> web.Response:
    """A profile as Redis holds it: already the documented JSON, sent without a decode."""
    return web.Response(body=body, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """API keys for /v1, and no stack trace ever reaches a client."""
    try:
        if request.path.startswith("/v1/"):
            refused = _check_key(request)
            if refused is not None:
                return refused
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:  # aiohttp's own 404/405: JSON like ours
        return _error(exc.status, exc.reason or "error")
    except OSError:
        log.exception("Redis unreachable while serving %s", request.path)
        return _error(503, "the profile store is unreachable; retry later")
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("internal error %s serving %s", incident, request.path)
        return _error(500, f"internal error (incident {incident})")


def _check_key(request: web.Request) -> web.Response | None:
    settings = request.app[SETTINGS]
    keys = settings.api_key_scopes()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "an API key is required: Authorization: Bearer <key>")
    key = next((k for k in keys if hmac.compare_digest(k, token.strip())), None)
    if key is None:
        return _error(401, "unknown API key")
    scopes = keys[key]
    needed = "admin" if request.path.startswith(("/v1/privacy/", "/v1/identity/")) else "read"
    if needed not in scopes:
        return _error(403, f"this API key has no {needed} scope")
    request[SCOPES] = frozenset(scopes)
    request[KEY_NAME] = settings.api_key_names()[key]
    return None


def _shown(request: web.Request, doc: dict[str, Any]) -> dict[str, Any]:
    """A view as this key may see it: opened, and masked without ``read_pii``."""
    sealer = request.app[SEALER]
    if sealer is not None:
        doc = open_document(doc, sealer.open_many)
    if "read_pii" in request.get(SCOPES, ()):
        return doc
    return mask_view(doc, personal_traits(request.app[SETTINGS]))


def _profile(request: web.Request, stored: bytes) -> web.Response:
    """A profile as Redis holds it, opened and masked as due for the key (without
    sealing, a key with ``read_pii`` gets the stored bytes as they are); on the audit
    trail."""
    doc = orjson.loads(stored)
    pii = "read_pii" in request.get(SCOPES, ())
    request.app[AUDIT].record(request.get(KEY_NAME, "?"), "read", profile=doc.get("profile_id"),
                              pii=pii)  # fmt: skip
    if request.app[SEALER] is None and pii:
        return _stored(stored)
    return _json(_shown(request, doc))


#: How long a read waits for the version or the event it asks for, unless it says
#: (at most ``Settings.api_max_wait_ms``).
DEFAULT_WAIT_MS = 2_000


def _fresh_enough(
    request: web.Request,
) -> tuple[Callable[[bytes], bool], float] | web.Response | None:
    """What a read-your-write asks for (``min_version``: the profile at this version or
    later; ``read_after``: a token the collector returned — the view has applied an event
    at least that new), as a test of the stored view and how long to wait for it; None
    when it asks for nothing; a 400 when it asks wrongly."""
    q = request.query
    if "min_version" not in q and "read_after" not in q:
        return None
    most = request.app[SETTINGS].api_max_wait_ms
    try:
        min_version = int(q.get("min_version", "0"))
        after_ms = int(q.get("read_after", "0"))
        wait_ms = int(q.get("wait_ms", str(min(DEFAULT_WAIT_MS, most))))
    except ValueError:
        return _error(400, "min_version, read_after and wait_ms are integers")
    if min(min_version, after_ms, wait_ms) < 0 or wait_ms > most:
        return _error(400, f"min_version, read_after >= 0; 0 <= wait_ms <= {most}")

    def enough(stored: bytes) -> bool:
        doc = orjson.loads(stored)
        if int(doc.get("version", 0)) < min_version:
            return False
        if after_ms:
            seen = (doc.get("freshness") or {}).get("event_time")
            return seen is not None and iso_ms(seen) >= after_ms
        return True

    return enough, wait_ms / 1000


async def _read(
    request: web.Request, fetch: Callable[[], Awaitable[bytes | None]], missing: str
) -> web.Response:
    """A profile read, waiting (``_fresh_enough``) until the view is as fresh as asked:
    409 with the version it has if it does not get there in time, 404 if there is none."""
    asked = _fresh_enough(request)
    if isinstance(asked, web.Response):
        return asked
    found = await fetch()
    if asked is not None:
        enough, wait_s = asked
        deadline = asyncio.get_running_loop().time() + wait_s
        while found is None or not enough(found):
            if asyncio.get_running_loop().time() >= deadline:
                if found is None:
                    break
                version = orjson.loads(found).get("version")
                response = _error(409, f"the view has version {version}, not yet what was asked")
                response.headers["X-Profile-Version"] = str(version)
                return response
            await asyncio.sleep(0.05)
            found = await fetch()
    if found is None:
        return _error(404, missing)
    return _profile(request, found)


async def get_profile(request: web.Request) -> web.Response:
    pid = request.match_info["profile_id"]
    return await _read(request, lambda: request.app[VIEW].get_json(pid), f"no profile {pid}")


async def why_profile(request: web.Request) -> web.Response:
    pid = request.match_info["profile_id"]
    found = await request.app[VIEW].why(pid)
    if found is None:
        return _error(404, f"no profile {pid}")
    view, why = found
    pii = "read_pii" in request.get(SCOPES, ())
    request.app[AUDIT].record(request.get(KEY_NAME, "?"), "read why",
                              profile=view["profile_id"], pii=pii)  # fmt: skip
    return _json(_why_shown(request, {"profile_id": view["profile_id"], **why}))


def _why_shown(request: web.Request, why: dict[str, Any]) -> dict[str, Any]:
    """``why`` names identifiers as ``type:value``: opened, and masked without
    ``read_pii``."""
    sealer = request.app[SEALER]
    if sealer is not None:
        why = open_document(why, sealer.open_many)
    if "read_pii" in request.get(SCOPES, ()):
        return why

    def hide(ident: str) -> str:
        id_type, _, value = ident.partition(":")
        return f"{id_type}:{mask(id_type, value)}" if value else ident

    out = dict(why)
    out["identifiers"] = [
        {**i, "identifier": hide(i["identifier"])} for i in why.get("identifiers", [])
    ]
    out["merges"] = [{**m, "via": hide(m["via"])} for m in why.get("merges", [])]
    out["refused"] = [
        {**r, "identifier": hide(r["identifier"]), "other": hide(r["other"])}
        for r in why.get("refused", [])
    ]
    return out


async def find_profile(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    id_type, value = request.query.get("type"), request.query.get("value")
    if not id_type or value is None:
        return _error(400, "give both query parameters: type and value")
    try:
        norm = lookup_key(settings, id_type, value)
    except UnknownIdentifierType as exc:
        return _error(400, exc.text(repr(id_type)))  # quoted as Python does
    except IdentifierRefused as exc:
        return _error(400, str(exc))
    view = request.app[VIEW]
    return await _read(
        request, lambda: view.lookup_json(id_type, norm), f"no profile with that {id_type}"
    )


# --- privacy (admin) ------------------------------------------------------------------


def _subject_of(request: web.Request, doc: dict[str, Any]) -> tuple[str, str] | str | None:
    """(type, normalized value), or a profile id, from a request; None when neither."""
    if isinstance(doc.get("profile_id"), str) and doc["profile_id"]:
        return str(doc["profile_id"])
    id_type, value = doc.get("type"), doc.get("value")
    if not isinstance(id_type, str) or not isinstance(value, str) or not value:
        return None
    return id_type, lookup_key(request.app[SETTINGS], id_type, value)


async def _erasure_asked(
    request: web.Request,
) -> tuple[tuple[str, str] | str, bool, str] | web.Response:
    """(whom, suppress, reason) from an erasure request, or the 400 that says why not."""
    try:
        doc = await request.json(loads=orjson.loads)
    except ValueError:
        return _error(400, "the body is not JSON")
    if not isinstance(doc, dict):
        return _error(400, "the body is a JSON object")
    try:
        asked = _subject_of(request, doc)
    except IdentifierRefused as exc:
        return _error(400, str(exc))
    suppress, reason = doc.get("suppress", True), doc.get("reason", "")
    if asked is None or not isinstance(suppress, bool) or not isinstance(reason, str):
        return _error(400, "give type and value, or profile_id; suppress is true or false; "
                      "reason is a string")  # fmt: skip
    return asked, suppress, reason


async def erase(request: web.Request) -> web.Response:
    checked = await _erasure_asked(request)
    if isinstance(checked, web.Response):
        return checked
    asked, suppress, reason = checked
    settings, actor = request.app[SETTINGS], f"api:{request.get(KEY_NAME, '?')}"
    loop = asyncio.get_running_loop()

    def run() -> tuple[privacy.Subject, str]:
        identifier = asked if isinstance(asked, tuple) else None
        subject = privacy.find_subject(settings, identifier, None if identifier else str(asked))
        if subject.profile_id is None and identifier is None:
            return subject, ""
        return subject, privacy.request_erasure(settings, subject, suppress, reason, actor)

    try:
        subject, receipt = await loop.run_in_executor(None, run)
    except privacy.PrivacyError as exc:
        return _error(503, str(exc))
    if not receipt:
        return _error(404, f"no profile {asked}")
    pid = subject.profile_id
    # The dead letters are searched after the answer (it reads the topic to its end);
    # the receipt records the step when it is done.
    scan = loop.run_in_executor(None, privacy.shred_dead_letters, settings, subject, receipt)
    request.app[SCANS].add(scan)
    scan.add_done_callback(_scanned(request.app))
    return _json({"receipt": receipt, "profile_id": pid,
                  "status": f"/v1/privacy/erasures/{receipt}"}, 202)  # fmt: skip


# --- identity corrections (admin) -----------------------------------------------------


def _split_asked(doc: Any) -> tuple[str, list[tuple[str, str]], str] | None:
    """(profile id, (type, value) pairs, reason) of a split request; None if malformed."""
    if not isinstance(doc, dict):
        return None
    pid, detach, reason = doc.get("profile_id"), doc.get("detach"), doc.get("reason", "")
    if not isinstance(pid, str) or not pid or not isinstance(reason, str):
        return None
    if not isinstance(detach, list) or not detach:
        return None
    pairs = []
    for d in detach:
        if not isinstance(d, dict):
            return None
        id_type, value = d.get("type"), d.get("value")
        if not isinstance(id_type, str) or not isinstance(value, str):
            return None
        pairs.append((id_type, value))
    return pid, pairs, reason


async def split(request: web.Request) -> web.Response:
    """Split a profile: {"profile_id", "detach": [{"type", "value"}...], "reason"} -> 202
    with the split's id; the workers make the parts within seconds."""
    from serve.identity import SplitRefused, request_split

    try:
        asked = _split_asked(await request.json(loads=orjson.loads))
    except ValueError:
        asked = None
    if asked is None:
        return _error(
            400,
            'give profile_id and detach: [{"type": ..., "value": ...}, ...]; reason is a string',
        )
    settings, actor = request.app[SETTINGS], f"api:{request.get(KEY_NAME, '?')}"
    loop = asyncio.get_running_loop()
    pid, pairs, reason = asked
    try:
        sent = await loop.run_in_executor(None, request_split, settings, pid, pairs, actor, reason)
    except IdentifierRefused as exc:
        return _error(400, str(exc))
    except SplitRefused as exc:
        return _error(404 if str(exc).startswith("no profile") else 409, str(exc))
    except privacy.PrivacyError as exc:
        return _error(503, str(exc))
    return _json({"split": sent.split, "profile_id": sent.profile_id}, 202)


def _scanned(app: web.Application) -> Any:
    def done(scan: asyncio.Future[int]) -> None:
        app[SCANS].discard(scan)
        if not scan.cancelled() and scan.exception() is not None:
            log.error("the dead-letter search of an erasure failed: %s", scan.exception())

    return done


async def erasure_status(request: web.Request) -> web.Response:
    receipt = request.match_info["receipt"]
    settings = request.app[SETTINGS]
    found = await asyncio.get_running_loop().run_in_executor(
        None, privacy.read_receipt, settings, receipt
    )
    if found.requested is None:
        return _error(404, f"no receipt {receipt}")
    return _json(found.to_json())


async def export(request: web.Request) -> web.Response:
    try:
        asked = _subject_of(request, dict(request.query))
    except IdentifierRefused as exc:
        return _error(400, str(exc))
    if asked is None:
        return _error(400, "give type and value, or profile_id")
    settings, actor = request.app[SETTINGS], f"api:{request.get(KEY_NAME, '?')}"

    def run() -> dict[str, Any] | None:
        identifier = asked if isinstance(asked, tuple) else None
        subject = privacy.find_subject(settings, identifier, None if identifier else str(asked))
        if subject.profile_id is None:
            return None
        return privacy.access_export(settings, subject.profile_id, actor)

    try:
        doc = await asyncio.get_running_loop().run_in_executor(None, run)
    except privacy.PrivacyError as exc:
        return _error(503, str(exc))
    if doc is None:
        return _error(404, "no profile holds it")
    return _json(doc)


async def list_segments(request: web.Request) -> web.Response:
    found = await request.app[VIEW].segments()
    return _json({"segments": list(found.values())})


#: Members per page of ``/v1/segments/{name}/members``, by default and at most.
MEMBERS_PAGE = 500
MEMBERS_MAX = 5000


async def segment_members(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    cursor_text = request.query.get("cursor", "0")
    limit_text = request.query.get("limit", str(MEMBERS_PAGE))
    if not cursor_text.isdigit() or not limit_text.isdigit():
        return _error(400, "cursor and limit are whole numbers (cursor: from next_cursor)")
    limit = int(limit_text)
    if not 1 <= limit <= MEMBERS_MAX:
        return _error(400, f"limit is between 1 and {MEMBERS_MAX}")
    view = request.app[VIEW]
    if not await view.has_segment(name):
        return _error(404, f"no segment {name}")
    ids, after = await view.members(name, int(cursor_text), limit)
    return _json({"segment": name, "members": ids, "next_cursor": str(after) if after else None})


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    try:
        await view.ping()
        incomplete = await view.completeness(request.app[SETTINGS].internal_partitions)
    except OSError:
        return _error(503, "the profile store (Redis) does not answer")
    if incomplete is not None:  # lookups would miss profiles that exist
        return _error(503, incomplete)
    return _json({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document(request.app[SETTINGS]))


def create_api(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[httpmetrics.middleware("api"), _guard], client_max_size=64 * 1024
    )
    app[SETTINGS] = settings
    app[SEALER] = sealer = sealer_for(settings)
    app[VIEW] = AsyncRedisView.from_url(settings.redis_url, sealer, settings.redis_cluster)

    app[AUDIT] = Auditor(settings)
    app[SCANS] = set()

    async def _close(app: web.Application) -> None:
        if app[SCANS]:  # an erasure's search of the dead letters finishes first
            await asyncio.gather(*app[SCANS], return_exceptions=True)
        await app[VIEW].close()
        app[AUDIT].close()

    app.on_cleanup.append(_close)
    app.router.add_get("/v1/profiles", find_profile)
    app.router.add_get("/v1/profiles/{profile_id}", get_profile)
    app.router.add_get("/v1/profiles/{profile_id}/why", why_profile)
    app.router.add_get("/v1/segments", list_segments)
    app.router.add_get("/v1/segments/{name}/members", segment_members)
    app.router.add_post("/v1/privacy/erasures", erase)
    app.router.add_get("/v1/privacy/erasures/{receipt}", erasure_status)
    app.router.add_get("/v1/privacy/export", export)
    app.router.add_post("/v1/identity/splits", split)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", httpmetrics.metrics)
    return app


def run_api(settings: Settings) -> None:
    if not settings.api_keys:
        raise SystemExit('unifier api: set UNIFIER_API_KEYS, e.g. {"a-long-random-key": ["read"]}')
    web.run_app(
        create_api(settings),
        host=settings.api_host,
        port=settings.api_port,
        print=lambda *_: log.info("read API on http://%s:%d", settings.api_host, settings.api_port),
    )


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_PROFILE = {
    "type": "object",
    "required": ["profile_id", "identifiers", "traits", "computed", "version"],
    "properties": {
        "profile_id": {"type": "string"},
        "identifiers": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "traits": {"type": "object"},
        "computed": {"type": "object"},
        "segments": {"type": "array", "items": {"type": "string"}},
        "version": {"type": "integer"},
        "freshness": {
            "type": "object",
            "description": "What the view reflects: its newest event's time, and the "
            "position (partition:offset) in the workers' log where it was made",
            "properties": {
                "event_time": {"type": "string", "nullable": True},
                "position": {"type": "string", "nullable": True},
            },
        },
    },
}
_FRESH = [
    {
        "name": "min_version",
        "in": "query",
        "description": "Read your own write: wait (wait_ms) until the profile has this version "
        "or a later one; 409 if it has not by then",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "read_after",
        "in": "query",
        "description": "Read your own write: the token the collector returned (read_after) — "
        "wait until the profile reflects an event at least that new; 409 if not by then",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "wait_ms",
        "in": "query",
        "description": "How long to wait for min_version or read_after, in ms "
        f"[{DEFAULT_WAIT_MS}, or the most allowed if less]; 400 above the most this "
        "deployment allows (UNIFIER_API_MAX_WAIT_MS, 10 s by default)",
        "schema": {"type": "integer", "minimum": 0, "maximum": 60_000},
    },
]
_SEGMENT = {
    "type": "object",
    "required": ["name", "where", "description", "version", "members"],
    "properties": {
        "name": {"type": "string"},
        "where": {"type": "string", "description": "The CEL expression"},
        "description": {"type": "string"},
        "version": {"type": "integer"},
        "members": {"type": "integer"},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "No or unknown API key",
            403: "The key lacks the scope (read; admin for privacy requests)",
            404: "Not found", 409: "Cannot be done as asked (the message says why)",
            503: "Profile store or broker unreachable"}  # fmt: skip
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"200": {"description": description,
                    "content": {"application/json": {"schema": schema}}}}  # fmt: skip


_ERASURE = {
    "type": "object",
    "description": "Whom: type and value (any identifier, as sent), or profile_id",
    "properties": {
        "type": {"type": "string"},
        "value": {"type": "string"},
        "profile_id": {"type": "string"},
        "suppress": {"type": "boolean", "default": True},
        "reason": {"type": "string", "maxLength": 200},
    },
}
_RECEIPT = {
    "type": "object",
    "required": ["receipt", "status"],
    "properties": {
        "receipt": {"type": "string"},
        "profile_id": {"type": "string", "nullable": True},
        "status": {"type": "string"},
    },
}
_SPLIT = {
    "type": "object",
    "required": ["profile_id", "detach"],
    "properties": {
        "profile_id": {"type": "string"},
        "detach": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "value"],
                "properties": {"type": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "reason": {"type": "string", "maxLength": 200},
    },
}
_PID = {"name": "profile_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Profile Unifier read API", "version": "1"},
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Profile": _PROFILE, "Error": _ERROR},
    },
    "paths": {
        "/v1/profiles/{profile_id}": {
            "get": {
                "summary": "A profile by id (a merged-away id answers with the survivor)",
                "security": _SECURED,
                "parameters": [_PID, *_FRESH],
                "responses": {
                    **_ok({"$ref": "#/components/schemas/Profile"}, "The profile"),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/v1/profiles": {
            "get": {
                "summary": "The profile holding an identifier",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "type",
                        "in": "query",
                        "required": True,
                        "description": "An identifier type this deployment is configured with",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    {
                        "name": "value",
                        "in": "query",
                        "required": True,
                        "description": "As sent by any source: it is normalized as the worker "
                        "does (an email's case, a phone number's format). 400 when it cannot be.",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    *_FRESH,
                ],
                "responses": {
                    **_ok({"$ref": "#/components/schemas/Profile"}, "The profile"),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/v1/profiles/{profile_id}/why": {
            "get": {
                "summary": "How the profile's identifiers were linked, its merges and refusals",
                "security": _SECURED,
                "parameters": [_PID],
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "required": ["profile_id"],
                            "properties": {"profile_id": {"type": "string"}},
                        },
                        "The explanation",
                    ),
                    **_errors(401, 403, 404, 503),
                },
            }
        },
        "/v1/segments": {
            "get": {
                "summary": "The segments in force, with their number of members",
                "security": _SECURED,
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "required": ["segments"],
                            "properties": {
                                "segments": {"type": "array", "items": _SEGMENT},
                            },
                        },
                        "The segments",
                    ),
                    **_errors(401, 403, 503),
                },
            }
        },
        "/v1/segments/{name}/members": {
            "get": {
                "summary": "A page of a segment's member profile ids; follow next_cursor "
                "until it is null (pages may be shorter than limit, or empty)",
                "security": _SECURED,
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "next_cursor of the page before (none: the first page)",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MEMBERS_MAX},
                    },
                ],
                "responses": {
                    **_ok(
                        {
                            "type": "object",
                            "required": ["segment", "members", "next_cursor"],
                            "properties": {
                                "segment": {"type": "string"},
                                "members": {"type": "array", "items": {"type": "string"}},
                                "next_cursor": {"type": "string", "nullable": True},
                            },
                        },
                        "A page of members",
                    ),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/privacy/erasures": {
            "post": {
                "summary": "Erase a person (admin): their profile, identifiers, keys, view, "
                "topics' records, segments and dead letters; 202 with a receipt to follow",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ERASURE}},
                },
                "responses": {
                    "202": {
                        "description": "Requested: the workers erase it within seconds",
                        "content": {"application/json": {"schema": _RECEIPT}},
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/identity/splits": {
            "post": {
                "summary": "Split a wrong merge (admin): the detached identifiers, and what "
                "is linked to the rest only through them, become their own profile(s); 202 "
                "with the split's id",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _SPLIT}},
                },
                "responses": {
                    "202": {
                        "description": "Sent: the workers split it within seconds",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["split", "profile_id"],
                                    "properties": {
                                        "split": {"type": "string"},
                                        "profile_id": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/v1/privacy/erasures/{receipt}": {
            "get": {
                "summary": "An erasure's steps and when each was done (admin)",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "receipt",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    **_ok(
                        {"type": "object", "required": ["receipt", "done", "steps"]}, "The receipt"
                    ),
                    **_errors(401, 403, 404, 503),
                },
            }
        },
        "/v1/privacy/export": {
            "get": {
                "summary": "An access request (admin): everything held about the person, "
                "from the workers' tables and the output topics",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "type",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1},
                    },
                    {
                        "name": "value",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1},
                    },
                    {
                        "name": "profile_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1},
                    },
                ],
                "responses": {
                    **_ok({"type": "object", "required": ["profile", "events"]}, "The export"),
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "The process answers",
                "responses": _ok({"type": "object"}, "Up"),
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this process (requests by route and status)",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Redis answers and the view is complete (503 with why otherwise)",
                "responses": {**_ok({"type": "object"}, "Ready"), **_errors(503)},
            }
        },
    },
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document for this deployment: the identifier types it is configured with."""
    doc = copy.deepcopy(OPENAPI)
    type_param = doc["paths"]["/v1/profiles"]["get"]["parameters"][0]
    type_param["schema"]["enum"] = sorted(identifier_priorities(settings))
    return doc
