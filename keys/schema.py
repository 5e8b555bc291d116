"""`GET /v1/proxy/me` in the OpenAPI schema of /api/schema/.

The view is the relay's (a plain async Django view that drf-spectacular cannot see), so the
operation is added by a postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]).
The shapes are those of keys.selectors.key_usage_report.
"""

from __future__ import annotations

from typing import Any

_NULLABLE_INT = {"type": "integer", "nullable": True}
_MONEY = {"type": "string", "description": "USD, a decimal string of two to six places."}
_NULLABLE_MONEY = {**_MONEY, "nullable": True}
_PERIOD = {"type": "string", "enum": ["day", "week", "month", "total"]}

COMPONENTS: dict[str, dict[str, Any]] = {
    "ProxyKeyLimits": {
        "type": "object",
        "properties": {
            "budget_usd": _NULLABLE_MONEY,
            "period": _PERIOD,
            "budget_mode": {"type": "string"},
            "token_limit": _NULLABLE_INT,
            "request_limit": _NULLABLE_INT,
            "rpm": _NULLABLE_INT,
            "tpm": _NULLABLE_INT,
            "max_concurrent": _NULLABLE_INT,
            "models": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["budget_usd", "period", "budget_mode", "models"],
    },
    "ProxyKeyPeriodUsage": {
        "type": "object",
        "properties": {
            "period": _PERIOD,
            "period_start": {"type": "string", "format": "date-time"},
            "period_end": {"type": "string", "format": "date-time", "nullable": True},
            "spent_usd": _MONEY,
            "reserved_usd": _MONEY,
            "tokens": {"type": "integer"},
            "requests": {"type": "integer"},
            "remaining_usd": _NULLABLE_MONEY,
            "remaining_tokens": _NULLABLE_INT,
            "remaining_requests": _NULLABLE_INT,
        },
        "required": ["period", "period_start", "spent_usd", "reserved_usd", "tokens", "requests"],
    },
    "ProxyKeyReport": {
        "type": "object",
        "properties": {
            "object": {"type": "string", "enum": ["proxy.key"]},
            "key": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "prefix": {"type": "string"},
                    "name": {"type": "string"},
                    "username": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time", "nullable": True},
                },
                "required": ["id", "prefix", "name", "username", "expires_at"],
            },
            "limits": {
                "type": "object",
                "properties": {
                    "key": {"$ref": "#/components/schemas/ProxyKeyLimits"},
                    "user": {"$ref": "#/components/schemas/ProxyKeyLimits"},
                },
                "required": ["key", "user"],
            },
            "usage": {
                "type": "object",
                "properties": {
                    "key": {"$ref": "#/components/schemas/ProxyKeyPeriodUsage"},
                    "user": {"$ref": "#/components/schemas/ProxyKeyPeriodUsage"},
                },
                "required": ["key", "user"],
            },
        },
        "required": ["object", "key", "limits", "usage"],
    },
    "OpenAIError": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
    }


PROXY_ME = {
    "get": {
        "operationId": "proxy_me",
        "summary": "This key's limits, its and its user's spend this period, what is left",
        "description": "With a proxy key as `Authorization: Bearer` (or in the URL, "
        "`/<key>/v1/proxy/me`). Errors are in OpenAI's shape.",
        "tags": ["proxy"],
        "security": [{"proxyKey": []}],
        "responses": {
            "200": {
                "description": "The key's report.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ProxyKeyReport"}}
                },
            },
            "401": _error("Missing, unknown, revoked or expired key."),
            "503": _error("The database did not answer in time."),
        },
    }
}


def proxy_me_path(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add `GET /v1/proxy/me` and its components."""
    result.setdefault("paths", {})["/v1/proxy/me"] = PROXY_ME
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in COMPONENTS.items():
        schemas.setdefault(name, schema)
    return result
