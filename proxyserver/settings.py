"""One settings module, read from the environment (and `.env`) through django-environ.

Every variable is listed with a one-line comment in `sample.env`; a local run needs none of them.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from proxyserver.secret_key import secret_key_from_file

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

# --- Deployment: key, hosts, TLS (README "Running behind a TLS reverse proxy") -------------
# Unset: one key generated into SECRET_KEY_FILE on first start and read by every worker and
# restart after (a key per process would log users out whenever another worker answers).
# The servers refuse DEBUG=false with a guessable key (proxyserver.secret_key).
SECRET_KEY_FILE = BASE_DIR / (env.str("SECRET_KEY_FILE", default="") or "var/secret-key")
SECRET_KEY = env.str("SECRET_KEY", default="") or secret_key_from_file(SECRET_KEY_FILE)
# Where `make run` / `manage.py serve` listen: this machine only unless told otherwise.
HOST = env.str("HOST", default="") or "127.0.0.1"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Only behind a proxy that sets X-Forwarded-Proto on every request, and with the server out
# of clients' reach (HOST): otherwise a client could claim https itself.
TRUST_X_FORWARDED_PROTO = env.bool("TRUST_X_FORWARDED_PROTO", default=False)
if TRUST_X_FORWARDED_PROTO:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Health probes and scrapers talk to the server itself over plain HTTP; a redirect fails them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)


def env_bool_unless_blank(name: str, default: bool) -> bool:
    """`env.bool`, except that a blank value (as sample.env ships it) means the default too."""
    return env.bool(name) if env.str(name, default="").strip() else default


# Served over TLS, cookies are secure unless said otherwise; over plain HTTP on a workstation a
# secure cookie would not come back to the server and logging in would fail.
SESSION_COOKIE_SECURE = env_bool_unless_blank(
    "SESSION_COOKIE_SECURE", TRUST_X_FORWARDED_PROTO or SECURE_SSL_REDIRECT
)
CSRF_COOKIE_SECURE = env_bool_unless_blank(
    "CSRF_COOKIE_SECURE", TRUST_X_FORWARDED_PROTO or SECURE_SSL_REDIRECT
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "auditlog",
    "keys",
    "usage",
    "audit",
    "mozilla_django_oidc",
    "relay",
    "alerts",
    "fakeopenai",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's, the docs page's and the dashboards' assets from the app itself.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who made each change the admin, the API or a dashboard writes (audit.trail).
    "audit.trail.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: answers a locked-out login (proxyserver.login_lockout). Async-capable
    # and query-free on every other request; /v1 is served without middleware (asgi.py).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "proxyserver.urls"
ASGI_APPLICATION = "proxyserver.asgi.application"
WSGI_APPLICATION = "proxyserver.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Several threads and two server processes write usage records; WAL lets readers go
        # on, IMMEDIATE takes the write lock up front so two writers never deadlock on upgrade.
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;",
    }
    # A file, not ":memory:", so that the test server processes share the test database;
    # one per test run, so that two runs at once never share one.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"oaiproxy-test-{os.getpid()}.sqlite3")
    }
    # Opening a SQLite file (and setting WAL on it) per request would cost more than the query.
    DATABASES["default"]["CONN_MAX_AGE"] = None
else:
    # Per test run, for the same reason as the SQLite file above.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A database host that does not answer fails a connection in seconds, not minutes: the
    # relay answers 503 meanwhile (relay.database).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=3)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHE_URL = env.str("CACHE_URL", default="")
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "oaiproxy",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "usage:dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Only for `collectstatic` behind a separate web server; whitenoise serves from the apps.
STATIC_ROOT = env.str("STATIC_ROOT", default="") or None
STATICFILES_DIRS = [BASE_DIR / "static"]
# Straight from the apps' static folders: `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

# Logs never carry bodies or keys; the upstream key is only read by relay.upstream. One line
# per request at INFO (relay.request_log); LOG_FORMAT=json makes every line a JSON object.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "proxyserver.log_format.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "proxyserver.log_format.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "keys.authentication.BasicAuthentication",  # DRF's, counted by axes
        "keys.authentication.ProxyKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "OpenAI proxy usage API",
    "DESCRIPTION": "Keys, usage records and summaries of the OpenAI proxy.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/",
    # /v1/proxy/me is the relay's plain view, described by a hook (keys.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "keys.schema.proxy_me_path",
    ],
}

# --- The proxy's own settings (all in sample.env) -------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
# The address users reach the proxy at, for links made outside a request (`invite_user`).
PROXY_PUBLIC_URL = env.str("PROXY_PUBLIC_URL", default="http://localhost:8000").rstrip("/")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1").rstrip("/")
# An OpenAI admin key, read only by `manage.py reconcile_usage` (never relayed): empty leaves
# reconciliation off.
OPENAI_ADMIN_KEY = env.str("OPENAI_ADMIN_KEY", default="")
# /readyz also asks OpenAI (GET /models, 3 s) whether it accepts OPENAI_API_KEY: one upstream
# call per probe, so off by default.
READYZ_CHECK_UPSTREAM = env.bool("READYZ_CHECK_UPSTREAM", default=False)
# Set: GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>` (proxyserver.metrics).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
ADMIN_USERNAME = env.str("ADMIN_USERNAME", default="admin")
ADMIN_PASSWORD = env.str("ADMIN_PASSWORD", default="")
PORT = env.int("PORT", default=8000)

PROXY_KEY_PREFIX = "sk-proxy-"
# Key lookups are cached per process for this long; revocation still takes effect at once
# because the quota step checks the key row on every request. Limit edits apply within it.
PROXY_KEY_CACHE_SECONDS = env.float("PROXY_KEY_CACHE_SECONDS", default=5.0)
# What a budget does with a request whose cost it cannot bound, unless the key or its user
# says otherwise: "strict" refuses it with a 400 naming what to send, "estimate" reserves the
# defaults below (and the budget can then be overshot by what they under-estimate).
PROXY_BUDGET_MODE = env.str("PROXY_BUDGET_MODE", default="strict")
if PROXY_BUDGET_MODE not in ("strict", "estimate"):
    raise ImproperlyConfigured("PROXY_BUDGET_MODE must be strict or estimate")
# "estimate" budgets: output tokens reserved for a request that names no max_tokens /
# max_completion_tokens / max_output_tokens, and built-in tool calls for a Responses request
# with a built-in tool and no max_tool_calls.
PROXY_DEFAULT_OUTPUT_TOKENS = env.int("PROXY_DEFAULT_OUTPUT_TOKENS", default=4096)
PROXY_DEFAULT_TOOL_CALLS = env.int("PROXY_DEFAULT_TOOL_CALLS", default=4)
PROXY_MAX_BODY_BYTES = env.int("PROXY_MAX_BODY_BYTES", default=20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = PROXY_MAX_BODY_BYTES + 1024
PROXY_UPSTREAM_CONNECT_TIMEOUT = env.float("PROXY_UPSTREAM_CONNECT_TIMEOUT", default=10.0)
PROXY_UPSTREAM_READ_TIMEOUT = env.float("PROXY_UPSTREAM_READ_TIMEOUT", default=600.0)
# Upstream connections per process (a stream holds one while it lasts), and how long a request
# waits in line for one when all are in use before it is answered 503 upstream_busy.
PROXY_UPSTREAM_MAX_CONNECTIONS = env.int("PROXY_UPSTREAM_MAX_CONNECTIONS", default=4096)
PROXY_UPSTREAM_QUEUE_SECONDS = env.float("PROXY_UPSTREAM_QUEUE_SECONDS", default=30.0)
LEGACY_CREATE_KEY_GET = env.bool("LEGACY_CREATE_KEY_GET", default=False)
# Longest a request waits for its reservation before a 503 (the database is stuck or away).
PROXY_DB_TIMEOUT = env.float("PROXY_DB_TIMEOUT", default=5.0)
# Each relay process says it is alive this often; the reaper ends the reservations of a
# process not seen for PROXY_REAP_AFTER_SECONDS (it crashed or was killed).
PROXY_HEARTBEAT_SECONDS = env.float("PROXY_HEARTBEAT_SECONDS", default=5.0)
PROXY_REAP_AFTER_SECONDS = env.float("PROXY_REAP_AFTER_SECONDS", default=30.0)
# Each relay process asks OpenAI this often about the unfinished batches no other process
# asked about meanwhile, and settles those that ended (relay.batches).
PROXY_BATCH_POLL_SECONDS = env.float("PROXY_BATCH_POLL_SECONDS", default=60.0)
# The largest batch input file the proxy reads to reserve the batch's worst case (OpenAI's own
# limit is 200 MB).
PROXY_BATCH_INPUT_MAX_BYTES = env.int("PROXY_BATCH_INPUT_MAX_BYTES", default=200 * 1024 * 1024)
# On SIGTERM, open streams get this long to finish before they are closed and recorded.
PROXY_SHUTDOWN_GRACE_SECONDS = env.float("PROXY_SHUTDOWN_GRACE_SECONDS", default=20.0)

# Bodies: off by default; per key a key can switch it on or off (ApiKey.log_bodies).
USAGE_LOG_BODIES = env.bool("USAGE_LOG_BODIES", default=False)
USAGE_BODY_MAX_BYTES = env.int("USAGE_BODY_MAX_BYTES", default=64 * 1024)
USAGE_REDACT_FIELDS = env.list("USAGE_REDACT_FIELDS", default=[])
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=0)
USAGE_BODY_RETENTION_DAYS = env.int("USAGE_BODY_RETENTION_DAYS", default=30)
# Where a usage record the database refuses even after sanitising is kept (JSON lines).
USAGE_UNWRITABLE_FILE = env.str(
    "USAGE_UNWRITABLE_FILE", default=str(BASE_DIR / "var" / "unwritable-usage-records.jsonl")
)

TIKTOKEN_CACHE_DIR = env.str("TIKTOKEN_CACHE_DIR", default=str(BASE_DIR / ".cache" / "tiktoken"))
PRICE_CACHE_SECONDS = env.float("PRICE_CACHE_SECONDS", default=60.0)

# --- Budget alerts (alerts/; README "Budget alerts") -----------------------------------------
# Percent of a period's budget at which a key's or a user's spend is alerted, once each.
ALERT_THRESHOLDS = sorted(
    {int(t) for t in env.list("ALERT_THRESHOLDS", default=["50", "80", "100"])}
)
if any(not 0 < t <= 1000 for t in ALERT_THRESHOLDS):
    raise ImproperlyConfigured("ALERT_THRESHOLDS must be whole percents between 1 and 1000")
ALERT_EMAIL_TO = env.list("ALERT_EMAIL_TO", default=[])
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_SECRET = env.str("ALERT_WEBHOOK_SECRET", default="")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_SECRET:
    raise ImproperlyConfigured("ALERT_WEBHOOK_URL needs ALERT_WEBHOOK_SECRET to sign its bodies")
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", default=10.0)
# An alert not delivered is tried again after ALERT_RETRY_SECONDS, doubling each time, until
# ALERT_MAX_ATTEMPTS tries in all; then it is marked failed.
ALERT_MAX_ATTEMPTS = env.int("ALERT_MAX_ATTEMPTS", default=8)
ALERT_RETRY_SECONDS = env.float("ALERT_RETRY_SECONDS", default=30.0)
# How often each relay process looks for alerts to send; 0: this process sends none.
ALERT_DELIVERY_SECONDS = env.float("ALERT_DELIVERY_SECONDS", default=5.0)
# Days before a key's expiry its user is warned, and how often that is looked for (seconds).
ALERT_EXPIRY_DAYS = env.float("ALERT_EXPIRY_DAYS", default=7.0)
ALERT_EXPIRY_CHECK_SECONDS = env.float("ALERT_EXPIRY_CHECK_SECONDS", default=300.0)
# Mail (Django's backends). Unset: SMTP when EMAIL_HOST is set, else printed to the log.
EMAIL_HOST = env.str("EMAIL_HOST", default="")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
EMAIL_FILE_PATH = str(BASE_DIR / (env.str("EMAIL_FILE_PATH", default="") or "var/mail"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="openai-proxy@localhost")

# --- Login lockout (django-axes; proxyserver.login_lockout, README "Dependencies") ----------
# Failed password logins (admin, dashboard, HTTP Basic on /api/, /create_api_key) are counted
# in the database per username and per client address; AXES_FAILURE_LIMIT of either within the
# cool-off locks that account or that address out until the cool-off has passed with no try.
AUTHENTICATION_BACKENDS = [
    # First: a locked-out login is refused before any password is checked.
    "proxyserver.login_lockout.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
    # OpenID Connect single sign-on; answers only an OIDC callback, when configured.
    "proxyserver.sso.ProxyOIDCBackend",
]

# --- Single sign-on (OpenID Connect; README "Single sign-on"; off unless a client id is set) ----
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile")
OIDC_USE_PKCE = True
OIDC_AUTHENTICATE_CLASS = "proxyserver.sso.AuthenticateView"
OIDC_CALLBACK_CLASS = "proxyserver.sso.CallbackView"
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups")
OIDC_STAFF_GROUP = env.str("OIDC_STAFF_GROUP", default="")
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="single sign-on")
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/?sso=failed"
AXES_HANDLER = "proxyserver.login_lockout.LoginAttemptHandler"
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_MINUTES = env.float("AXES_COOLOFF_MINUTES", default=15.0)
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_MINUTES <= 0:
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT must be at least 1, AXES_COOLOFF_MINUTES > 0")
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# The peer uvicorn reports, which behind a proxy in FORWARDED_ALLOW_IPS is the client it names.
AXES_CLIENT_IP_CALLABLE = "proxyserver.login_lockout.client_ip"
AXES_USERNAME_CALLABLE = "proxyserver.login_lockout.attempt_username"
AXES_LOCKOUT_CALLABLE = "proxyserver.login_lockout.lockout_response"
# Never on success: logging in to an account of one's own would wipe one's address's count.
AXES_RESET_ON_SUCCESS = False
# No version banner on every manage.py command (log lines mask username and address anyway).
AXES_VERBOSE = False

# --- Relay: secrets in logs, tenants upstream, browser clients (relay.redaction,
# relay.identifiers, relay.cors; README "Security of the relay") -----------------------------
# Every log line, Django's request logger included, goes out with proxy keys and the upstream
# key masked.
LOGGING["filters"] = {"secrets": {"()": "relay.redaction.SecretsFilter"}}
LOGGING["handlers"]["console"]["filters"] = ["secrets"]
# Chat completions and Responses requests carry a keyed hash of the user as safety_identifier.
PROXY_SAFETY_IDENTIFIER = env.bool("PROXY_SAFETY_IDENTIFIER", default=True)
# CORS: off unless an origin is listed; /v1 reads these in relay.cors, /api/ via corsheaders.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_ALLOWED_ORIGIN_REGEXES = env.list("CORS_ALLOWED_ORIGIN_REGEXES", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
INSTALLED_APPS.append("corsheaders")
# First, as django-cors-headers asks: a preflight is answered before any redirect or check.
MIDDLEWARE.insert(0, "corsheaders.middleware.CorsMiddleware")
