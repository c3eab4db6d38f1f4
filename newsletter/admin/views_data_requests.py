"""Data-subject requests: look up, export or erase one subscriber by address.

Look-ups go by POST, so that addresses never appear in URLs, access logs or history;
there is deliberately no page that lists or downloads subscribers.
"""

from __future__ import annotations

import json

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext

from newsletter import data_export, subscriptions


def data_requests():
    return render_template("admin/subscribers.html", email="", searched=False, subscriber=None)


def _lookup():
    email = request.form.get("email", "")[:254]
    return email, subscriptions.find_by_address(email)


def lookup():
    email, subscriber = _lookup()
    data = data_export.export_data(subscriber) if subscriber is not None else None
    current_app.logger.info(
        "data-subject look-up by admin %s: %s", g.admin.id, "found" if subscriber else "none"
    )
    return render_template(
        "admin/subscribers.html", email=email, searched=True, subscriber=subscriber, data=data
    )


def export():
    _email, subscriber = _lookup()
    if subscriber is None:
        flash(gettext("No subscriber has this address (any more)."), "alert")
        return redirect(url_for("admin.data_requests"))
    data = data_export.export_data(subscriber)
    data_export.record_export()
    current_app.logger.info("subscriber %s exported by admin %s", subscriber.id, g.admin.id)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber.id}.json"'},
    )


def delete():
    email, subscriber = _lookup()
    if not request.form.get("confirm"):
        data = data_export.export_data(subscriber) if subscriber is not None else None
        return render_template(
            "admin/subscribers.html",
            email=email,
            searched=True,
            subscriber=subscriber,
            data=data,
            confirm_error=gettext("Tick the box to confirm the deletion."),
        ), 422
    subscriber_id = subscriber.id if subscriber is not None else None
    if subscriptions.erase_address(email, "staff"):
        current_app.logger.info("subscriber %s erased by admin %s", subscriber_id, g.admin.id)
        flash(gettext("The subscriber and all their data are deleted."), "notice")
    else:
        flash(gettext("No subscriber has this address (any more); nothing was deleted."), "alert")
    return redirect(url_for("admin.data_requests"))
