#!/usr/bin/env python3
"""Generates the malformed-input corpus that tests/corpus.rs replays.

Run from anywhere: `python3 tests/corpus/generate.py`. It rewrites
`tests/corpus/predict/*.bin`, `tests/corpus/feedback/*.bin` and
`tests/corpus/manifest.json`, deterministically (no randomness), so a diff of the
corpus is a diff of this script.

Every case is checked here against a reference model of the contract (README
"Errors" and "Model server" sections: serde_json's JSON grammar and limits, the
f32 range, the feedback rules). The script refuses to write a case the model
accepts, so the corpus only ever holds invalid requests, and the expected error
type it records comes from the contract, not from the Rust code under test.

manifest.json is a list of
  {"file": "predict/001-empty.bin", "route": "/predict",
   "content_type": "application/json" | null (no header),
   "expect": "<error type answered by an arm>",
   "expect_router": "<error type answered through the router>"}
"""

import json
import math
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
JSON_CT = "application/json"
ARMS = ("best_model", "candidate_model")
MAX_BATCH = 1024  # model-server default `max_batch_size`
SERDE_MAX_DEPTH = 127  # serde_json's recursion limit (128) less one

FEATURES = {
    "fixed_acidity": 7.4,
    "volatile_acidity": 0.7,
    "citric_acid": 0,
    "residual_sugar": 1.9,
    "chlorides": 0.076,
    "free_sulfur_dioxide": 11,
    "total_sulfur_dioxide": 34,
    "density": 0.9978,
    "ph": 3.51,
    "sulphates": 0.56,
    "alcohol": 9.4,
}
NAMES = list(FEATURES)
# A prediction id of the right shape whose epoch no arm uses: an arm would accept
# feedback for it (as "not remembered"), so a case using it is invalid only
# because of its other fields.
GOOD_ID = "best_model-00000000-1"


# ---------------------------------------------------------------- reference model

class Invalid(Exception):
    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def _bad_json():
    raise Invalid("invalid_json")


def _parse_float(s):
    v = float(s)
    if math.isinf(v):
        _bad_json()  # serde_json: "number out of range"
    return v


def _parse_int(s):
    v = int(s)
    if -(2**63) <= v < 2**64:
        return v
    f = float(s)  # serde_json falls back to f64 beyond i64/u64
    if math.isinf(f):
        _bad_json()
    return f


def _depth(v):
    best, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            best = max(best, d)
            stack.extend((c, d + 1) for c in (x.values() if isinstance(x, dict) else x))
    return best


def _has_surrogate(v):
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in x):
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def parse_json(body):
    """serde_json::from_slice::<Value>, or Invalid("invalid_json")."""
    if all(b in b" \t\n\r\x0b\x0c" for b in body):
        _bad_json()  # empty or whitespace-only
    try:
        text = body.decode("utf-8")  # strict: no invalid UTF-8, BOM kept as U+FEFF
        v = json.loads(
            text,
            parse_constant=lambda _: _bad_json(),  # NaN, Infinity, -Infinity
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        _bad_json()
    if _depth(v) > SERDE_MAX_DEPTH or _has_surrogate(v):
        _bad_json()
    return v


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fits_f32(x):
    try:
        struct.pack("<f", float(x))  # OverflowError exactly when `x as f32` is infinite
        return True
    except OverflowError:
        return False


def json_ok(ct):
    if ct is None:
        return True
    mime = ct.split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def check_row(row):
    if not isinstance(row, dict):
        raise Invalid("invalid_input")
    seen, unknown = set(), []
    for name in sorted(row):  # serde_json's Map is ordered by key
        value = row[name]
        if name not in FEATURES:
            unknown.append(name)
            continue
        if not is_number(value) or not fits_f32(value):
            raise Invalid("invalid_input")
        seen.add(name)
    if len(seen) < len(NAMES):
        raise Invalid("missing_feature")
    if unknown:
        raise Invalid("unknown_feature")


def check_predict(body, ct):
    if not json_ok(ct):
        raise Invalid("unsupported_media_type")
    v = parse_json(body)
    if not isinstance(v, dict):
        raise Invalid("invalid_input")
    for key in sorted(v):
        if key == "user_id":
            if not (isinstance(v[key], str) or is_number(v[key])):
                raise Invalid("invalid_input")
        elif key not in ("features", "instances"):
            raise Invalid("invalid_input")
    if ("features" in v) == ("instances" in v):
        raise Invalid("invalid_input")
    if "features" in v:
        check_row(v["features"])
        return
    items = v["instances"]
    if not isinstance(items, list):
        raise Invalid("invalid_input")
    if not items or len(items) > MAX_BATCH:
        raise Invalid("invalid_batch")
    for item in items:
        check_row(item)


def hex_int(s, bits):
    if not s or any(c not in "0123456789abcdefABCDEF" for c in s):
        return None
    n = int(s, 16)
    return n if n < 2**bits else None


def id_known_shape(pid):
    """Whether some arm would accept this id (as known or forgotten)."""
    for arm in ARMS:
        rest = pid[len(arm) + 1:] if pid.startswith(arm + "-") else None
        if rest is None or "-" not in rest:
            continue
        epoch, seq = rest.split("-", 1)
        if hex_int(epoch, 32) is not None and hex_int(seq, 64) is not None:
            return True
    return False


def check_feedback_fields(v):
    if not isinstance(v, dict):
        raise Invalid("invalid_input")
    pid = ftype = rating = None
    for key in sorted(v):
        value = v[key]
        if key == "prediction_id":
            if not isinstance(value, str) or not (1 <= len(value.encode()) <= 128):
                raise Invalid("invalid_input")
            pid = value
        elif key == "feedback_type":
            if value not in ("rating", "accurate", "too_high", "too_low"):
                raise Invalid("invalid_input")
            ftype = value
        elif key == "rating":
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5):
                raise Invalid("invalid_input")
            rating = value
        elif key == "actual":
            if not is_number(value) or not math.isfinite(value):
                raise Invalid("invalid_input")
        elif key in ("variant", "user_id"):
            pass
        else:
            raise Invalid("invalid_input")
    if pid is None or ftype is None:
        raise Invalid("invalid_input")
    if (ftype == "rating") != (rating is not None):
        raise Invalid("invalid_input")
    if not id_known_shape(pid):
        raise Invalid("invalid_input")


def check_feedback(body, ct, via_router):
    if via_router:
        # The router reads `variant` (a string) to pick the arm before forwarding.
        try:
            v = parse_json(body)
        except Invalid:
            v = None
        if isinstance(v, dict) and isinstance(v.get("variant"), str) and v["variant"] not in ARMS:
            raise Invalid("unknown_variant")
    if not json_ok(ct):
        raise Invalid("unsupported_media_type")
    check_feedback_fields(parse_json(body))


def expected(route, body, ct, via_router):
    try:
        if route == "/predict":
            check_predict(body, ct)
        else:
            check_feedback(body, ct, via_router)
    except Invalid as e:
        return e.kind
    return None


# ---------------------------------------------------------------- cases

CASES = {"predict": [], "feedback": []}


def add(route_dir, name, body, ct=JSON_CT):
    if isinstance(body, str):
        body = body.encode()
    CASES[route_dir].append((name, body, ct))


def dumps(v):
    return json.dumps(v)


def with_features(**changes):
    f = dict(FEATURES)
    for k, v in changes.items():
        if v is DROP:
            f.pop(k)
        else:
            f[k] = v
    return f


DROP = object()
VALID_PREDICT = dumps({"features": FEATURES})
VALID_BATCH = dumps({"instances": [FEATURES, FEATURES]})
VALID_FEEDBACK = dumps({"prediction_id": GOOD_ID, "feedback_type": "accurate"})
FEATURE_JSON = dumps(FEATURES)


def predict_cases():
    p = lambda name, body, ct=JSON_CT: add("predict", name, body, ct)
    # empty and whitespace
    p("empty", b"")
    p("space", b" ")
    p("newline", b"\n")
    p("mixed-whitespace", b" \r\n\t \n")
    p("kilobyte-of-spaces", b" " * 1024)
    p("form-feed", b"\x0c")
    # truncated JSON
    for cut in (1, 2, 5, 12, 13, 14, 30, 31, 60, 100, 150, 200, len(VALID_PREDICT) - 10,
                len(VALID_PREDICT) - 2, len(VALID_PREDICT) - 1):
        p(f"truncated-at-{cut}", VALID_PREDICT[:cut])
    for cut in (15, 200, len(VALID_BATCH) - 3, len(VALID_BATCH) - 1):
        p(f"truncated-batch-at-{cut}", VALID_BATCH[:cut])
    # syntax errors
    inner = FEATURE_JSON[1:-1]
    p("trailing-comma-in-features", '{"features": {%s, }}' % inner)
    p("trailing-comma-top-level", '{"features": {%s},}' % inner)
    p("single-quotes", VALID_PREDICT.replace('"', "'"))
    p("unquoted-keys", '{features: %s}' % FEATURE_JSON)
    p("line-comment", '// comment\n%s' % VALID_PREDICT)
    p("block-comment", '{"features": /* x */ %s}' % FEATURE_JSON)
    p("trailing-garbage", VALID_PREDICT + " x")
    p("two-documents", VALID_PREDICT + VALID_PREDICT)
    p("extra-closing-brace", VALID_PREDICT + "}")
    p("missing-colon", '{"features" %s}' % FEATURE_JSON)
    p("missing-comma", '{"features": {"alcohol": 9.4 "ph": 3.5}}')
    p("leading-zero", VALID_PREDICT.replace('"chlorides": 0.076', '"chlorides": 00.076'))
    p("bare-fraction", VALID_PREDICT.replace("0.076", ".076"))
    p("bare-dot", VALID_PREDICT.replace("9.4", "9."))
    p("plus-sign", VALID_PREDICT.replace("9.4", "+9.4"))
    p("hex-number", VALID_PREDICT.replace("9.4", "0x9"))
    p("two-dots", VALID_PREDICT.replace("9.4", "9.4.1"))
    p("exponent-without-digits", VALID_PREDICT.replace("9.4", "9e"))
    p("raw-control-char-in-key", b'{"features": {"alc\x01ohol": 9.4}}')
    p("raw-newline-in-string", '{"features": {"alco\nhol": 9.4}}')
    p("unterminated-string", '{"features": {"alcohol: 9.4}}')
    p("bad-escape", '{"features": {"\\x41lcohol": 9.4}}')
    p("short-unicode-escape", '{"features": {"\\u12": 9.4}}')
    p("nul-byte", VALID_PREDICT.encode() + b"\x00")
    # NaN / Infinity literals and friends
    for lit in ("NaN", "Infinity", "-Infinity", "nan", "inf", "-inf", "undefined", "None", "True"):
        p(f"literal-{lit.replace('-', 'minus-')}",
          VALID_PREDICT.replace("9.4", lit))
    p("nan-as-string", dumps({"features": with_features(alcohol="NaN")}))
    p("infinity-as-string", dumps({"features": with_features(alcohol="Infinity")}))
    # huge numbers
    for text, label in (("1e400", "1e400"), ("-1e400", "minus-1e400"), ("1e39", "1e39-over-f32"),
                        ("-1e39", "minus-1e39-over-f32"), ("3.5e38", "3.5e38-over-f32"),
                        ("1e308", "1e308-over-f32"), ("1" + "0" * 400, "400-digit-integer"),
                        ("1" + "0" * 40, "41-digit-integer"), ("-1" + "0" * 40, "minus-41-digit-integer"),
                        ("18446744073709551616e30", "u64-overflow-exponent")):
        p(f"number-{label}", VALID_PREDICT.replace("9.4", text))
    p("number-1e39-in-batch-row-2",
      dumps({"instances": [FEATURES, with_features(ph=0)]}).replace('"ph": 0', '"ph": 1e39'))
    # deep nesting
    p("10k-open-brackets", "[" * 10000)
    p("10k-open-brackets-in-features", '{"features": ' + "[" * 10000)
    p("10k-balanced-brackets-as-feature-value",
      VALID_PREDICT.replace("9.4", "[" * 10000 + "]" * 10000))
    p("10k-nested-objects", '{"a":' * 10000 + "1" + "}" * 10000)
    p("200-balanced-brackets-top-level", "[" * 200 + "]" * 200)
    p("200-nested-objects-in-features", '{"features": ' + '{"a":' * 200 + "1" + "}" * 200 + "}")
    # 10k-field objects
    many = {f"f{i}": 1 for i in range(10000)}
    p("10k-unknown-features-plus-all-known", dumps({"features": dict(FEATURES, **many)}))
    p("10k-unknown-features-only", dumps({"features": many}))
    p("10k-unknown-top-level-fields", dumps(dict({"features": FEATURES}, **many)))
    p("batch-row-with-10k-unknown-features", dumps({"instances": [FEATURES, dict(FEATURES, **many)]}))
    # invalid UTF-8 and encodings
    raw = VALID_PREDICT.encode()
    p("invalid-utf8-ff-in-key", raw.replace(b"alcohol", b"alco\xffhol"))
    p("invalid-utf8-overlong-slash", raw.replace(b"alcohol", b"alco\xc0\xafhol"))
    p("invalid-utf8-lone-continuation", raw.replace(b"alcohol", b"alco\x80hol"))
    p("invalid-utf8-truncated-sequence", raw.replace(b"alcohol", b"alco\xe2\x82hol"))
    p("invalid-utf8-cesu-surrogate", raw.replace(b"alcohol", b"alco\xed\xa0\x80hol"))
    p("latin1-byte-in-user-id", raw[:-1] + b', "user_id": "caf\xe9"}')
    p("lone-surrogate-escape", VALID_PREDICT.replace("alcohol", "alco\\ud800hol"))
    p("utf8-bom", b"\xef\xbb\xbf" + raw)
    p("utf16le-with-bom", b"\xff\xfe" + VALID_PREDICT.encode("utf-16-le"))
    p("utf16be-without-bom", VALID_PREDICT.encode("utf-16-be"))
    # top-level scalars and arrays
    for label, text in (("number", "1"), ("negative-number", "-1"), ("string", '"features"'),
                        ("true", "true"), ("false", "false"), ("null", "null"),
                        ("empty-array", "[]"), ("array-of-numbers", "[7.4, 0.7]"),
                        ("array-wrapping-a-valid-body", "[" + VALID_PREDICT + "]"),
                        ("json-encoded-string-of-a-valid-body", dumps(VALID_PREDICT))):
        p(f"top-level-{label}", text)
    # duplicate keys: the last value wins, and it is bad
    p("duplicate-features-last-is-number", '{"features": %s, "features": 5}' % FEATURE_JSON)
    p("duplicate-features-last-is-null", '{"features": %s, "features": null}' % FEATURE_JSON)
    p("duplicate-feature-last-is-string",
      '{"features": {%s, "alcohol": "9.4"}}' % inner)
    p("duplicate-feature-last-is-nan", '{"features": {%s, "alcohol": NaN}}' % inner)
    p("duplicate-instances-last-is-empty", '{"instances": [%s], "instances": []}' % FEATURE_JSON)
    p("duplicate-user-id-last-is-array",
      '{"features": %s, "user_id": "u1", "user_id": [1]}' % FEATURE_JSON)
    # unknown and misspelled features
    p("unknown-feature-colour", dumps({"features": dict(FEATURES, colour=1)}))
    p("unknown-feature-quality-target", dumps({"features": dict(FEATURES, quality=5)}))
    p("unknown-feature-empty-name", dumps({"features": dict(FEATURES, **{"": 1})}))
    p("unknown-feature-trailing-space", dumps({"features": dict(FEATURES, **{"alcohol ": 1})}))
    p("unknown-feature-proto", dumps({"features": dict(FEATURES, __proto__=1)}))
    p("unknown-feature-100k-char-name", dumps({"features": dict(FEATURES, **{"x" * 100000: 1})}))
    p("unknown-feature-with-string-value", dumps({"features": dict(FEATURES, colour="red")}))
    p("capitalised-feature-name", dumps({"features": {("Alcohol" if k == "alcohol" else k): v
                                                      for k, v in FEATURES.items()}}))
    p("feature-name-pH", dumps({"features": {("pH" if k == "ph" else k): v for k, v in FEATURES.items()}}))
    p("seed-style-names-with-spaces",
      dumps({"features": {k.replace("_", " "): v for k, v in FEATURES.items()}}))
    # missing features
    for name in NAMES:
        p(f"missing-{name.replace('_', '-')}", dumps({"features": with_features(**{name: DROP})}))
    p("missing-all-features", dumps({"features": {}}))
    p("only-alcohol", dumps({"features": {"alcohol": 9.4}}))
    # wrong types for every feature
    for name in NAMES:
        for label, value in (("string", str(FEATURES[name])), ("null", None), ("bool", True),
                             ("array", [FEATURES[name]]), ("object", {"value": FEATURES[name]})):
            p(f"{name.replace('_', '-')}-as-{label}", dumps({"features": with_features(**{name: value})}))
    # wrong type for `features`
    for label, value in (("array", list(FEATURES.values())), ("string", FEATURE_JSON),
                         ("number", 9.4), ("null", None), ("bool", True)):
        p(f"features-as-{label}", dumps({"features": value}))
    # instances
    p("instances-empty", dumps({"instances": []}))
    p("instances-1025-empty-rows", dumps({"instances": [{}] * (MAX_BATCH + 1)}))
    p("instances-1025-valid-rows", json.dumps({"instances": [FEATURES] * (MAX_BATCH + 1)},
                                              separators=(",", ":")))
    for label, value in (("object", FEATURES), ("string", "[]"), ("null", None), ("number", 5),
                         ("bool", False)):
        p(f"instances-as-{label}", dumps({"instances": value}))
    for label, value in (("number", 5), ("null", None), ("string", "row"),
                         ("array-of-values", list(FEATURES.values()))):
        p(f"instances-row-as-{label}", dumps({"instances": [FEATURES, value]}))
    p("instances-row-missing-feature", dumps({"instances": [FEATURES, {}]}))
    p("instances-row-with-string-value", dumps({"instances": [FEATURES, with_features(ph="3.51")]}))
    p("instances-row-with-unknown-feature", dumps({"instances": [FEATURES, dict(FEATURES, colour=1)]}))
    p("instances-row-wrapped-in-features", dumps({"instances": [{"features": FEATURES}]}))
    # top-level shape
    p("features-and-instances", dumps({"features": FEATURES, "instances": [FEATURES]}))
    p("empty-object", "{}")
    p("only-user-id", dumps({"user_id": "u1"}))
    p("tf-serving-inputs", dumps({"inputs": [list(FEATURES.values())]}))
    p("data-field", dumps({"data": FEATURES}))
    p("extra-field-model", dumps({"features": FEATURES, "model": "candidate_model"}))
    p("extra-field-variant", dumps({"features": FEATURES, "variant": "candidate_model"}))
    p("misspelled-features-key", dumps({"feature": FEATURES}))
    # user_id of the wrong type
    for label, value in (("array", [1]), ("object", {"id": 1}), ("bool", True), ("null", None)):
        p(f"user-id-as-{label}", dumps({"features": FEATURES, "user_id": value}))
    # content types other than JSON (valid JSON bodies: only the type is wrong)
    for label, ct in (("text-plain", "text/plain"),
                      ("form-urlencoded", "application/x-www-form-urlencoded"),
                      ("multipart", "multipart/form-data; boundary=xyz"),
                      ("xml", "application/xml"), ("text-json", "text/json"),
                      ("octet-stream", "application/octet-stream"), ("empty-string", ""),
                      ("jsonx", "application/jsonx"), ("json-plus-xml", "application/json+xml"),
                      ("star-star", "*/*"), ("text-html-utf8", "text/html; charset=utf-8")):
        p(f"content-type-{label}", VALID_PREDICT, ct)
    p("form-encoded-body", "features=%7B%22alcohol%22%3A9.4%7D", "application/x-www-form-urlencoded")
    p("multipart-body",
      "--xyz\r\nContent-Disposition: form-data; name=\"body\"\r\nContent-Type: application/json\r\n\r\n"
      + VALID_PREDICT + "\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz")


def feedback_cases():
    f = lambda name, body, ct=JSON_CT: add("feedback", name, body, ct)
    fb = lambda **kw: dumps(kw)
    f("empty", b"")
    f("whitespace", b" \n\t")
    for cut in (1, 10, 20, 40, len(VALID_FEEDBACK) - 1):
        f(f"truncated-at-{cut}", VALID_FEEDBACK[:cut])
    f("single-quotes", VALID_FEEDBACK.replace('"', "'"))
    f("trailing-comma", VALID_FEEDBACK[:-1] + ",}")
    f("trailing-garbage", VALID_FEEDBACK + "]")
    for label, text in (("number", "4"), ("string", '"accurate"'), ("null", "null"),
                        ("array", "[]"), ("array-wrapping-a-valid-body", "[" + VALID_FEEDBACK + "]")):
        f(f"top-level-{label}", text)
    f("10k-open-brackets", "[" * 10000)
    f("200-nested-actual", VALID_FEEDBACK[:-1] + ', "actual": ' + "[" * 200 + "]" * 200 + "}")
    f("utf8-bom", b"\xef\xbb\xbf" + VALID_FEEDBACK.encode())
    f("invalid-utf8-in-prediction-id", VALID_FEEDBACK.encode().replace(b"best_model", b"best\xffmodel"))
    f("lone-surrogate-in-prediction-id", VALID_FEEDBACK.replace("best_model", "best\\udc00model"))
    f("10k-unknown-fields", dumps(dict({"prediction_id": GOOD_ID, "feedback_type": "accurate"},
                                       **{f"f{i}": 1 for i in range(10000)})))
    # prediction_id
    f("missing-prediction-id", fb(feedback_type="accurate"))
    for label, value in (("number", 5), ("null", None), ("bool", True), ("array", [GOOD_ID]),
                         ("object", {"id": GOOD_ID}), ("empty", ""), ("129-chars", "a" * 129),
                         ("65-two-byte-chars", "\u00e9" * 65)):
        f(f"prediction-id-{label}", fb(prediction_id=value, feedback_type="accurate"))
    for label, value in (("nonsense", "nonsense"), ("arm-name-only", "best_model"),
                         ("arm-name-and-dash", "best_model-"), ("non-hex-epoch", "best_model-zz-1"),
                         ("no-sequence", "best_model-00000000"),
                         ("unknown-arm", "other_model-00000000-1"),
                         ("extra-part", "best_model-00000000-1-extra"),
                         ("uppercase-arm", "BEST_MODEL-00000000-1"),
                         ("epoch-over-u32", "best_model-100000000-1"),
                         ("sequence-over-u64", "best_model-00000000-10000000000000000"),
                         ("path-traversal", "../../etc/passwd"),
                         ("nul-suffix", GOOD_ID + "\u0000"),
                         ("candidate-non-hex", "candidate_model-zz-1"),
                         ("spaces", " best_model-00000000-1")):
        f(f"prediction-id-{label}", fb(prediction_id=value, feedback_type="accurate"))
    # feedback_type
    f("missing-feedback-type", fb(prediction_id=GOOD_ID))
    for label, value in (("great", "great"), ("empty", ""), ("capitalised", "Rating"),
                         ("uppercase", "ACCURATE"), ("leading-space", " accurate"),
                         ("number", 5), ("null", None), ("array", ["accurate"]),
                         ("object", {"type": "accurate"}), ("bool", True)):
        f(f"feedback-type-{label}", fb(prediction_id=GOOD_ID, feedback_type=value))
    # rating
    f("rating-type-without-rating", fb(prediction_id=GOOD_ID, feedback_type="rating"))
    for label, value in (("0", 0), ("6", 6), ("minus-1", -1), ("2.5", 2.5), ("4.0", 4.0),
                         ("string", "4"), ("null", None), ("bool", True), ("array", [4]),
                         ("100", 100), ("u64-overflow", 2**64)):
        f(f"rating-{label}", fb(prediction_id=GOOD_ID, feedback_type="rating", rating=value))
    rating_base = fb(prediction_id=GOOD_ID, feedback_type="rating", rating=4)
    f("rating-1e2", rating_base.replace('"rating": 4', '"rating": 1e2'))
    f("rating-1e400", rating_base.replace('"rating": 4', '"rating": 1e400'))
    f("rating-nan", rating_base.replace('"rating": 4', '"rating": NaN'))
    f("rating-with-accurate", fb(prediction_id=GOOD_ID, feedback_type="accurate", rating=3))
    f("rating-with-too-high", fb(prediction_id=GOOD_ID, feedback_type="too_high", rating=5))
    # actual
    for label, value in (("string", "6"), ("null", None), ("bool", False), ("array", [6]),
                         ("object", {"quality": 6})):
        f(f"actual-{label}", fb(prediction_id=GOOD_ID, feedback_type="accurate", actual=value))
    actual_base = fb(prediction_id=GOOD_ID, feedback_type="accurate", actual=6)
    for label, text in (("nan", "NaN"), ("infinity", "Infinity"), ("minus-infinity", "-Infinity"),
                        ("1e400", "1e400"), ("minus-1e400", "-1e400"), ("400-digit-integer", "9" * 400)):
        f(f"actual-{label}", actual_base.replace('"actual": 6', '"actual": ' + text))
    # unknown fields and duplicates
    f("unknown-field-note", fb(prediction_id=GOOD_ID, feedback_type="accurate", note="x"))
    f("unknown-field-comment", fb(prediction_id=GOOD_ID, feedback_type="too_low", comment=""))
    f("capitalised-prediction-id-key", fb(Prediction_id=GOOD_ID, feedback_type="accurate"))
    f("duplicate-feedback-type-last-is-bad",
      '{"prediction_id": "%s", "feedback_type": "accurate", "feedback_type": "great"}' % GOOD_ID)
    f("duplicate-prediction-id-last-is-empty",
      '{"prediction_id": "%s", "prediction_id": "", "feedback_type": "accurate"}' % GOOD_ID)
    # unknown variant (the router refuses it; an arm ignores routing hints)
    f("variant-unknown-and-no-feedback-type", fb(prediction_id=GOOD_ID, variant="nobody"))
    f("variant-uppercase-and-bad-rating",
      fb(prediction_id=GOOD_ID, feedback_type="rating", rating=9, variant="BEST_MODEL"))
    f("variant-path-and-foreign-id",
      fb(prediction_id="nonsense", feedback_type="accurate", variant="../best_model"))
    # content types
    for label, ct in (("text-plain", "text/plain"), ("form-urlencoded", "application/x-www-form-urlencoded"),
                      ("multipart", "multipart/form-data; boundary=xyz"), ("empty-string", "")):
        f(f"content-type-{label}", VALID_FEEDBACK, ct)
    f("form-encoded-body", "prediction_id=best_model-00000000-1&feedback_type=accurate",
      "application/x-www-form-urlencoded")


def main():
    predict_cases()
    feedback_cases()
    manifest = []
    for route_dir in ("predict", "feedback"):
        out = os.path.join(HERE, route_dir)
        os.makedirs(out, exist_ok=True)
        for old in os.listdir(out):
            if old.endswith(".bin"):
                os.remove(os.path.join(out, old))
        names = set()
        route = "/" + route_dir
        for i, (name, body, ct) in enumerate(CASES[route_dir], start=1):
            assert name not in names, f"duplicate case name {name}"
            names.add(name)
            arm = expected(route, body, ct, via_router=False)
            router = expected(route, body, ct, via_router=True)
            if arm is None or router is None:
                sys.exit(f"{route_dir}/{name}: the reference model accepts this case; it is not invalid")
            rel = f"{route_dir}/{i:03d}-{name}.bin"
            with open(os.path.join(HERE, rel), "wb") as fh:
                fh.write(body)
            manifest.append({"file": rel, "route": route, "content_type": ct,
                             "expect": arm, "expect_router": router})
    with open(os.path.join(HERE, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    counts = {d: len(CASES[d]) for d in CASES}
    print(f"wrote {len(manifest)} cases: {counts}")


if __name__ == "__main__":
    main()
