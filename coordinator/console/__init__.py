"""The coordinator's web console: server-rendered pages on the API's own FastAPI app.

Researchers sign in with their API token (the same token, roles and expiry as the HTTP API; see
:mod:`coordinator.access`) and then browse sites, write and dry-run specs, follow jobs live and read
results as tables and interactive plots; operators (role ``admin``) enrol sites, add researchers,
revoke tokens and read the coordinator's audit.  Pages are Jinja2 templates (``templates/``) with a
little JavaScript of ours (``static/console.js``) that calls the same ``/v1`` API as the CLI.  Plots
use the plotly.min.js that the installed ``plotly`` package ships, served from here, so a console on
a network without internet access works.

    /console/                     -> jobs
    /console/sign-in, /sign-out
    /console/sites                sites: online, last seen, version, what their policy allows
    /console/new                  spec editor: examples, validation as you type, dry run, submit
    /console/jobs, /jobs/{id}     jobs, live status, per-site progress and refusals, provenance, results
    /console/operator/...         researchers, site enrolment, audit (role admin)
"""

from coordinator.console.routes import router

__all__ = ["router"]
