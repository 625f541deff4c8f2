"""職員画面: the staff console at ``/staff/``, server-rendered (aiohttp-jinja2), no script.

Pages: :mod:`.pages`; cookie, CSRF, headers and the page wrapper: :mod:`.security`;
what pages compute (item fields, statistics charts): :mod:`.views`.  Templates and
the style sheet live beside the code and install as package data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from chukan.gateway.console.pages import add_routes
from chukan.gateway.console.security import page

TEMPLATES: Final = Path(__file__).parent / "templates"


async def redirect_to_console(request: web.Request) -> web.StreamResponse:
    """``GET /staff`` (no trailing slash, as people type it) → 308 to the menu at
    ``/staff/``, the query kept; without it the staff face would answer a JSON 404."""
    query = request.rel_url.raw_query_string
    raise web.HTTPPermanentRedirect("/staff/" + (f"?{query}" if query else ""))


def add_staff_routes(staff: web.Application) -> None:
    """The console on the staff face, beside the JSON API (``/staff/v1/…``)."""
    aiohttp_jinja2.setup(
        staff,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    add_routes(staff, page)
