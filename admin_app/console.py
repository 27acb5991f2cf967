"""The admin console: HTML pages under /admin for everything an admin does, beside the JSON admin API.

Every page needs an admin's session (`admin_page`): a visitor is sent to log in, any other role gets
403. Every form carries a CSRF token (CSRFProtect, app-wide) and every change writes an AdminAction
with the state before and after. Pages read the rollups and index ranges, never scan the audit table.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
from collections import Counter
from collections.abc import Iterator

import peewee
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required

from admin_app import api_values as values
from admin_app.accounts import (
    USER_SETTINGS,
    AccountConflict,
    AccountError,
    create_user,
    keys_query,
    revoke_key,
    update_user,
    user_state,
)
from admin_app.accounts_api import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, user_changes
from admin_app.admin_actions import record_action
from admin_app.aliases import all_aliases, remove_alias, set_alias
from admin_app.api_values import FieldError
from admin_app.audit import AuditSearch, _requests_query, parse_search, request_detail, request_json
from admin_app.backends import RegistrationError, backend_state, backends_with_models, validate_registration
from admin_app.queue import QUEUE_SNAPSHOT_MAX_AGE, live_queue
from admin_app.quotas import QuotaConflict, decide_quota_request, quota_request_by_id, quota_requests_query
from admin_app.usage import Point, per_minute, start_of_day, top_users, totals_since
from store.api_keys import hash_password
from store.db import database
from store.models import (
    ROLES,
    AdminAction,
    ApiKey,
    Backend,
    KeyRequest,
    QuotaRequest,
    Request,
    TelemetrySample,
    User,
    utcnow,
)

bp = Blueprint("console", __name__, url_prefix="/admin")

PAGE_SIZE = 50
COUNT_CAP = 10_000  # past this a search says "10,000+" rather than count a million rows
EXPORT_BATCH = 1000
BACKEND_ACTIONS = {
    "enable": {"enabled": True, "draining": False},
    "disable": {"enabled": False},
    "drain": {"draining": True},
}


def admin_page(view):
    """Only an admin's session reaches `view`; a visitor is sent to log in, anyone else gets 403."""

    @functools.wraps(view)
    @login_required
    def wrapped(**kwargs):
        if current_user.user.role != "admin":
            abort(403, description=f"This page is for admins; you are logged in as a {current_user.user.role}.")
        return view(**kwargs)

    return wrapped


def _actor() -> User:
    return current_user.user


def _back(endpoint: str, **kwargs):
    return redirect(url_for(endpoint, **kwargs), 303)


def _int_arg(name: str, default: int = 1) -> int:
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


# ---- overview ----------------------------------------------------------------------------------

@bp.get("")
@admin_page
def overview():
    now = utcnow()
    backends = backends_with_models()
    unhealthy = [b.name for b, _ in backends if b.enabled and b.health != "healthy"]
    minutes = per_minute(now)
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=59)
    by_minute = {row.minute: row for row in minutes}
    requests_per_minute, tokens_per_minute = [], []
    for i in range(60):
        at = start + dt.timedelta(minutes=i)
        row = by_minute.get(at)
        requests_per_minute.append(Point(at.strftime("%H:%M"), row.requests if row else 0))
        tokens_per_minute.append(Point(at.strftime("%H:%M"), (row.prompt_tokens + row.completion_tokens) if row else 0))
    gateways = live_queue(QUEUE_SNAPSHOT_MAX_AGE)
    return render_template(
        "admin/overview.html",
        backends=backends,
        unhealthy=unhealthy,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        top=[Point(row["username"], row["tokens"]) for row in top_users(start_of_day(now))],
        today=totals_since(start_of_day(now)),
        pending=pending_approvals(),
        waiting=sum(g["waiting"] for g in gateways),
        running=sum(g["in_flight"] for g in gateways),
        gateways=gateways,
    )


def pending_approvals() -> int:
    return (KeyRequest.select().where(KeyRequest.status == "pending").count()
            + QuotaRequest.select().where(QuotaRequest.status == "pending").count())


# ---- backends ----------------------------------------------------------------------------------

def _telemetry(backend_ids: list[int], since: dt.datetime) -> dict[int, list[TelemetrySample]]:
    samples: dict[int, list[TelemetrySample]] = {backend_id: [] for backend_id in backend_ids}
    query = (TelemetrySample.select().where(TelemetrySample.taken_at >= since)
             .order_by(TelemetrySample.taken_at))
    for sample in query:
        samples.setdefault(sample.backend_id, []).append(sample)
    return samples


def _gpu_readings(sample: TelemetrySample) -> list[dict]:
    """The per-GPU readings the gateway keeps in a sample's details (telemetry_agent's GpuReading)."""
    try:
        details = json.loads(sample.details or "{}")
    except ValueError:
        return []
    gpus = details.get("gpus") if isinstance(details, dict) else None
    return [gpu for gpu in gpus if isinstance(gpu, dict)] if isinstance(gpus, list) else []


def per_gpu(samples: list[TelemetrySample]) -> list[dict]:
    """Each GPU's latest reading and its utilisation over the samples, for one chart per GPU."""
    gpus: dict[int, dict] = {}
    for sample in samples:
        for position, reading in enumerate(_gpu_readings(sample)):
            index = reading.get("index", position)
            gpu = gpus.setdefault(index, {"index": index, "utilization": []})
            gpu["latest"] = reading
            gpu["utilization"].append(Point(sample.taken_at.strftime("%H:%M"), reading.get("utilization_gpu_pct") or 0))
    return [gpus[index] for index in sorted(gpus, key=str)]


@bp.get("/console/backends")
@admin_page
def backends():
    listed = backends_with_models()
    telemetry = _telemetry([b.id for b, _ in listed], utcnow() - dt.timedelta(hours=1))
    reported = [row for gateway in live_queue(QUEUE_SNAPSHOT_MAX_AGE)
                for row in gateway["backends"] if isinstance(row, dict) and "backend_id" in row]
    slots = {row["backend_id"]: row for row in reported}
    breakers: dict[int, Counter] = {}
    for row in reported:
        breakers.setdefault(row["backend_id"], Counter())[row.get("breaker", "unknown")] += 1
    rows = []
    for backend, models in listed:
        samples = telemetry.get(backend.id, [])
        rows.append({
            "backend": backend, "models": models, "slots": slots.get(backend.id),
            "breakers": sorted(breakers.get(backend.id, Counter()).items()),
            "latest": samples[-1] if samples else None,
            "gpus": per_gpu(samples),
            "kv_cache": [Point(s.taken_at.strftime("%H:%M"), (s.kv_cache_usage or 0) * 100) for s in samples],
            "gpu_utilization": [Point(s.taken_at.strftime("%H:%M"), s.gpu_utilization or 0) for s in samples],
        })
    return render_template("admin/backends.html", rows=rows, aliases=all_aliases())


@bp.post("/console/backends")
@admin_page
def register_backend():
    form = request.form
    body = {name: form.get(name, "").strip() for name in ("name", "url", "engine", "max_concurrent",
                                                           "gpu_memory_gb", "telemetry_url")}
    try:
        for name in ("max_concurrent",):
            body[name] = int(body[name]) if body[name] else None
        body["gpu_memory_gb"] = float(body["gpu_memory_gb"]) if body["gpu_memory_gb"] else None
        body["telemetry_url"] = body["telemetry_url"] or None
        fields = validate_registration(body)
    except (ValueError, RegistrationError) as error:
        flash(f"Not registered: {error}", "error")
        return _back("console.backends")
    try:
        with database.atomic():
            backend = Backend.create(**fields)
            record_action(_actor(), "backend.register", f"backend:{backend.id}", after=backend_state(backend))
    except peewee.IntegrityError:
        flash(f"A backend named {fields['name']!r} already exists.", "error")
        return _back("console.backends")
    flash(f"Backend {backend.name} registered; the gateways poll it within seconds.", "info")
    return _back("console.backends")


@bp.post("/console/backends/<int:backend_id>/<action>")
@admin_page
def change_backend(backend_id: int, action: str):
    if action not in (*BACKEND_ACTIONS, "refresh"):
        abort(404)
    backend = Backend.get_or_none(Backend.id == backend_id)
    if backend is None:
        abort(404)
    columns = BACKEND_ACTIONS.get(action) or {"refresh_requested_at": utcnow()}
    before = backend_state(backend)
    with database.atomic():
        # Only these columns: the gateways write health and models to the same row concurrently.
        Backend.update(**columns).where(Backend.id == backend.id).execute()
        after = backend_state(Backend.get_by_id(backend.id))
        record_action(_actor(), f"backend.{action}", f"backend:{backend.id}", before=before, after=after)
    flash(f"Backend {backend.name}: {action} done.", "info")
    return _back("console.backends")


@bp.post("/console/aliases")
@admin_page
def put_alias():
    alias = request.form.get("alias", "").strip()
    try:
        row, created = set_alias(_actor(), alias, request.form.get("model", ""))
    except FieldError as error:
        flash(f"Alias not saved: {error}", "error")
        return _back("console.backends")
    flash(f"Alias {row.alias} {'defined' if created else 're-pointed'}: it names {row.model} for every caller "
          "within seconds.", "info")
    return _back("console.backends")


@bp.post("/console/aliases/<path:alias>/delete")
@admin_page
def delete_alias(alias: str):
    if not remove_alias(_actor(), alias):
        abort(404)
    flash(f"Alias {alias} removed.", "info")
    return _back("console.backends")


# ---- users -------------------------------------------------------------------------------------

@bp.get("/console/users")
@admin_page
def users():
    search = request.args.get("q", "").strip()[:64]
    query = User.select().order_by(User.username)
    if search:
        query = query.where(User.username.contains(search) | User.email.contains(search))
    page = _int_arg("page")
    rows = list(query.paginate(page, PAGE_SIZE + 1))
    return render_template("admin/users.html", users=rows[:PAGE_SIZE], more=len(rows) > PAGE_SIZE, page=page,
                           search=search, roles=ROLES)


@bp.post("/console/users")
@admin_page
def create_local_user():
    username, role = request.form.get("username", "").strip(), request.form.get("role", "")
    password = request.form.get("password", "")
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        flash(f"The password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters.", "error")
        return _back("console.users")
    try:
        user = create_user(username, role, password, actor=_actor())
    except AccountError as error:
        flash(f"Not created: {error}", "error")
        return _back("console.users")
    flash(f"User {user.username} created ({user.role}).", "info")
    return _back("console.users", q=user.username)


def _form_changes(form) -> dict:
    """The user settings of the row's form: an empty number clears its override."""
    body = {}
    for name in USER_SETTINGS:
        if name == "active":
            body[name] = form.get("active") == "on"
            continue
        if name not in form:
            continue
        raw = form.get(name, "").strip()
        if name == "role":
            body[name] = raw
        elif raw == "":
            body[name] = None
        else:
            try:
                body[name] = float(raw) if name == "weight_override" else int(raw)
            except ValueError:
                raise FieldError(f"{name} must be a number, not {raw!r}", param=name) from None
    return user_changes(body)


@bp.post("/console/users/<int:user_id>")
@admin_page
def update_user_settings(user_id: int):
    user = User.get_or_none(User.id == user_id) or abort(404)
    try:
        changes = _form_changes(request.form)
        current = user_state(user)
        changes = {name: value for name, value in changes.items() if current.get(name) != value}
        if changes:
            update_user(user, changes, _actor(), current_app.config["DEFAULT_TOKEN_BUDGET"])
            flash(f"User {user.username}: {', '.join(sorted(changes))} changed.", "info")
        else:
            flash(f"User {user.username}: nothing changed.", "info")
    except (FieldError, AccountError) as error:
        flash(f"User {user.username} not changed: {error}", "error")
    return _back("console.users", q=user.username)


@bp.post("/console/users/<int:user_id>/password")
@admin_page
def reset_password(user_id: int):
    user = User.get_or_none(User.id == user_id) or abort(404)
    password = request.form.get("password", "")
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        flash(f"The password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters.", "error")
        return _back("console.users", q=user.username)
    with database.atomic():
        User.update(password_hash=hash_password(password)).where(User.id == user.id).execute()
        record_action(_actor(), "user.reset_password", f"user:{user.id}",
                      before={"password": "(old)"}, after={"password": "(new, set by an admin)"})
    flash(f"Password of {user.username} reset.", "info")
    return _back("console.users", q=user.username)


# ---- keys --------------------------------------------------------------------------------------

@bp.get("/console/keys")
@admin_page
def keys():
    search = request.args.get("q", "").strip()[:64]
    query = keys_query()
    if search:
        query = query.where(User.username.contains(search) | ApiKey.label.contains(search)
                            | ApiKey.prefix.contains(search))
    page = _int_arg("page")
    rows = list(query.paginate(page, PAGE_SIZE + 1))
    return render_template("admin/keys.html", keys=rows[:PAGE_SIZE], more=len(rows) > PAGE_SIZE, page=page,
                           search=search, now=utcnow())


@bp.post("/console/keys/<int:key_id>/revoke")
@admin_page
def revoke(key_id: int):
    key = keys_query().where(ApiKey.id == key_id).first() or abort(404)
    try:
        revoke_key(key, actor=_actor())
        flash(f"Key mr_{key.prefix}_… of {key.user.username} revoked; it stops working within seconds.", "info")
    except AccountConflict:
        flash(f"Key mr_{key.prefix}_… was already revoked.", "info")
    return _back("console.keys")


# ---- approvals ---------------------------------------------------------------------------------

@bp.get("/console/approvals")
@admin_page
def approvals():
    key_requests = list(KeyRequest.select().order_by(KeyRequest.status != "pending", KeyRequest.created_at.desc())
                        .limit(100))
    quota_requests = list(quota_requests_query().where(QuotaRequest.status == "pending").limit(100))
    decided = list(quota_requests_query().where(QuotaRequest.status != "pending").limit(20))
    return render_template("admin/approvals.html", key_requests=key_requests, quota_requests=quota_requests,
                           decided=decided, roles=[role for role in ROLES])


@bp.post("/console/key-requests/<int:request_id>/<decision>")
@admin_page
def decide_key_request(request_id: int, decision: str):
    if decision not in ("approve", "deny"):
        abort(404)
    row = KeyRequest.get_or_none(KeyRequest.id == request_id) or abort(404)
    note = request.form.get("note", "").strip()[:2000]
    if row.status != "pending":
        flash(f"The request of {row.username} was already {row.status}.", "error")
        return _back("console.approvals")
    before = {"status": row.status, "role": row.role}
    try:
        with database.atomic():
            user = None
            if decision == "approve":
                role = request.form.get("role") or row.role
                user = create_user(row.username, role, None, actor=_actor())
                User.update(password_hash=row.password_hash, email=row.email).where(User.id == user.id).execute()
            changed = (KeyRequest.update(status="approved" if user else "denied", user=user, decided_by=_actor().id,
                                         decided_at=utcnow(), decision_note=note)
                       .where((KeyRequest.id == row.id) & (KeyRequest.status == "pending")).execute())
            if not changed:
                raise AccountConflict(f"the request of {row.username} was decided by someone else meanwhile")
            record_action(_actor(), f"key_request.{decision}", f"key_request:{row.id}", before=before,
                          after={"status": "approved" if user else "denied", "note": note,
                                 "user": user.id if user else None, "role": user.role if user else None})
    except AccountError as error:
        flash(f"Not decided: {error}", "error")
        return _back("console.approvals")
    flash(f"Request of {row.username} {'approved' if user else 'denied'}.", "info")
    return _back("console.approvals")


@bp.post("/console/quota-requests/<int:request_id>/<decision>")
@admin_page
def decide_quota(request_id: int, decision: str):
    if decision not in ("approve", "deny"):
        abort(404)
    row = quota_request_by_id(request_id) or abort(404)
    note = request.form.get("note", "").strip()[:2000]
    if decision == "deny" and not note:
        flash("Say why it is denied: the user sees the note.", "error")
        return _back("console.approvals")
    amount = None
    if decision == "approve" and request.form.get("amount", "").strip():
        try:
            amount = values.integer("amount", int(request.form["amount"]), 1, 10**15)
        except (ValueError, FieldError):
            flash(f"The amount must be a whole number of tokens, not {request.form['amount']!r}.", "error")
            return _back("console.approvals")
    try:
        decided = decide_quota_request(row, decision == "approve", _actor(), note,
                                       current_app.config["DEFAULT_TOKEN_BUDGET"], amount=amount)
    except QuotaConflict as error:
        flash(str(error), "error")
        return _back("console.approvals")
    flash(f"Quota request of {decided.user.username} {decided.status} ({decided.amount:,} tokens).", "info")
    return _back("console.approvals")


# ---- live queue --------------------------------------------------------------------------------

@bp.get("/console/queue")
@admin_page
def queue():
    return render_template("admin/queue.html", gateways=live_queue(QUEUE_SNAPSHOT_MAX_AGE))


# ---- audit -------------------------------------------------------------------------------------

def _audit_search() -> tuple[AuditSearch, dict]:
    """The search the form asks for; the console looks at the last 24 hours unless told otherwise."""
    args = {name: value for name, value in request.args.items() if value and name != "format"}
    if "since" not in args and "until" not in args:
        args["since"] = (utcnow() - dt.timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S")
    return parse_search(args), args


def _capped_count(found: AuditSearch) -> int:
    inner = Request.select(Request.id).where(*found.conditions) if found.conditions else Request.select(Request.id)
    return peewee.Select([inner.limit(COUNT_CAP + 1).alias("hits")], [peewee.fn.COUNT(peewee.SQL("*"))]) \
        .bind(database.obj).scalar()


@bp.get("/console/audit")
@admin_page
def audit():
    try:
        found, args = _audit_search()
    except FieldError as error:
        flash(str(error), "error")
        return render_template("admin/audit.html", results=[], total=0, args=dict(request.args), more=False,
                               count_cap=COUNT_CAP), 400
    query = _requests_query().where(*found.conditions) if found.conditions else _requests_query()
    rows = list(query.paginate(found.page, found.per_page))
    return render_template("admin/audit.html", results=[request_json(row, []) for row in rows],
                           total=_capped_count(found), args=args, page=found.page, per_page=found.per_page,
                           count_cap=COUNT_CAP)


@bp.get("/console/audit/<request_id>")
@admin_page
def audit_detail(request_id: str):
    detail = request_detail(request_id) or abort(404)
    return render_template("admin/audit_detail.html", detail=detail)


EXPORT_FIELDS = ("request_id", "created_at", "user", "api_key", "endpoint", "model", "backend", "status", "stream",
                 "queue_ms", "ttft_ms", "total_ms", "prompt_tokens", "completion_tokens", "client_address", "error")


def _export_rows(found: AuditSearch) -> Iterator[dict]:
    """Matching rows newest first, read in batches by id so no result set is held whole."""
    last_id = None
    while True:
        query = _requests_query().order_by(Request.id.desc()).limit(EXPORT_BATCH)
        conditions = [*found.conditions, *([Request.id < last_id] if last_id is not None else [])]
        rows = list(query.where(*conditions) if conditions else query)
        for row in rows:
            yield request_json(row, [])
        if len(rows) < EXPORT_BATCH:
            return
        last_id = rows[-1].id


@bp.get("/console/audit/export.<fmt>")
@admin_page
def audit_export(fmt: str):
    """CSV or JSON of every matching row, streamed chunk by chunk: never one Content-Length body, which
    the gateway would refuse past its size limit."""
    if fmt not in ("csv", "json"):
        abort(404)
    found, _ = _audit_search()
    record_action(_actor(), "audit.export", f"audit:{fmt}", after=dict(request.args))

    def as_csv():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(_export_rows(found), 1):
            writer.writerow(row)
            if i % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    def as_json():
        yield "["
        for i, row in enumerate(_export_rows(found)):
            yield ("," if i else "") + "\n" + json.dumps({name: row[name] for name in EXPORT_FIELDS})
        yield "\n]\n"

    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    return Response(stream_with_context(as_csv() if fmt == "csv" else as_json()),
                    mimetype="text/csv" if fmt == "csv" else "application/json",
                    headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"',
                             "Cache-Control": "no-store"})


# ---- admin action log --------------------------------------------------------------------------

@bp.get("/console/actions")
@admin_page
def actions():
    page = _int_arg("page")
    action = request.args.get("action", "").strip()[:64]
    query = (AdminAction.select(AdminAction, User).join(User, peewee.JOIN.LEFT_OUTER, on=(AdminAction.actor == User.id))
             .order_by(AdminAction.at.desc(), AdminAction.id.desc()))
    if action:
        query = query.where(AdminAction.action.startswith(action))
    rows = list(query.paginate(page, PAGE_SIZE + 1))
    return render_template("admin/actions.html", actions=rows[:PAGE_SIZE], more=len(rows) > PAGE_SIZE, page=page,
                           action=action)
