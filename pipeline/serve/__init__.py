"""Serving a built index over HTTP on Ray Serve.

- `requests`: what a POST /search body may hold, checked (pure: no Ray).
- `app`: the SearchService deployment (search, images, health, the page) and the `serve deploy` builder.
- `commands`: `pipeline search` and `pipeline serve`: their checks and their console.
- `page.html`: the search page.
"""
