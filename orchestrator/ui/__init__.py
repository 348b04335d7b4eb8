"""The UI layer: everything a person reads about stored runs.

* `data`    what a run looks like to the UI, read from the results database and from
            what the checkers stored (never a check run again)
* `text`    the terminal's view: `cutover list`, `show`, `check`
* `report`  the HTML report (`templates/report.html`), `plots` its SVG plots, `svg`
            the SVG helpers every plot shares
* `render`  the jinja2 environment: templates, CSS (`static/`), the one escape
* `web`     `cutover serve`: the HTTP server, its routes and pages

Nothing below the UI imports it; the CLI (`orchestrator.cli`) calls it.
"""

DEFAULT_MAX_OPS = 3000  # ops drawn per page of a report's timeline and latency plot
