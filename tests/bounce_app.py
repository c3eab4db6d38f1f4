"""``flask --app tests.bounce_app``: the app with the bounce and DKIM commands registered.

Until the factory registers them (``bounces_cli.init_app(app)``), tests that run the
commands as real processes load the app from here.
"""

from newsletter import bounces_cli
from newsletter import create_app as create_newsletter_app


def create_app():
    app = create_newsletter_app()
    bounces_cli.init_app(app)
    return app
