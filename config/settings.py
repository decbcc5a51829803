"""Teachback settings: the only settings module, read from the environment (12-factor)."""
import hashlib
import os
import warnings
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured


TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool = False) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off (any case; unset or empty: `default`). Anything else
    stops the start with the variable's name: a typo must not read as "off"."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in TRUE_WORDS | FALSE_WORDS:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{name}={raw!r} is not a yes/no value: use 1, true, yes, on or 0, false, no, off")
    return value in TRUE_WORDS


BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG")
DEMO = env_bool("TEACHBACK_DEMO")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is not set; refusing to start without a secret key.")
    SECRET_KEY = "insecure-debug-only-key"

# Prolific ids are stored only as HMAC-SHA256 under this key. Rotating it breaks resume-by-PID.
PID_HASH_KEY = os.environ.get("PID_HASH_KEY", "") or f"pid-hash:{SECRET_KEY}"
# Export pseudonyms are keyed hashes of participant ids; set this before rotating the secret key so
# pseudonyms stay stable across exports (docs/export.md).
PSEUDONYM_KEY = os.environ.get("PSEUDONYM_KEY", "")
# Days after a participant finished (completed, withdrew, declined) that their PID and session hashes are
# cleared; after that the same PID counts as a new person (docs/participant-journey.md). 0: never.
PID_HASH_RETENTION_DAYS = int(os.environ.get("PID_HASH_RETENTION_DAYS", "90"))
# An active participant not seen for this long no longer holds a seat in an arm with a cap (docs/allocation.md).
SEAT_HOLD_MINUTES = int(os.environ.get("SEAT_HOLD_MINUTES", "120"))
# Entry hardening (docs/participant-journey.md, "Entry limits"). New arrivals per client IP and per recruiter
# session (SESSION_ID) within ENTRY_RATE_WINDOW_S seconds; 0 turns that limit off. CLIENT_IP_HEADER: the
# header a trusted reverse proxy sets to the client's address (e.g. X-Real-IP; for X-Forwarded-For the
# last address is used); empty: the socket's address (REMOTE_ADDR). Set it only behind a proxy that
# overwrites that header. RESUME_LINK_HOURS: how long a one-time "continue on another device" link works.
# PILOT_LINK_DAYS: how long a pilot or simulated-participant link works (it admits to one version only).
ENTRY_RATE_PER_IP = int(os.environ.get("ENTRY_RATE_PER_IP", "30"))
ENTRY_RATE_PER_SESSION = int(os.environ.get("ENTRY_RATE_PER_SESSION", "10"))
ENTRY_RATE_WINDOW_S = int(os.environ.get("ENTRY_RATE_WINDOW_S", "600"))
CLIENT_IP_HEADER = os.environ.get("CLIENT_IP_HEADER", "").strip()
RESUME_LINK_HOURS = int(os.environ.get("RESUME_LINK_HOURS", "24"))
PILOT_LINK_DAYS = int(os.environ.get("PILOT_LINK_DAYS", "14"))

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "csp",
    "studies",
    "explainers",
    "participants",
    "analysis",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # a NUL byte in a query or a form: 400 with a message; a database outage: 503 "temporarily unavailable"
    "config.middleware.NulBytesRefused",
    "config.middleware.DatabaseUnavailable",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

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

# Database connections (docs/deploy.md, "Database connections"). Every process (each web worker, each Celery
# worker) takes its PostgreSQL connections from a pool of at most DB_POOL_MAX_SIZE (psycopg's pool): a request
# that finds them all busy waits up to DB_POOL_TIMEOUT_S for one instead of opening another, so a launch burst
# queues instead of meeting "too many clients". A connection is handed out only after a check that it is alive
# (CONN_HEALTH_CHECKS), so a PostgreSQL restart costs no request. Keep the sum over processes of
# DB_POOL_MAX_SIZE below the server's max_connections. DB_POOL_MAX_SIZE=0: no pool (a connection per request).
DB_POOL_MIN_SIZE = int(os.environ.get("DB_POOL_MIN_SIZE", "2"))
DB_POOL_MAX_SIZE = int(os.environ.get("DB_POOL_MAX_SIZE", "20"))
DB_POOL_TIMEOUT_S = float(os.environ.get("DB_POOL_TIMEOUT_S", "30"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/teachback"),
        conn_max_age=0,  # the pool needs 0: Django gives the connection back to it after each request
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL_MAX_SIZE > 0:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(DB_POOL_MIN_SIZE, DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": DB_POOL_TIMEOUT_S,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo's SQLite: take the write lock at BEGIN so concurrent arrivals queue instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Every Redis key and pub/sub channel of this deployment starts with this (pub/sub ignores the database
# number, so two deployments on one Redis server would otherwise hear each other's streams). The default
# is derived from the secret key and the database name: distinct per deployment, not guessable.
REDIS_NAMESPACE = os.environ.get("REDIS_NAMESPACE", "") or "tb-" + hashlib.sha256(
    f"redis-namespace:{SECRET_KEY}:{DATABASES['default'].get('NAME', '')}".encode()
).hexdigest()[:16]
# The cache (monitor numbers, bot runs, API throttles) and Celery's broker keys (below) share it too.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                      "KEY_PREFIX": f"{REDIS_NAMESPACE}:cache"}}

# Sessions live in the database: a participant who comes back tomorrow still has theirs.
SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_AGE = 60 * 60 * 24 * 30
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
HTTPS = env_bool("DJANGO_HTTPS")
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365 if HTTPS else 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
    }
}

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG or DEMO
# WhiteNoise hands Django a synchronous file iterator; under ASGI Django warns once per static file.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

LOGIN_URL = "/console/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/console/login/"

# Researcher logins (console and admin) are throttled by the one authentication backend (console.logins,
# docs/console.md "Login limits"): LOGIN_FAILURES_PER_ACCOUNT failed logins of one username, or
# LOGIN_FAILURES_PER_IP from one client IP (any usernames), within LOGIN_FAILURE_WINDOW_MINUTES lock it
# for LOGIN_LOCKOUT_MINUTES, with no password checked meanwhile. The password "validator" below checks
# nothing: Django calls its password_changed() after every password change, and it revokes the account's
# API tokens (console.accounts).
AUTHENTICATION_BACKENDS = ["console.logins.ThrottledModelBackend"]
LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("LOGIN_FAILURES_PER_ACCOUNT", "5"))
LOGIN_FAILURES_PER_IP = int(os.environ.get("LOGIN_FAILURES_PER_IP", "50"))
LOGIN_FAILURE_WINDOW_MINUTES = int(os.environ.get("LOGIN_FAILURE_WINDOW_MINUTES", "15"))
LOGIN_LOCKOUT_MINUTES = int(os.environ.get("LOGIN_LOCKOUT_MINUTES", "15"))
AUTH_PASSWORD_VALIDATORS = [{"NAME": "console.accounts.RevokeApiTokensOnPasswordChange"}]

# The REST API (docs/api.md). Tokens first, so a request without credentials answers 401 (Bearer).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # the pages' session; enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],  # API views set their own
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser", "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_THROTTLE_CLASSES": [
        "console.throttling.TokenThrottle", "console.throttling.SessionUserThrottle", "console.throttling.AnonIPThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "token": os.environ.get("API_RATE_TOKEN", "600/min"),
        "user": os.environ.get("API_RATE_USER", "600/min"),
        "anon": os.environ.get("API_RATE_ANON", "120/min"),
    },
    # Behind N proxies the client's IP is the Nth address from the right of X-Forwarded-For; with 0 it is
    # REMOTE_ADDR, so a client cannot dodge the per-IP limit with a made-up header.
    "NUM_PROXIES": int(os.environ.get("API_NUM_PROXIES", "1" if HTTPS else "0")),
    "EXCEPTION_HANDLER": "console.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Teachback API",
    "DESCRIPTION": "Studies, participants, transcripts, exports and reports for researchers. "
                   "Authenticate with a personal token (`Authorization: Bearer tb_...`). See docs/api.md.",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,  # separate request and response components: uploads are binary
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "studies.models.Membership.Role",
        "VersionStateEnum": "studies.models.StudyVersion.State",
        "StepEnum": "participants.models.Step",
        "ParticipantStatusEnum": "participants.models.Participant.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "console.schema.error_responses_hook",  # every 400/401/403/404/429 an operation can give
    ],
}

# Language models. Keys only from the environment; with none configured, chat arms answer from the
# scripted demo model at SCRIPTED_LLM_URL (started by `run.py demo` and by the tests), and say so.
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "")
LLM_API_KEY = os.environ.get("LLM_API_KEY", "")
ANTHROPIC_BASE_URL = os.environ.get("ANTHROPIC_BASE_URL", "")
ANTHROPIC_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
SCRIPTED_LLM_URL = os.environ.get("SCRIPTED_LLM_URL", "")

# Celery: every LLM call runs in a worker (threads pool: many calls in flight per process).
# The timing budget (docs/chat.md "The timing budget"; checked by tests/explainers/test_timing_budget.py):
#   a worker holds a Redis lease on its turn while its call is alive, renewed by a heartbeat every
#   LEASE_RENEW_EVERY_S whether or not data arrives; a dead worker's lease expires after LEASE_TTL_S and
#   the sweeper (every TURN_SWEEP_EVERY_S) re-queues its turn:  LEASE_TTL_S + TURN_SWEEP_EVERY_S  <=  30 s
#   one attempt per delivery:  studies.spec.LLM_TIMEOUT_MAX_S (600 s) + margin  <=  soft limit  <  hard limit
#   hard limit, retry countdown  <  visibility timeout: a healthy task is never handed to a second worker
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than any delivery: redelivery is the sweeper's job, not the broker's. A message whose worker
    # died comes back after an hour and finds its turn answered: a no-op.
    "visibility_timeout": 3600,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    # kombu prefixes every key it uses (queues, unacked, bindings) and every pidbox/event channel.
    "global_keyprefix": f"{REDIS_NAMESPACE}:celery:",
    # Broker restarts (docs/deploy.md, "Broker restarts"): notice a dead connection (keepalive, and kombu's
    # check of its BRPOP and pub/sub connections every health_check_interval), give up a connect after 5 s.
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
    "retry_on_timeout": True,
}
# A worker whose broker went away reconnects with backoff (2, 4, ... up to 30 s apart) for as long as it
# takes (Celery's default gives up after 100 attempts), and lets the replies it is making run to their end:
# their calls and saves need no broker, and the sweeper answers any turn whose message the restart lost.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# `celery worker -B` (beat as the worker's child) is refused unless this is set (config/celery.py): in
# production exactly one `celery -A config beat` runs on its own. The demo and DEBUG allow it.
WORKER_BEAT_ALLOWED = env_bool("WORKER_BEAT_ALLOWED", DEBUG or DEMO)
REPLY_SOFT_LIMIT_S = 660  # the longest attempt (studies.spec.LLM_TIMEOUT_MAX_S, 600 s) + 60 s of reads and writes
REPLY_HARD_LIMIT_S = 690
REPLY_MAX_COUNTDOWN_S = 10  # a retry's countdown; a longer Retry-After waits through Turn.not_before
LEASE_TTL_S = 10  # a turn's lease outlives its worker by at most this
LEASE_RENEW_EVERY_S = 3  # the heartbeat: three renewals per TTL, so one late beat does not lose the lease
TURN_SWEEP_EVERY_S = float(os.environ.get("TURN_SWEEP_EVERY_S", "5"))
# A pending turn whose message was enqueued this long ago with no call started lost its message (a broker
# restart without persistence, a flush): with the sweep interval it is answered within 30 s of its loss.
# Above every countdown; a turn still queued behind a backlog gets a second message, a no-op once answered.
TURN_SWEEP_STALE_S = int(os.environ.get("TURN_SWEEP_STALE_S", "20"))
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE = {
    "turns-sweep": {"task": "explainers.tasks.turns_sweep_task", "schedule": TURN_SWEEP_EVERY_S},
    # the study cost caps (docs/roles.md, "Budgets") and the retention of PID hashes
    "budgets-check": {"task": "participants.tasks.budgets_check_task", "schedule": 15.0},
    "pid-hashes-expire": {"task": "participants.tasks.pid_hashes_expire_task", "schedule": 24 * 60 * 60.0},
}
# Worker threads share this many database connections (PostgreSQL allows 100 in all).
WORKER_DB_SLOTS = int(os.environ.get("WORKER_DB_SLOTS", "20"))

# Participant-facing limits.
CHAT_MESSAGE_MAX_CHARS = 2_000
CLIENT_EVENTS_MAX_BYTES = 2_000
# Open reply streams (server-sent events) per participant, across all web processes: opening one more ends
# the oldest (docs/chat.md, "Open streams"). Every stream of a process shares one Redis pub/sub connection,
# and the process's Redis commands share at most REDIS_MAX_CONNECTIONS connections (they wait for a free one).
CHAT_STREAMS_PER_PARTICIPANT = int(os.environ.get("CHAT_STREAMS_PER_PARTICIPANT", "3"))
REDIS_MAX_CONNECTIONS = int(os.environ.get("REDIS_MAX_CONNECTIONS", "50"))

# Request bodies (docs/deploy.md, "Limits"). config.middleware.BodyLimit refuses with 413, before Django reads
# anything, a body over BODY_MAX_BYTES (by its Content-Length at once; a chunked one as soon as it passes), or
# on BODY_UPLOAD_PATHS over the study-file limit (studies.spec.MAX_STUDY_BYTES) plus BODY_UPLOAD_OVERHEAD_BYTES.
# Below those, Django's own limits: form fields (not files) up to DATA_UPLOAD_MAX_MEMORY_SIZE, at most so many
# fields and files; a body or file above FILE_UPLOAD_MAX_MEMORY_SIZE (only an upload can be) goes to a
# temporary file in FILE_UPLOAD_TEMP_DIR (default: the system's), deleted after the request.
BODY_MAX_BYTES = int(os.environ.get("BODY_MAX_BYTES", str(1024 * 1024)))
BODY_UPLOAD_PATHS = (r"^/console/upload/$", r"^/console/[-\w]+/upload/$", r"^/api/studies/$")
BODY_UPLOAD_OVERHEAD_BYTES = 256 * 1024  # multipart headers, the CSRF token and the file name
DATA_UPLOAD_MAX_MEMORY_SIZE = BODY_MAX_BYTES
DATA_UPLOAD_MAX_NUMBER_FIELDS = 500
DATA_UPLOAD_MAX_NUMBER_FILES = 5
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default (2.5 MiB), on purpose: twenty uploads at once stay on disk
FILE_UPLOAD_TEMP_DIR = os.environ.get("FILE_UPLOAD_TEMP_DIR") or None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_query": {"()": "config.logfilters.RedactQueryString"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_query"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Access logs carry the query string, where PROLIFIC_PID arrives: strip it before anything prints.
    "loggers": {
        "uvicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}
