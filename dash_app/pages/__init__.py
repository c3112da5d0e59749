"""Pages of the dashboard: ``runs`` (the list), ``run`` (one run), ``compare``.

Each module has a ``layout(...)`` function the router calls and a
``register(app, lake)`` that adds its callbacks to the app.
"""
