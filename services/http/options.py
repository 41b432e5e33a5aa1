"""`Allow` on OPTIONS names every method of the path.

Litestar (2.x) builds a path's route anew each time a handler for another method of the same
path is registered, keeping the OPTIONS handler it made for the first one; that handler
answers with the methods of the route it was made for, so `OPTIONS /v1/accounts/{id}` said
`GET, OPTIONS` and left out PATCH. `answer_options_for_every_method` points each such
handler at the route that now serves the path, once, when the application is built.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.routes import HTTPRoute


def answer_options_for_every_method(app: Litestar) -> None:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            function = handler.fn
            if getattr(function, "__name__", "") != "options_handler":
                continue
            for cell in function.__closure__ or ():
                if isinstance(cell.cell_contents, HTTPRoute):
                    cell.cell_contents = route
