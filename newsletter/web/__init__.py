"""The readers' front end: sign-up, confirmation, manage and unsubscribe pages, the dev outbox.

``security`` (headers, CSRF and embedding, error pages) is installed for the whole app.
"""
