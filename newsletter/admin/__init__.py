"""Admin pages for marketing staff: editions, scheduling, progress, the sign-up form's
words and look, data-subject requests.

Thin views over the campaign, sending and subscription services, one module per concern;
the route table below lists every page. Every page needs a staff login (checked once,
in ``require_login``), every form a CSRF token (enforced for all POSTs by ``security``).
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, redirect, request, url_for

from newsletter import auth
from newsletter.admin import (
    views_auth,
    views_dashboard,
    views_data_requests,
    views_editor,
    views_form,
    views_progress,
)
from newsletter.admin.labels import status_label
from newsletter.admin.times import localtime

bp = Blueprint("admin", __name__, url_prefix="/admin")

# The endpoint is the view's name: admin.dashboard, admin.campaign, ...
ROUTES = (
    ("/login", "GET", views_auth.login_form),
    ("/login", "POST", views_auth.login),
    ("/logout", "POST", views_auth.logout),
    ("/", "GET", views_dashboard.dashboard),
    ("/campaigns", "GET", views_editor.campaign_list),
    ("/campaigns/new", "GET", views_editor.new_campaign),
    ("/campaigns/new", "POST", views_editor.create_campaign),
    ("/campaigns/<int:campaign_id>", "GET", views_editor.campaign),
    ("/campaigns/<int:campaign_id>", "POST", views_editor.save_campaign),
    ("/campaigns/<int:campaign_id>/preview", "GET", views_editor.preview),
    ("/campaigns/<int:campaign_id>/test", "POST", views_editor.send_test),
    ("/campaigns/<int:campaign_id>/remove-version", "POST", views_editor.remove_version),
    ("/campaigns/<int:campaign_id>/schedule", "POST", views_editor.schedule),
    ("/campaigns/<int:campaign_id>/cancel", "POST", views_editor.cancel),
    ("/campaigns/<int:campaign_id>/resume", "POST", views_editor.resume),
    ("/campaigns/<int:campaign_id>/progress.json", "GET", views_progress.progress),
    ("/form", "GET", views_form.signup_form),
    ("/form/look", "POST", views_form.save_look),
    ("/form/<language>", "POST", views_form.save_texts),
    ("/subscribers", "GET", views_data_requests.data_requests),
    ("/subscribers/lookup", "POST", views_data_requests.lookup),
    ("/subscribers/export", "POST", views_data_requests.export),
    ("/subscribers/delete", "POST", views_data_requests.delete),
)
for rule, method, view in ROUTES:
    bp.add_url_rule(rule, view_func=view, methods=[method])

# The only pages an anonymous visitor may see.
LOGIN_ENDPOINTS = {"admin.login", "admin.login_form"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.filters["localtime"] = localtime
    app.add_template_global(status_label)


@bp.before_request
def require_login():
    """Every admin page needs a staff login; only the login page itself does not."""
    g.admin = auth.current_admin()
    if g.admin is None and request.endpoint not in LOGIN_ENDPOINTS:
        return anonymous_response()
    return None


def anonymous_response():
    """Send an anonymous visitor to the login page (a JSON endpoint answers 401)."""
    if request.path.endswith(".json"):
        return {"error": "login required"}, 401
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("admin.login_form", next=auth.safe_next(target)))


@bp.after_request
def no_store(response: Response) -> Response:
    # Admin pages show subscriber data and campaign state: never keep them in caches.
    response.headers["Cache-Control"] = "no-store"
    return response
