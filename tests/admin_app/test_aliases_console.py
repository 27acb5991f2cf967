"""Model aliases on the console's backends page: set, re-point and remove, each logged; bad names refused."""

from __future__ import annotations

from store.models import AdminAction, ModelAlias


def test_an_admin_sets_re_points_and_removes_an_alias_from_the_backends_page(client, make_user, log_in, csrf_token):
    admin = make_user("alias-admin", "admin")
    assert log_in(admin.username).status_code == 302
    token = csrf_token(client.get("/admin/console/backends").data)
    assert client.post("/admin/console/aliases", data={
        "csrf_token": token, "alias": "coder", "model": "Qwen/Qwen2.5-Coder-32B-Instruct"}).status_code == 303
    assert ModelAlias.get(ModelAlias.alias == "coder").model == "Qwen/Qwen2.5-Coder-32B-Instruct"
    client.post("/admin/console/aliases", data={"csrf_token": token, "alias": "coder", "model": "llama3.2"})
    assert ModelAlias.get(ModelAlias.alias == "coder").model == "llama3.2"
    page = client.get("/admin/console/backends").get_data(as_text=True)
    assert "<td>coder</td><td>llama3.2</td>" in page
    client.post("/admin/console/aliases", data={"csrf_token": token, "alias": "bad name", "model": "llama3.2"})
    assert ModelAlias.get_or_none(ModelAlias.alias == "bad name") is None
    assert "Alias not saved" in client.get("/admin/console/backends").get_data(as_text=True)
    assert client.post("/admin/console/aliases/coder/delete", data={"csrf_token": token}).status_code == 303
    assert ModelAlias.get_or_none(ModelAlias.alias == "coder") is None
    actions = [a.action for a in AdminAction.select().where(AdminAction.actor == admin.id).order_by(AdminAction.id)]
    assert actions == ["alias.set", "alias.set", "alias.delete"]


def test_a_student_cannot_set_an_alias(client, make_user, log_in, csrf_token):
    student = make_user("alias-student", "student")
    assert log_in(student.username).status_code == 302
    token = csrf_token(client.get("/dashboard").data)
    response = client.post("/admin/console/aliases", data={"csrf_token": token, "alias": "x", "model": "llama3.2"})
    assert response.status_code == 403 and ModelAlias.get_or_none(ModelAlias.alias == "x") is None
