"""The schema at a glance (DESIGN section 6), and the queries more than one caller needs."""

from __future__ import annotations

import datetime as dt

import peewee

from store.db import database

ROLES = ("admin", "faculty", "staff", "student")
ROLE_WEIGHTS = {"admin": 10.0, "faculty": 3.0, "staff": 2.0, "student": 1.0}
ENGINES = ("ollama", "vllm")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class LongTextField(peewee.TextField):
    """Prompts and responses with inline images outgrow MySQL's 64 KiB TEXT; SQLite reads it as TEXT."""

    field_type = "LONGTEXT"


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class User(BaseModel):
    username = peewee.CharField(max_length=64, unique=True)
    role = peewee.CharField(max_length=16, choices=[(r, r) for r in ROLES])
    weight_override = peewee.FloatField(null=True)
    token_budget_override = peewee.BigIntegerField(null=True)
    rpm_override = peewee.IntegerField(null=True)
    max_concurrent_override = peewee.IntegerField(null=True)
    max_queued_override = peewee.IntegerField(null=True)
    active = peewee.BooleanField(default=True)
    password_hash = peewee.CharField(max_length=255, null=True)
    email = peewee.CharField(max_length=255, null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    @property
    def weight(self) -> float:
        return self.weight_override if self.weight_override is not None else ROLE_WEIGHTS[self.role]


class ApiKey(BaseModel):
    user = peewee.ForeignKeyField(User, backref="api_keys", on_delete="CASCADE")
    prefix = peewee.CharField(max_length=16, unique=True)
    key_hash = peewee.CharField(max_length=255)
    label = peewee.CharField(max_length=128, default="")
    status = peewee.CharField(max_length=16, default="active", index=True)  # active | revoked
    expires_at = peewee.DateTimeField(null=True)
    last_used_at = peewee.DateTimeField(null=True)
    request_count = peewee.BigIntegerField(default=0)
    rpm_override = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    revoked_at = peewee.DateTimeField(null=True)


class Quota(BaseModel):
    user = peewee.ForeignKeyField(User, backref="quotas", on_delete="CASCADE")
    period = peewee.CharField(max_length=7)  # "YYYY-MM"
    budget = peewee.BigIntegerField()
    used = peewee.BigIntegerField(default=0)
    reserved = peewee.BigIntegerField(default=0)

    class Meta:
        indexes = ((("user", "period"), True),)


class QuotaRequest(BaseModel):
    user = peewee.ForeignKeyField(User, backref="quota_requests", on_delete="CASCADE")
    amount = peewee.BigIntegerField()
    reason = peewee.TextField(default="")
    status = peewee.CharField(max_length=16, default="pending", index=True)  # pending | approved | denied
    decided_by = peewee.ForeignKeyField(User, null=True, backref="quota_decisions", on_delete="SET NULL")
    decided_at = peewee.DateTimeField(null=True)
    decision_note = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)


class Backend(BaseModel):
    name = peewee.CharField(max_length=128, unique=True)
    url = peewee.CharField(max_length=512)
    engine = peewee.CharField(max_length=16, choices=[(e, e) for e in ENGINES])
    max_concurrent = peewee.IntegerField(default=4)
    gpu_memory_gb = peewee.FloatField(null=True)
    enabled = peewee.BooleanField(default=True)
    draining = peewee.BooleanField(default=False)
    health = peewee.CharField(max_length=16, default="unknown")  # unknown | healthy | unhealthy
    priority = peewee.IntegerField(default=0)
    latency_ema_ms = peewee.FloatField(null=True)
    last_checked_at = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)
    telemetry_url = peewee.CharField(max_length=512, null=True)  # the node's telemetry_agent, if it runs one
    gpu_indices = peewee.CharField(max_length=64, default="")  # "0,1": this backend's GPUs on that node
    refresh_requested_at = peewee.DateTimeField(null=True)  # an admin asked the gateways to re-examine it


class BackendModel(BaseModel):
    backend = peewee.ForeignKeyField(Backend, backref="models", on_delete="CASCADE")
    name = peewee.CharField(max_length=255)
    resident = peewee.BooleanField(default=False)
    size_bytes = peewee.BigIntegerField(null=True)
    vram_bytes = peewee.BigIntegerField(null=True)
    capabilities = peewee.TextField(default="[]")  # JSON list: completion, vision, tools, thinking, embedding
    context_length = peewee.IntegerField(null=True)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("backend", "name"), True),)


class TelemetrySample(BaseModel):
    backend = peewee.ForeignKeyField(Backend, backref="telemetry", on_delete="CASCADE")
    taken_at = peewee.DateTimeField(default=utcnow, index=True)
    models_loaded = peewee.IntegerField(null=True)
    requests_running = peewee.IntegerField(null=True)
    requests_waiting = peewee.IntegerField(null=True)
    kv_cache_usage = peewee.FloatField(null=True)
    gpu_utilization = peewee.FloatField(null=True)
    gpu_memory_used_bytes = peewee.BigIntegerField(null=True)
    gpu_memory_total_bytes = peewee.BigIntegerField(null=True)
    details = peewee.TextField(default="{}")  # JSON: whatever else the poll reported


class Request(BaseModel):
    """One audit row per request through the gateway."""

    request_id = peewee.CharField(max_length=32, unique=True)
    # user, model, backend and status each lead an index of Meta's: one of their own would only cost every
    # audit row another index write (migration 0008).
    user = peewee.ForeignKeyField(User, null=True, backref="requests", on_delete="SET NULL", index=False)
    api_key = peewee.ForeignKeyField(ApiKey, null=True, backref="requests", on_delete="SET NULL")
    endpoint = peewee.CharField(max_length=64)
    client_dialect = peewee.CharField(max_length=16)
    backend_dialect = peewee.CharField(max_length=16, null=True)
    model = peewee.CharField(max_length=255, null=True)
    backend = peewee.ForeignKeyField(Backend, null=True, backref="requests", on_delete="SET NULL", index=False)
    status = peewee.IntegerField(null=True)
    stream = peewee.BooleanField(default=False)
    queue_ms = peewee.FloatField(null=True)
    ttft_ms = peewee.FloatField(null=True)
    total_ms = peewee.FloatField(null=True)
    prompt_tokens = peewee.IntegerField(null=True)
    completion_tokens = peewee.IntegerField(null=True)
    client_address = peewee.CharField(max_length=64, null=True)
    error = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        # One per filter of the audit search and the dashboards' own recent requests, each with the
        # time after it, so a filter plus a time range (and "newest first") reads an index range.
        indexes = (
            (("user", "created_at"), False),
            (("model", "created_at"), False),
            (("backend", "created_at"), False),
            (("status", "created_at"), False),
        )


class RequestBody(BaseModel):
    request = peewee.ForeignKeyField(Request, unique=True, backref="bodies", on_delete="CASCADE")
    prompt = LongTextField(default="")
    response = LongTextField(default="")  # as delivered: SSE events or NDJSON lines for a stream
    # The answer's thinking and text assembled from those events: what audit search reads, since a
    # stream splits words across events.
    response_text = LongTextField(default="")
    validation = peewee.TextField(default="")  # JSON: structured-output validation result, if any


class Artifact(BaseModel):
    """An uploaded image or file, stored once by content under ARTIFACT_STORAGE_PATH."""

    sha256 = peewee.CharField(max_length=64, unique=True)
    content_type = peewee.CharField(max_length=128)
    size_bytes = peewee.BigIntegerField()
    path = peewee.CharField(max_length=512)
    created_at = peewee.DateTimeField(default=utcnow)


class RequestArtifact(BaseModel):
    request = peewee.ForeignKeyField(Request, backref="artifacts", on_delete="CASCADE")
    artifact = peewee.ForeignKeyField(Artifact, backref="requests", on_delete="CASCADE")

    class Meta:
        indexes = ((("request", "artifact"), True),)


class AdminAction(BaseModel):
    actor = peewee.ForeignKeyField(User, null=True, backref="admin_actions", on_delete="SET NULL")
    action = peewee.CharField(max_length=64)
    target = peewee.CharField(max_length=255, default="")
    before = peewee.TextField(default="{}")
    after = peewee.TextField(default="{}")
    at = peewee.DateTimeField(default=utcnow, index=True)


class UsageHour(BaseModel):
    """Usage per (user, model, hour), kept by the gateway's writer in the batch that writes each audit
    row, so dashboards read this instead of the audit table. user_id 0: no user; model "": none."""

    user_id = peewee.IntegerField()
    model = peewee.CharField(max_length=255)
    hour = peewee.DateTimeField()  # UTC, on the hour
    requests = peewee.BigIntegerField(default=0)
    errors = peewee.BigIntegerField(default=0)  # status >= 400, or none at all
    prompt_tokens = peewee.BigIntegerField(default=0)
    completion_tokens = peewee.BigIntegerField(default=0)
    queue_ms = peewee.FloatField(default=0.0)  # sums: divide by requests for the mean
    total_ms = peewee.FloatField(default=0.0)

    class Meta:
        # (user_id, hour): one user's days over every model; (hour): everyone's today.
        indexes = ((("user_id", "model", "hour"), True), (("user_id", "hour"), False), (("hour",), False))


class UsageMinute(BaseModel):
    """The whole cluster's usage per minute (requests and tokens per minute, tokens per second)."""

    minute = peewee.DateTimeField(unique=True)  # UTC, on the minute
    requests = peewee.BigIntegerField(default=0)
    errors = peewee.BigIntegerField(default=0)
    prompt_tokens = peewee.BigIntegerField(default=0)
    completion_tokens = peewee.BigIntegerField(default=0)


class KeyRequest(BaseModel):
    """Someone without an account asks, from the public page, for one with API access; an admin
    approves (the account is created with the role granted and the password chosen here) or denies."""

    username = peewee.CharField(max_length=64)
    email = peewee.CharField(max_length=255)
    role = peewee.CharField(max_length=16, choices=[(r, r) for r in ROLES])
    reason = peewee.TextField(default="")
    password_hash = peewee.CharField(max_length=255)
    status = peewee.CharField(max_length=16, default="pending", index=True)  # pending | approved | denied
    user = peewee.ForeignKeyField(User, null=True, backref="key_requests", on_delete="SET NULL")
    decided_by = peewee.ForeignKeyField(User, null=True, backref="key_decisions", on_delete="SET NULL")
    decided_at = peewee.DateTimeField(null=True)
    decision_note = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)


class QueueSnapshot(BaseModel):
    """The live queue of one gateway process, replaced on every snapshot, read by the admin app."""

    gateway = peewee.CharField(max_length=64, unique=True)
    taken_at = peewee.DateTimeField(default=utcnow)
    data = LongTextField(default="{}")


class StoredResponse(BaseModel):
    """An answer of `POST /v1/responses` kept for `GET /v1/responses/{id}` and `previous_response_id`
    (OpenAI's `store`, true unless the caller says false); only its owner ever reads it. Pruned with
    the audit log (admin_app/retention.py)."""

    response_id = peewee.CharField(max_length=64, unique=True)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE")
    model = peewee.CharField(max_length=256)
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    response = LongTextField()  # the Response object as its caller got it
    conversation = LongTextField()  # the items a later turn continues from: earlier turns, input, output


class ModelAlias(BaseModel):
    """A name an admin gives a model (`coder` → `Qwen/Qwen2.5-Coder-32B-Instruct`): callers use the alias on
    every endpoint, and the admin re-points it without any client changing."""

    alias = peewee.CharField(max_length=256, unique=True)
    model = peewee.CharField(max_length=256)
    updated_at = peewee.DateTimeField(default=utcnow)


ALL_MODELS = [
    User,
    ApiKey,
    Quota,
    QuotaRequest,
    Backend,
    BackendModel,
    TelemetrySample,
    Request,
    RequestBody,
    Artifact,
    RequestArtifact,
    AdminAction,
    QueueSnapshot,
    UsageHour,
    UsageMinute,
    KeyRequest,
    StoredResponse,
    ModelAlias,
]


def key_by_prefix(prefix: str) -> ApiKey | None:
    """The key row with this prefix joined to its user, whatever its status (the caller decides)."""
    return ApiKey.select(ApiKey, User).join(User).where(ApiKey.prefix == prefix).first()


def latest_committed(query: peewee.Select) -> peewee.Select:
    # Inside a transaction InnoDB (REPEATABLE READ) answers a plain SELECT from the snapshot of the
    # transaction's first read, which may predate a row another connection just committed; a locking
    # read sees it. SQLite lets one writer in at a time and has no FOR UPDATE.
    if isinstance(database.obj, peewee.MySQLDatabase):
        return query.for_update()
    return query


def get_or_create_quota(user_id: int, period: str, initial_budget: int) -> Quota:
    """The quota row of `user_id` for `period` ("YYYY-MM"), created with `initial_budget` if there is
    none yet (callers pass `budget_for(role, token_budget_override, DEFAULT_TOKEN_BUDGET)`).

    Safe against a concurrent creator (a gateway, an admin-app worker): whoever loses the race on the
    unique (user, period) index reads the winner's row, inside a transaction too."""
    where = (Quota.user == user_id) & (Quota.period == period)
    row = Quota.get_or_none(where)
    if row is not None:
        return row
    try:
        with database.atomic():  # a savepoint when the caller holds a transaction
            return Quota.create(user=user_id, period=period, budget=initial_budget)
    except peewee.IntegrityError:
        return latest_committed(Quota.select().where(where)).get()
