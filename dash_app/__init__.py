"""The Alpha dashboard: a Dash app over the metric lake (``storage.reader``).

``create_app(lake)`` builds it; ``alpha dashboard --lake <path-or-URL>`` serves it.
"""

from dash_app.app import create_app

__all__ = ["create_app"]
