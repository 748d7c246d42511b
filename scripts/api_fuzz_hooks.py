"""schemathesis hooks of scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

Two rules of the document are stated in words because JSON Schema cannot state them, and the
generator, which does not read words, breaks them in nearly every body it calls valid. The
hooks bring such bodies back within the rules, so they test what lies behind them.

An event's time must lie within --ingest.max-event-age before and --ingest.max-event-future
after the server clock: a rule relative to "now" that no JSON Schema can state, so the document
says it in words. Generated times (any integer > 0) almost never fall in that window, and every
body would stop at its ts_ms, never reaching the rest of the validation or the database. So each
schema-valid time (an integer > 0) is moved to now before the request is sent, keeping its unit
(below 10^12: seconds); invalid ones (0, negative, not an integer) are sent as generated.

An impression's items must have unique positions and unique item ids (JSON Schema's
uniqueItems compares whole items): repeated ones are renumbered.

Two failures are dropped:
- a body whose only fault is a value of the wrong JSON type that the server accepted (false or
  "1.5" for a number, "yes" for a boolean). recsys coerces these as pydantic's lax mode does,
  like the original service whose document said "number" too (api-contract §2.1: "pydantic
  runs in lax mode");
- a query id the server refused whose value holds a code point no Unicode version assigns
  (category Cn, e.g. U+20F6): the generator's \p{L} and \p{M} take unassigned code points of
  their blocks, which are neither letters nor marks, so the server's 422 is right.
"""

import time
import unicodedata

import schemathesis

_TIME_FIELDS = ("ts_ms", "ts")


def _now_like(value):
    now_ms = int(time.time() * 1000)
    return now_ms // 1000 if value < 10**12 else now_ms


def _within_rules(obj):
    if isinstance(obj, dict):
        for key in _TIME_FIELDS:
            value = obj.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value == int(value):
                obj[key] = _now_like(value)
        items = obj.get("items")
        if isinstance(items, list):
            _unique_items(items)
        for value in obj.get("events", []) if isinstance(obj.get("events"), list) else []:
            _within_rules(value)


def _unique_items(items):
    positions, ids = set(), set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        pos = item.get("position")
        if isinstance(pos, (int, float)) and not isinstance(pos, bool) and pos >= 0 and pos == int(pos):
            pos = int(pos)
            while pos in positions:
                pos += 1
            item["position"] = pos
            positions.add(pos)
        item_id = item.get("item_id")
        if isinstance(item_id, str) and 1 <= len(item_id) <= 128 and item_id in ids:
            item_id = f"{i}-{item_id}"[:128]
            item["item_id"] = item_id
        if isinstance(item_id, str):
            ids.add(item_id)


_QUERY_IDS = ("user_id", "session_id")


def _unassigned_id(case):
    query = case.query or {}
    return any(
        isinstance(query.get(key), str) and any(unicodedata.category(ch) == "Cn" for ch in query[key])
        for key in _QUERY_IDS
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    code = getattr(failure, "code", "")
    if code == "ST202" and response is not None and response.status_code == 422 and _unassigned_id(case):
        return False
    if code != "ST201":
        return True
    faults = [line for line in str(failure.message).splitlines() if line.strip().startswith("Invalid component")]
    lax = (": Incorrect type", "violates `anyOf` at /properties/server_received_ts_ms")
    return not (faults and all(line.rstrip().endswith(lax) for line in faults))


@schemathesis.hook
def before_call(context, case, kwargs):
    _within_rules(case.body)
